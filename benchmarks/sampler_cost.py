"""The system sampler's own cost: its CPU seconds per wall second at the default rate.

It samples while a real run goes on (the calibrated sleep workload with 2 workers, so
there are worker processes to follow), reads the sampling thread's CPU time, and prints
the ratio. Target: under 0.02 (2% of one core) at the default 1 s interval.

Memory (PSS, USS) is read from ``/proc/<pid>/smaps_rollup``, which costs about a thousand times
a read of RSS (the kernel walks the page tables): the benchmark prints what those reads cost apart.
``--smaps-share`` sets their CPU budget (default: ``loadertop.core.measure.memory.SMAPS_CPU_SHARE``); a large
one (``--smaps-share 1000``) reads every process at every sample, to see what the budget saves.

Usage: python benchmarks/sampler_cost.py [--seconds 20] [--interval 1.0] [--workers 2] [--smaps-share 0.01]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import psutil

from loadertop import LoaderConfig, Trainer
from loadertop.core.measure.memory import SMAPS_CPU_SHARE, MemoryReader
from loadertop.core.measure.system import SystemSampler, SystemSnapshot
from loadertop.core.train.calibrated import make_sleep_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smaps-share", type=float, default=SMAPS_CPU_SHARE)
    args = parser.parse_args()
    trainer = Trainer(
        make_sleep_workload(size=1_000_000, sleep_ms=1.0),
        LoaderConfig(num_workers=args.workers, batch_size=16, persistent_workers=args.workers > 0),
        epochs=1,
        device="cpu",
    )
    clock_cpu_s = [0.0]  # the CPU accounting's reading at each sample (the on_sample callback)

    def account(snapshot: SystemSnapshot) -> None:
        started = time.thread_time()
        trainer.sample_cost(snapshot.memory)
        clock_cpu_s[0] += time.thread_time() - started

    memory = MemoryReader(cpu_share=args.smaps_share)
    sampler = SystemSampler(interval_s=args.interval, worker_pids=trainer.worker_pids, on_sample=account, memory=memory)
    trainer.start()
    sampler.start()
    started = time.monotonic()
    time.sleep(args.seconds)
    snapshot = sampler.latest()
    clock_fraction = clock_cpu_s[0] / (time.monotonic() - started)
    sampler.stop()
    trainer.close()
    assert snapshot is not None
    per_sample_ms = snapshot.sampler_cpu_fraction * args.interval * 1000
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores; {snapshot.gpu_status}")
    print(f"interval {args.interval:g} s, {args.seconds:g} s, {len(snapshot.workers)} workers followed")
    print(
        f"sampler CPU seconds per wall second: {snapshot.sampler_cpu_fraction:.5f} "
        f"({snapshot.sampler_cpu_fraction * 100:.3f}% of one core; about {per_sample_ms:.2f} ms CPU per sample)"
    )
    print(
        f"CPU accounting's reading at each sample: {clock_fraction:.5f} CPU s per wall second; "
        f"together {snapshot.sampler_cpu_fraction + clock_fraction:.5f}"
    )
    reads = max(memory.smaps_reads, 1)
    tree = snapshot.memory
    print(
        f"smaps_rollup (budget {args.smaps_share:g} CPU s per wall second): {memory.smaps_reads} reads in "
        f"{args.seconds:g} s, {memory.smaps_cpu_s * 1000 / reads:.2f} ms CPU each, "
        f"{memory.smaps_cpu_s / args.seconds:.5f} CPU s per wall second (included in the sampler's)"
    )
    if tree is not None:
        print(
            f"the tree at the end: PSS {tree.pss_bytes / 2**20:.0f} MB, summed RSS {tree.rss_bytes / 2**20:.0f} MB, "
            f"workers' USS {[round(w.uss_bytes / 2**20, 1) for w in tree.workers]} MB ({tree.source})"
        )
    ok = snapshot.sampler_cpu_fraction + clock_fraction < 0.02
    print("target < 0.02:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
