"""Record a real autotuned session for the screenshots and the snapshot tests.

Trains the calibrated storage-bound workload (2 ms of storage wait and 0.1 ms of CPU a
sample, a 4 ms step) from 0 workers with autotune on, as ``loadertop run --autotune`` would,
and saves the view once the tuner has settled and held its count ``--hold`` seconds: its changes
with their reasons and its model's predicted curve are in the view, so the SVGs drawn from
the file show them with every figure fixed.

    python screenshots/record_autotune_session.py screenshots/autotune_session.json
"""

from __future__ import annotations

import argparse
import sys
import time

from loadertop.core.probe.autotune_host import default_budget
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.replay import save_view
from loadertop.core.sessions.session import Session
from loadertop.core.train.calibrated import storage_bound
from loadertop.core.train.engine import Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the recording (JSON)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to run on once settled (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    args = parser.parse_args()

    trainer = Trainer(
        storage_bound(), LoaderConfig(num_workers=0, batch_size=args.batch_size), epochs=100, device="cpu"
    )
    session = Session(trainer, autotune=True, budget=default_budget())
    session.start()
    deadline = time.monotonic() + args.timeout
    settled_at: float | None = None
    try:
        while settled_at is None or time.monotonic() < settled_at + args.hold:
            if trainer.state.is_done:
                print(f"the run ended early: {trainer.state.value} {trainer.error}", file=sys.stderr)
                return 1
            status = session.tuner.status()
            settled = status.state == "settled" and trainer.config.num_workers == status.workers
            settled_at = (settled_at or time.monotonic()) if settled else None
            if time.monotonic() > deadline:
                print(f"not settled within {args.timeout:.0f} s: {status}", file=sys.stderr)
                return 1
            time.sleep(0.05)
        view = session.view()
    finally:
        session.close()
    save_view(view, args.out)
    assert view.autotune is not None
    print(
        f"saved step {view.status.step}, {len(view.autotune.changes)} changes, state {view.autotune.state}, "
        f"to {args.out}"
    )
    for change in view.autotune.changes:
        print(f"  {change.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
