"""100 hot restarts in a row: do child processes, file descriptors, /dev/shm entries or RSS grow?

Cycles 0, 1, 2, 4 workers and 1, 2, 4 with persistent_workers on a calibrated dataset (a few
batches at each), after one warm-up pass; prints the baseline and final counts.
Targets: children, fds and /dev/shm entries back at baseline; RSS growth under 10%.

Usage: python benchmarks/soak.py [--restarts 100]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import psutil

from loadertop import LoaderConfig, Trainer
from loadertop.core.drive.soak import soak
from loadertop.core.train.calibrated import make_sleep_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores, Python {platform.python_version()}")
    trainer = Trainer(
        make_sleep_workload(size=100_000, sleep_ms=0.5), LoaderConfig(batch_size=8), epochs=1, device="cpu"
    )
    trainer.start()
    started = time.monotonic()
    try:
        base, final = soak(
            trainer, args.restarts, on_restart=lambda i, c: print(f"  {i} restarts ({c.key})") if i % 25 == 0 else None
        )
    finally:
        trainer.close()
    took = time.monotonic() - started
    growth = final.rss_mb / base.rss_mb - 1
    print(f"{args.restarts} hot restarts in {took:.0f} s")
    print(f"{'':16}{'baseline':>10}{'final':>10}")
    print(f"{'children':16}{base.children:>10}{final.children:>10}")
    print(f"{'open fds':16}{base.fds:>10}{final.fds:>10}")
    print(f"{'/dev/shm':16}{base.shm_entries:>10}{final.shm_entries:>10}")
    print(f"{'RSS MB':16}{base.rss_mb:>10.0f}{final.rss_mb:>10.0f}   growth {growth:+.1%} (target < 10%)")
    ok = (
        final.children <= base.children
        and final.fds <= base.fds
        and final.shm_entries <= base.shm_entries
        and growth < 0.10
    )
    print("OK" if ok else "MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
