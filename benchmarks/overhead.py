"""What watching costs: training throughput with the monitor open against headless, and key-press latency.

1. Throughput: the built-in workload with the same worker count runs ``--max-batches``
   headless and with the app open in a real terminal (tmux), alternating, each with
   ``--record``. Steady-state samples/s comes from the records (warm-up batches and
   the first ``--skip`` batches left out): samples / wall time between batch ends.
   Rounds run A-B, B-A, ... (on the 2-core VM the second run of a pair was often ~10%
   faster, whichever mode it was); the ratio is the geometric mean of the per-round
   monitor/headless ratios, so that order effect cancels. Target: at least 0.97.
2. Latency: the app at 0 workers on the built-in workload (its augmentation runs in
   the training thread, CPU-heavy), ``+`` and ``-`` pressed in turn; the time from
   ``tmux send-keys`` to the pane showing the new pending count. Target: p95 under 100 ms.

Usage: python benchmarks/overhead.py [--workers 2] [--batches 400] [--rounds 4] [--presses 40]
Needs tmux.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadertop.core.protocol.records import read_records
from tests.e2e.tmux import TmuxApp, app_key_latencies_ms, percentiles_text, step_of


def throughput(record: Path, skip: int) -> float:
    """Steady samples/s from a --record file: samples after ``skip`` batches over their wall time."""
    rows = [r for r in read_records(record) if "event" not in r]  # batches only: memory lines come with every sample
    rows = [r for r in rows[skip:] if not r["warmup"]]
    if len(rows) < 2:
        raise RuntimeError(f"{record}: too few batches to measure")
    elapsed = rows[-1]["time"] - rows[0]["time"]
    return sum(r["samples"] for r in rows[1:]) / elapsed


def run_headless(args: argparse.Namespace, record: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--workers",
            str(args.workers),
            "--max-batches",
            str(args.batches),
            "--record",
            str(record),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return throughput(record, args.skip)


def run_monitor(args: argparse.Namespace, record: Path, tmp: Path) -> float:
    app = TmuxApp(
        ["run", "--workers", str(args.workers), "--max-batches", str(args.batches), "--record", str(record)], tmp
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if record.exists() and len(record.read_text().splitlines()) >= args.batches:
                break
            time.sleep(0.5)
        app.send("q")
        if app.exit_status(30) != 0:
            raise RuntimeError("the app did not exit cleanly")
    finally:
        app.close()
    return throughput(record, args.skip)


def key_latency(args: argparse.Namespace, tmp: Path) -> list[float]:
    return app_key_latencies_ms(
        ["--workers", "0"], tmp, lambda s: step_of(s) > 10, args.presses, "next: 1 worker", "next: 0 workers"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--skip", type=int, default=20, help="batches left out at the start of each run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--presses", type=int, default=40)
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        headless, monitor = [], []
        for i in range(0 if args.latency_only else args.rounds):
            # A-B then B-A: a drift of the shared machine's speed hits both modes alike.
            if i % 2 == 0:
                headless.append(run_headless(args, tmp / f"headless{i}.jsonl"))
                monitor.append(run_monitor(args, tmp / f"monitor{i}.jsonl", tmp))
            else:
                monitor.append(run_monitor(args, tmp / f"monitor{i}.jsonl", tmp))
                headless.append(run_headless(args, tmp / f"headless{i}.jsonl"))
            print(f"round {i + 1}: headless {headless[-1]:.0f} samples/s, monitor {monitor[-1]:.0f} samples/s")
        if headless:
            ratios = [m / h for m, h in zip(monitor, headless, strict=True)]
            ratio = statistics.geometric_mean(ratios)
            print(
                f"per-round ratios {' '.join(f'{r:.3f}' for r in ratios)}; the machine's own noise: headless "
                f"runs spread {max(headless) / min(headless) - 1:.0%} (max/min)"
            )
            print(
                f"throughput, built-in workload, {args.workers} workers, {args.batches} batches: "
                f"monitor/headless = {ratio:.3f} (geometric mean over the rounds; target >= 0.97) "
                f"{'OK' if ratio >= 0.97 else 'MISSED'}"
            )
        latencies = key_latency(args, tmp)
        figures, p95 = percentiles_text(latencies)
        print(
            f"key press -> screen at 0 workers (CPU-heavy training thread), {len(latencies)} presses: "
            f"{figures} (target p95 < 100 ms) {'OK' if p95 < 100 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
