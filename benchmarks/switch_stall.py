"""The loop's stall at a worker switch, in batch times: overlapped (the default) against stop-then-start.

A loop whose step takes ``--step-ms`` (a sleep: the GIL is free, as in most of a real step; by
default a short step and a longer one, in turn) reads
a dataset that costs ``--sleep-ms`` of waiting and ``--cpu-ms`` of pure-Python CPU per sample,
with workers that take ``--startup-ms`` to start (a ``worker_init_fn`` that sleeps, as opening
files or importing heavy libraries does), enough of them to keep up: the loop is compute-bound
and, in the steady state, waits for nothing. Every ``--settle`` batches it switches between
``--workers A,B`` through ``loader.switch``.

For each switch the stall is what the loop spent inside ``next()`` beyond the steady state: the
``switch_s + load_s`` of every batch from the request to 10 batches past the handover (where the
new workers' first batch arrives), less the steady load of as many batches (the mean load of the
40 batches before the request), divided by one steady batch time (their mean step + load); goal:
with overlap <= 1 batch time. Also the whole time the loop lost over those batches ("wall"): what
they took beyond as many steady batch times, the loop's own step included (a fork holds the GIL,
which a step may need, and the process's pages are then copied on write: fork's costs that no
overlap hides). Prints each switch and the medians per mode.

Usage: python benchmarks/switch_stall.py [--switches 4] [--startup-ms 500] [--step-ms 15,60]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time

import torch
from torch.utils.data import Dataset

from loadertop.core.measure.system import usable_cores
from loadertop.core.probe.loader import DataLoader, LoaderBatch

AFTER_HANDOVER = 10  # batches past the handover still counted: the new workers' pipeline filling up
BEFORE_REQUEST = 40  # steady batches before each request that define the steady state


class CostlyDataset(Dataset):
    """Each sample waits ``sleep_s`` and burns ``cpu_s`` of CPU."""

    def __init__(self, size: int, sleep_s: float, cpu_s: float) -> None:
        self.size, self.sleep_s, self.cpu_s = size, sleep_s, cpu_s

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(self.sleep_s)
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        return torch.full((8,), float(index))


class SlowStart:
    """A worker_init_fn that takes ``seconds`` (picklable, for any start method)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, worker_id: int) -> None:
        time.sleep(self.seconds)


def one_run(args: argparse.Namespace, step_ms: float, overlap: bool) -> list[dict[str, float]]:
    """One loader, ``args.switches`` switches; each switch's figures."""
    counts = [int(n) for n in args.workers.split(",")]
    # Enough batches between switches for an overlap of about the start-up (fork included), and a steady state.
    settle = args.settle or max(60, math.ceil(4 * args.startup_ms / step_ms) + BEFORE_REQUEST)
    batches = settle * (args.switches + 1) + 400
    loader = DataLoader(
        CostlyDataset(batches * args.batch_size, args.sleep_ms / 1000, args.cpu_ms / 1000),
        batch_size=args.batch_size,
        num_workers=counts[0],
        worker_init_fn=SlowStart(args.startup_ms / 1000),
        multiprocessing_context=args.start_method,
        name="switch_stall",
    )
    loader.overlap = overlap
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    requests: list[int] = []  # the number of batches delivered when each switch was asked for
    step_s = step_ms / 1000
    for _batch in loader:
        time.sleep(step_s)
        if len(records) % settle == 0:
            if len(requests) == args.switches:
                break
            requests.append(len(records))
            loader.switch(counts[len(requests) % len(counts)])
    del loader
    results = []
    for asked in requests:
        before = records[asked - BEFORE_REQUEST : asked]
        steady_s = statistics.fmean(r.step_s + r.load_s for r in before)  # means: the stall is a sum of loads
        steady_load_s = statistics.fmean(r.load_s for r in before)
        old = records[asked - 1].generation
        handover = next(i for i in range(asked, len(records)) if records[i].generation != old)
        window = records[asked : handover + AFTER_HANDOVER]
        stall_s = sum(r.switch_s + r.load_s - steady_load_s for r in window)
        wall_s = window[-1].time - records[asked - 1].time - len(window) * steady_s
        results.append(
            {
                "stall": stall_s / steady_s,
                "stall_ms": stall_s * 1000,
                "steady_ms": steady_s * 1000,
                "wall": wall_s / steady_s,
                "handover_batches": handover - asked,
                "at_request_ms": records[asked].switch_s * 1000,
                "at_handover_ms": (records[handover].switch_s + records[handover].load_s) * 1000,
            }
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=4, help="switches per run (default 4)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per mode, alternating (default 1)")
    parser.add_argument("--workers", default="2,3", help="the counts switched between (default 2,3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sleep-ms", type=float, default=2.0, help="waiting per sample (default 2)")
    parser.add_argument("--cpu-ms", type=float, default=0.5, help="CPU per sample (default 0.5)")
    parser.add_argument("--step-ms", default="15,60", help="the loop's step, one run each (default 15,60)")
    parser.add_argument("--startup-ms", type=float, default=500.0, help="each worker's start-up (default 500)")
    parser.add_argument("--settle", type=int, default=0, help="batches between switches (default: from the step)")
    parser.add_argument("--start-method", default=None, help="fork, spawn or forkserver (default: torch's)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {usable_cores()} usable cores, torch {torch.__version__}; workers "
        f"{args.workers}, batch {args.batch_size}, {args.sleep_ms:g} ms wait + {args.cpu_ms:g} ms CPU per sample, "
        f"worker start-up {args.startup_ms:g} ms, start method "
        f"{args.start_method or torch.multiprocessing.get_start_method()}"
    )
    summary = []
    for step_ms in (float(ms) for ms in args.step_ms.split(",")):
        stalls: dict[bool, list[float]] = {True: [], False: []}
        walls: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for overlap in (True, False):
                for i, r in enumerate(one_run(args, step_ms, overlap)):
                    stalls[overlap].append(r["stall"])
                    walls[overlap].append(r["wall"])
                    print(
                        f"step {step_ms:g} ms, round {round_ + 1}, {'overlapped' if overlap else 'stop-start'} "
                        f"switch {i + 1}: stall in next() {r['stall_ms']:.1f} ms = {r['stall']:.2f} batch times "
                        f"(steady {r['steady_ms']:.1f} ms), wall {r['wall']:.2f}; handover after "
                        f"{r['handover_batches']} batches; {r['at_request_ms']:.1f} ms in next() at the request, "
                        f"{r['at_handover_ms']:.1f} ms at the handover",
                        flush=True,
                    )
        summary.append(
            f"step {step_ms:g} ms: stall at a switch / one batch time: "
            f"overlapped {statistics.median(stalls[True]):.2f} "
            f"(goal <= 1), stop-start {statistics.median(stalls[False]):.2f}; wall: overlapped "
            f"{statistics.median(walls[True]):.2f}, stop-start {statistics.median(walls[False]):.2f} (medians)"
        )
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
