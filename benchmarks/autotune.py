"""How reliably and how fast autotune finds the best worker count, and what it costs against knowing it in advance.

On calibrated workloads (``loadertop.core.train.calibrated``: a known storage wait and CPU per sample,
a known step), for each landscape:

1. the truth: ``--truth-sweeps`` sweeps of every count the tuner may try (0..4x cores),
   ``--truth-batches`` steady batches each, half before the repeats and half after (a machine whose
   load drifts shows it, and the mean spans the repeats), averaged (each sweep printed: the truth is
   noisy too): the best count and its samples/s, and the counts within 5% of it;
2. ``--repeats`` autotuned runs from 0 workers for ``--seconds`` each; for every repeat: the count it
   settled on first and the truth's samples/s there as a share of the best (goal: within 5% in at
   least 9 of 10), the batches until it settled on a count within 5% of the best divided by the batches
   of a full sweep over 0..2x cores at the sweep's default 100 steady batches a count (goal <= 1/3),
   and the samples it trained divided by the mean of ``--fixed-repeats`` runs fixed at the best count
   of the sweeps before the repeats, for as long (goal >= 0.9). Every repeat is printed, then the
   counts of repeats that met each goal.

The stall of a switch with and without overlapped restarts is ``benchmarks/switch_stall.py``'s.

Usage: python benchmarks/autotune.py [--seconds 20] [--repeats 10] [--truth-batches 300] [--truth-sweeps 2]
       [--landscapes storage_bound,cpu_bound,compute_bound,mixed]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadertop.core.measure.system import usable_cores
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.session import Session
from loadertop.core.train import calibrated
from loadertop.core.train.engine import Trainer

BATCH = 8
WITHIN = 0.05


def session(landscape: str, workers: int, *, autotune: bool = False) -> Session:
    trainer = Trainer(
        getattr(calibrated, landscape)(), LoaderConfig(num_workers=workers, batch_size=BATCH), epochs=1000, device="cpu"
    )
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
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fixed-repeats", type=int, default=3)
    parser.add_argument("--truth-batches", type=int, default=300)
    parser.add_argument("--truth-sweeps", type=int, default=2)
    parser.add_argument("--landscapes", default="storage_bound,cpu_bound,compute_bound,mixed")
    args = parser.parse_args()
    cores = usable_cores()
    print(
        f"machine: {platform.machine()}, {cores} usable cores, {psutil.cpu_count()} logical, "
        f"Python {platform.python_version()}"
    )
    sweep_batches = len(set(range(2 * cores + 1))) * (100 + 2)  # a full sweep of 0..2x cores: 100 steady + warm-up
    print(f"a full sweep over 0..{2 * cores} workers at 100 steady batches a count: about {sweep_batches} batches")
    totals = []
    for landscape in args.landscapes.split(","):
        counts = range(max(4, 4 * cores) + 1)
        before = args.truth_sweeps - args.truth_sweeps // 2  # the rest after the repeats: drift shows, and averages out
        sweeps = [truth(landscape, counts, args.truth_batches) for _ in range(before)]
        first_best = max(counts, key=lambda n: statistics.fmean(s[n] for s in sweeps))
        fixed = [samples_in(session(landscape, first_best), args.seconds) for _ in range(args.fixed_repeats)]
        fixed_mean = statistics.fmean(fixed)
        runs = []
        for _ in range(args.repeats):
            tuned = session(landscape, 0, autotune=True)
            runs.append((samples_in(tuned, args.seconds), list(tuned.autotune_log)))
        sweeps += [truth(landscape, counts, args.truth_batches) for _ in range(args.truth_sweeps - before)]
        speeds = {n: statistics.fmean(s[n] for s in sweeps) for n in counts}
        for i, each in enumerate(sweeps, 1):
            when = "before" if i <= before else "after"
            print(
                f"\n{landscape}: sweep {i} ({when} the repeats): "
                + ", ".join(f"{n}: {each[n]:,.0f}" for n in sorted(each)),
                end="",
            )
        best = max(speeds, key=lambda n: speeds[n])
        good = {n for n, s in speeds.items() if s >= (1 - WITHIN) * speeds[best]}
        print(
            f"\n{landscape}: truth (mean of {args.truth_sweeps} sweeps, {args.truth_batches} batches a count): "
            + ", ".join(f"{n}: {speeds[n]:,.0f}" for n in sorted(speeds))
            + f" samples/s; best {best}, "
            f"within 5%: {sorted(good)}",
            flush=True,
        )
        print(
            f"  fixed at {first_best} workers (the best of the sweeps before) for {args.seconds:.0f} s: "
            + ", ".join(f"{n:,}" for n in fixed)
            + " samples",
            flush=True,
        )
        met = {"within": 0, "batches": 0, "samples": 0}
        for repeat, (tuned_samples, log) in enumerate(runs, 1):
            settles = [(step, change) for step, change in log if change.kind == "settle"]
            first = settles[0] if settles else None
            settled_good = next((step for step, change in settles if change.to_workers in good), None)
            share = speeds[first[1].to_workers] / speeds[best] if first else float("nan")
            batches_ratio = settled_good / sweep_batches if settled_good is not None else float("nan")
            samples_ratio = tuned_samples / fixed_mean
            met["within"] += share >= 1 - WITHIN
            met["batches"] += batches_ratio <= 1 / 3
            met["samples"] += samples_ratio >= 0.9
            path = [0]
            for _, change in log:
                if change.to_workers != path[-1]:
                    path.append(change.to_workers)
            path = " -> ".join(map(str, path))
            print(
                f"  repeat {repeat:2}: settled at {first[1].to_workers if first else '-'} "
                f"(truth {share:.3f} of the best), batches to settle within 5% {settled_good} "
                f"= {batches_ratio:.2f} of a sweep, samples {tuned_samples:,} = {samples_ratio:.3f} of fixed; "
                f"path {path}",
                flush=True,
            )
        totals.append((landscape, met))
        print(
            f"  {landscape}: within 5% of the best in {met['within']}/{args.repeats} (goal >= 9), "
            f"batches <= 1/3 of a sweep in {met['batches']}/{args.repeats}, "
            f"samples >= 0.9 of fixed in {met['samples']}/{args.repeats}",
            flush=True,
        )
    print("\nsummary:")
    for landscape, met in totals:
        print(
            f"  {landscape:14} within 5%: {met['within']}/{args.repeats}  batches <= 1/3: "
            f"{met['batches']}/{args.repeats}  samples >= 0.9: {met['samples']}/{args.repeats}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
