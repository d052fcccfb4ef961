"""How fast autotune finds a good worker count, and what it costs against knowing the best one in advance.

On calibrated workloads (``loadertop.core.calibrated``: a known storage wait and CPU per sample,
a known step), for each landscape:

1. the truth: a sweep of every count the tuner may try (0..4x cores), ``--truth-batches`` steady
   batches each: the best count and its samples/s;
2. autotune from 0 workers for ``--seconds``: the batches until it settled on a count the truth
   puts within 5% of the best, divided by the batches of a full sweep over 0..2x cores at the
   sweep's default 100 steady batches a count (goal <= 1/3);
3. the samples it trained in those seconds, divided by the samples of a run fixed at the best
   count for as long (goal >= 0.9).

The stall of a switch with and without overlapped restarts is ``benchmarks/switch_stall.py``'s.

Usage: python benchmarks/autotune.py [--seconds 30] [--truth-batches 60] [--landscapes storage_bound,cpu_bound]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadertop.core import calibrated
from loadertop.core.engine import Trainer
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.session import Session
from loadertop.core.system import usable_cores

BATCH = 8
WITHIN = 0.05


def session(landscape: str, workers: int, *, autotune: bool = False) -> Session:
    trainer = Trainer(getattr(calibrated, landscape)(), LoaderConfig(num_workers=workers, batch_size=BATCH),
                      epochs=1000, device="cpu")
    return Session(trainer, read_gpus=False, autotune=autotune)


def truth(landscape: str, counts: range, batches: int) -> dict[int, float]:
    """samples/s of every count, by a sweep (one run, each count in turn)."""
    run = session(landscape, counts[0])
    run.start()
    run.start_sweep(list(counts), batches)
    while run.view().sweep.state == "running":
        time.sleep(0.2)
    speeds = {s.num_workers: s.samples_per_s for s in run.trainer.store.summaries()}
    run.close()
    return speeds


def samples_in(run: Session, seconds: float) -> int:
    run.start()
    time.sleep(seconds)
    samples = sum(r.samples for r in run.trainer.store.snapshot().records)
    run.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--truth-batches", type=int, default=60)
    parser.add_argument("--landscapes", default="storage_bound,cpu_bound,compute_bound")
    args = parser.parse_args()
    cores = usable_cores()
    print(f"machine: {platform.machine()}, {cores} usable cores, {psutil.cpu_count()} logical, "
          f"Python {platform.python_version()}")
    sweep_batches = len(set(range(2 * cores + 1))) * (100 + 2)  # a full sweep of 0..2x cores: 100 steady + warm-up
    print(f"a full sweep over 0..{2 * cores} workers at 100 steady batches a count: about {sweep_batches} batches")
    for landscape in args.landscapes.split(","):
        counts = range(max(4, 4 * cores) + 1)
        speeds = truth(landscape, counts, args.truth_batches)
        best = max(speeds, key=lambda n: speeds[n])
        good = {n for n, s in speeds.items() if s >= (1 - WITHIN) * speeds[best]}
        print(f"\n{landscape}: truth ({args.truth_batches} batches a count): "
              + ", ".join(f"{n}: {speeds[n]:,.0f}" for n in sorted(speeds)) + f" samples/s; best {best}, "
              f"within 5%: {sorted(good)}")
        tuned = session(landscape, 0, autotune=True)
        tuned_samples = samples_in(tuned, args.seconds)
        settled_good = None
        for step, change in tuned.autotune_log:
            print(f"  batch {step:5}: {change.line()}")
            if change.kind == "settle" and settled_good is None:
                settled_good = step if change.to_workers in good else None
        changes = [change for _, change in tuned.autotune_log]
        fixed = session(landscape, best)
        fixed_samples = samples_in(fixed, args.seconds)
        final = changes[-1].to_workers if changes else 0
        ratio_batches = f"{settled_good / sweep_batches:.2f}" if settled_good else "never settled within 5%"
        print(f"  settled within 5% of the best after {settled_good} batches: {ratio_batches} of a full sweep "
              f"(goal <= 0.33); holding {final} workers at the end")
        print(f"  samples in {args.seconds:.0f} s: autotune {tuned_samples:,} / fixed at {best} workers "
              f"{fixed_samples:,} = {tuned_samples / fixed_samples:.3f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
