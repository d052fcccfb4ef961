"""How long a default sweep takes on the built-in workload, and whether repeated sweeps agree.

Runs ``loadertop sweep`` (default counts: 0, 1, 2, 4, ... up to twice the usable cores;
100 steady batches each) ``--repeats`` times, timing each from the command's start to
its exit (start-up, image check, every count's warm-up and measurement, shutdown).

Usage: python benchmarks/sweep.py [--repeats 3] [--batches 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores, Python {platform.python_version()}")
    durations, picks, tables = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"sweep{i}.json"
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "loadertop", "sweep", "--batches", str(args.batches), "--json", str(out)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            durations.append(time.perf_counter() - started)
            document = json.loads(out.read_text())
            picks.append(document["recommended_num_workers"])
            tables.append(done.stdout)
            speeds = ", ".join(f"{r['num_workers']}w {r['samples_per_s']:.0f}" for r in document["rows"])
            print(
                f"sweep {i + 1}: {durations[-1]:.1f} s, recommended {picks[-1]} workers "
                f"(fastest {document['fastest_num_workers']}); samples/s: {speeds}"
            )
    agree = Counter(picks).most_common(1)[0]
    print(
        f"default sweep ({args.batches} batches per count): median {statistics.median(durations):.1f} s; "
        f"recommendations agree {agree[1]}/{len(picks)} (on {agree[0]} workers)"
    )
    print("\nthe last sweep printed:\n" + tables[-1][tables[-1].index("\n    workers") + 1 :])
    return 0


if __name__ == "__main__":
    sys.exit(main())
