"""What loadertop.DataLoader adds to a tight loop: instrumented / stock samples per second.

A loop that does nothing with its batches (the worst case for any per-batch cost) iterates a
small in-memory dataset with torch's DataLoader and with loadertop's drop-in, with one observer
attached as the launcher attaches one, in alternating chunks of 100 batches, which of the two
goes first alternating too (so the machine's drift hits both alike). Prints the per-round ratios
and their geometric mean (goal >= 0.99), and the same for two stock loaders (``--control``):
what the harness reads where there is no difference, the noise to read the ratio against.

Usage: python benchmarks/dropin_overhead.py [--rounds 6] [--batches 3000] [--workers 0]
"""

from __future__ import annotations

import argparse
import collections
import math
import platform
import sys
import time

import torch
from torch.utils.data import Dataset

from loadertop.core.measure.system import usable_cores
from loadertop.core.probe.loader import DataLoader


class Vectors(Dataset):
    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((16,), float(index)), index % 10


class StockAgain(torch.utils.data.DataLoader):
    """torch's DataLoader under another name: the control's second loader."""


def make(cls: type, workers: int, batch_size: int):
    loader = cls(Vectors(), batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    if isinstance(loader, DataLoader):
        loader.time_stages = False  # the drop-in's own path; benchmarks/stages.py measures what stage timing adds
        # An observer like the launcher's: each record goes to a bounded buffer that something drains.
        loader.add_observer(collections.deque(maxlen=1000).append)
    iterator = iter(loader)
    for _ in range(20):  # warm up (workers start, first batches)
        next(iterator)
    return iterator


def one_round(
    batches: int, workers: int, batch_size: int, chunk: int = 100, measured: type = DataLoader
) -> dict[type, float]:
    """Samples/s of stock and ``measured``, in alternating chunks so that the machine's drift hits both."""
    iterators = {cls: make(cls, workers, batch_size) for cls in (torch.utils.data.DataLoader, measured)}
    spent = dict.fromkeys(iterators, 0.0)
    for number in range(batches // chunk):
        for cls, iterator in iterators.items() if number % 2 else reversed(iterators.items()):
            started = time.perf_counter()
            for _ in range(chunk):
                next(iterator)
            spent[cls] += time.perf_counter() - started
    return {cls: (batches // chunk) * chunk * batch_size / seconds for cls, seconds in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--control", action="store_true", help="also measure stock against stock (the noise)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {usable_cores()} usable cores, torch {torch.__version__}; "
        f"{args.workers} workers, batch {args.batch_size}, {args.batches} batches per measurement"
    )
    for measured, name in ((DataLoader, "loadertop"), (StockAgain, "stock again"))[: 2 if args.control else 1]:
        ratios = []
        for round_ in range(args.rounds):
            speed = one_round(args.batches, args.workers, args.batch_size, measured=measured)
            ratio = speed[measured] / speed[torch.utils.data.DataLoader]
            ratios.append(ratio)
            print(
                f"round {round_ + 1}: stock {speed[torch.utils.data.DataLoader]:,.0f} samples/s, "
                f"{name} {speed[measured]:,.0f} samples/s, ratio {ratio:.3f}"
            )
        mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"{name} / stock: {mean:.3f} (geometric mean{'; goal >= 0.99' if measured is DataLoader else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
