"""Accounted CPU against the operating system's own count, and the CPU cost of one sample per worker count.

For the built-in workload and a CPU-bound one (2 ms of pure-Python work per sample, no
persistent workers, so every epoch re-spawns them), runs ``loadertop sweep --json`` in a
subprocess and compares the CPU-seconds loadertop credited to the configurations with
what the kernel counted for the whole process tree (``getrusage(RUSAGE_CHILDREN)`` around
the subprocess), less the tree's CPU before the first configuration started (imports,
the model): goal 0.95-1.05. Also prints CPU-seconds per delivered sample per worker count.

Usage: python benchmarks/cost.py [--batches 60] [--workers 0,1,2,4]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from loadertop.core.measure.system import usable_cores

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "built-in": [],
    "CPU-bound (2 ms of CPU per sample)": ["--workload", "tests.workloads:cpu_bound", "--batch-size", "8"],
}


def os_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", default="0,1,2,4")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {usable_cores()} usable cores, Python {platform.python_version()}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in WORKLOADS.items():
            out = Path(tmp) / "sweep.json"
            before = os_cpu_s()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loadertop",
                    "sweep",
                    "--workers",
                    args.workers,
                    "--batches",
                    str(args.batches),
                    "--json",
                    str(out),
                    *extra,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            measured = os_cpu_s() - before
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                return done.returncode
            document = json.loads(out.read_text())
            accounted = sum(row["cpu_s"] for row in document["rows"])
            in_configs = measured - document["cpu_s_before_first_config"]
            ratio = accounted / in_configs
            worst = max(worst, abs(ratio - 1))
            print(
                f"\n{name}: accounted {accounted:.2f} CPU s / OS-measured {in_configs:.2f} CPU s = {ratio:.3f} "
                f"(goal 0.95-1.05; {document['cpu_accounting']})"
            )
            print(f"  {'workers':>7} {'samples/s':>12} {'CPU %':>6} {'CPU ms/sample':>14} {'in workers':>11}")
            for row in document["rows"]:
                print(
                    f"  {row['num_workers']:>7} {row['samples_per_s']:>12,.0f} {row['cpu_percent']:>6.0f} "
                    f"{row['cpu_s_per_sample'] * 1000:>14.2f} {row['worker_cpu_share'] * 100:>10.0f}%"
                )
    print(f"\nworst |accounted / OS - 1| = {worst:.3f}")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
