"""Timing accuracy: measured steady-state load time per batch against the expected one.

A calibrated dataset sleeps a known time per sample. The cost of one batch is
measured here first, outside loadertop (``__getitem__`` for each sample, timer
slack included, plus collation). With 0 workers the step waits that long; with
k workers each makes a batch in that time and k of them overlap, so the step
waits ``batch_cost / k`` minus the step's own (measured) compute time.

Usage: python benchmarks/accuracy.py [--workers 0,1,2,4] [--sleep-ms 2] [--batch-size 16] [--batches 120]
Target: every ratio within 5% of 1.
"""

from __future__ import annotations

import argparse
import platform
import sys

import psutil
import torch

from loadertop import LoaderConfig, Trainer
from loadertop.core.train.calibrated import batch_cost_s, make_sleep_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2,4")
    parser.add_argument("--sleep-ms", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=120, help="steady-state batches per worker count")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    torch.set_num_threads(1)
    batch_ms = batch_cost_s(args.sleep_ms, args.batch_size) * 1000.0
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores, torch {torch.__version__}")
    print(f"one batch of {args.batch_size} samples sleeping {args.sleep_ms:g} ms each measures {batch_ms:.3f} ms")
    print(f"{'workers':>7}  {'batches':>7}  {'expected ms':>11}  {'measured ms':>11}  {'ratio':>6}  within 5%")
    worst = 0.0
    for k in counts:
        size = (args.batches + max(1, k)) * args.batch_size
        trainer = Trainer(
            make_sleep_workload(size=size, sleep_ms=args.sleep_ms),
            LoaderConfig(num_workers=k, batch_size=args.batch_size, persistent_workers=k > 0),
            epochs=1,
            device="cpu",
        )
        trainer.start()
        trainer.join()
        [summary] = trainer.store.summaries()
        expected = batch_ms if k == 0 else batch_ms / k - summary.compute_ms_mean
        ratio = summary.load_ms_mean / expected
        worst = max(worst, abs(ratio - 1.0))
        ok = "yes" if abs(ratio - 1.0) <= 0.05 else "NO"
        print(f"{k:>7}  {summary.batches:>7}  {expected:>11.2f}  {summary.load_ms_mean:>11.2f}  {ratio:>6.3f}  {ok}")
    print(f"worst deviation: {worst * 100:.1f}%")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
