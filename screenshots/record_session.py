"""Record a real session for the screenshots and the snapshot tests.

Trains the built-in workload, switching 0 -> 1 -> 4 -> 2 workers, and saves the
view (batches, restarts, per-configuration summaries and a system sample) at the
chosen step while 2 workers run. The SVGs are then drawn from this file, so they
are stable: ``make screenshots``.

    python screenshots/record_session.py screenshots/session.json
"""

from __future__ import annotations

import argparse
import sys
import time

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.replay import save_view
from loadertop.core.sessions.session import Session
from loadertop.core.train.builtin import make_workload
from loadertop.core.train.engine import Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the recording (JSON)")
    parser.add_argument("--switch", default="60:1,130:4,200:2", help="STEP:WORKERS,... (default 60:1,130:4,200:2)")
    parser.add_argument("--at-step", type=int, default=300, help="step at which the view is saved (default 300)")
    args = parser.parse_args()
    switches = {int(s): int(w) for s, w in (item.split(":") for item in args.switch.split(","))}

    trainer = Trainer(make_workload(seed=0), LoaderConfig(num_workers=0), epochs=100, device="cpu")

    def on_record(record):
        workers = switches.pop(record.step, None)
        if workers is not None:
            trainer.restart(trainer.config.with_workers(workers))

    session = Session(trainer, on_record=on_record)
    session.start()
    try:
        while trainer.status().step < args.at_step:
            if trainer.state.is_done:
                print(f"the run ended early: {trainer.state.value} {trainer.error}", file=sys.stderr)
                return 1
            time.sleep(0.01)
        view = session.view()
    finally:
        session.close()
    save_view(view, args.out)
    print(f"saved step {view.status.step}, {len(view.store.summaries)} configurations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
