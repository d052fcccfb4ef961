"""What the run history saves autotune: batches until it settles, searching (a first run) against starting where
the last run of the same loader on this machine settled (a second run), and where each settles.

For each landscape (``loadertop.core.train.calibrated``), ``--repeats`` pairs of autotuned runs from 0 workers,
each pair with a run history of its own: the first searches, the second starts at the first's settled count and
verifies it there. Every pair is printed (batches to the first settle, the count, its samples/s), then the
second's batches over the first's, per pair and their median.

Usage: python benchmarks/history.py [--repeats 5] [--seconds 25] [--landscapes storage_bound,cpu_bound]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadertop.core.measure.history import History
from loadertop.core.measure.system import usable_cores
from loadertop.core.probe.remembering import RunMemory, this_machine
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.session import Session
from loadertop.core.train import calibrated
from loadertop.core.train.engine import Trainer

BATCH = 8


def settle_of(landscape: str, home: Path, seconds: float) -> tuple[int, int, float, str] | None:
    """One autotuned run: (batches when it first settled, the count, samples/s there, the first change's reason)."""
    trainer = Trainer(
        getattr(calibrated, landscape)(), LoaderConfig(num_workers=0, batch_size=BATCH), epochs=1000, device="cpu"
    )
    memory = RunMemory(
        f"loadertop.core.train.calibrated:{landscape}",
        "workload",
        this_machine(None),
        history=History(home / "history.sqlite3"),
    )
    run = Session(trainer, read_gpus=False, autotune=True, memory=memory)
    run.start()
    found = None
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and found is None:
            time.sleep(0.1)
            for step, change in list(run.autotune_log):
                if change.kind == "settle":
                    first = run.autotune_log[0][1].reason
                    found = (step, change.to_workers, run.tuner.tuner.settled_samples_per_s or 0.0, first)
                    break
    finally:
        run.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--landscapes", default="storage_bound,cpu_bound")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {usable_cores()} usable cores, Python {platform.python_version()}; "
        f"batch {BATCH}, {args.repeats} pairs of runs per landscape"
    )
    for landscape in args.landscapes.split(","):
        ratios = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                home = Path(folder)
                first = settle_of(landscape, home, args.seconds)
                second = settle_of(landscape, home, args.seconds) if first is not None else None
            if first is None or second is None:
                print(f"{landscape} pair {repeat + 1}: no settle within {args.seconds:g} s ({first}, {second})")
                continue
            ratio = second[0] / first[0]
            ratios.append(ratio)
            print(
                f"{landscape} pair {repeat + 1}: searched {first[0]} batches to {first[1]} workers "
                f"({first[2]:,.0f} samples/s); remembered {second[0]} batches to {second[1]} workers "
                f"({second[2]:,.0f} samples/s): {ratio:.2f} of the batches"
                + ("" if second[3].startswith("starting at") else f" [did not start from memory: {second[3][:60]}]")
            )
        if ratios:
            print(
                f"{landscape}: remembered / searched batches, median {statistics.median(ratios):.2f} of {len(ratios)}"
            )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LOADERTOP_HOME", tempfile.mkdtemp())  # nothing of this reaches the user's history
    sys.exit(main())
