"""What stage timing costs a loop: samples per second with ``time_stages`` on over off, and what it measures.

Two cases, each at 0 and 2 workers:

- ``images``: a realistic image pipeline: JPEG files on disk (written first, 160x120 pixels), opened and
  decoded by PIL as ``ImageFolder`` does, then ``RandomResizedCrop``, ``RandomHorizontalFlip``,
  ``ColorJitter`` and ``ToTensor`` in a ``Compose`` (goal: >= 0.99);
- ``trivial``: a ``__getitem__`` that only makes a small tensor, the worst case for any per-sample cost
  (goal: >= 0.97).

Two loaders of each (timing on, timing off; persistent workers, warmed up) are iterated in alternating
chunks of batches, which of the two goes first alternating too, so that the machine's drift hits both
alike. Prints every round's ratio and their geometric mean, and the stages measured in the last round.

Usage: python benchmarks/stages.py [--rounds 6] [--batches 240] [--cases images-0,images-2,trivial-0,trivial-2]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from loadertop.core.measure.system import usable_cores
from loadertop.core.policy.stages import verdict
from loadertop.core.probe.loader import DataLoader
from loadertop.core.protocol.stages import describe

BATCH = 16
CHUNK = 20


class Jpegs(Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(96),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.3, 0.3, 0.3),
                transforms.ToTensor(),
            ]
        )

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> torch.Tensor:
        with open(self.paths[index % len(self.paths)], "rb") as file:
            image = Image.open(file).convert("RGB")
        return self.transform(image)


class Trivial(Dataset):
    def __len__(self) -> int:
        return 10_000_000

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((16,), float(index))


def write_jpegs(folder: Path, count: int = 64) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        # Smooth content (as photographs are) so the JPEG is of a realistic size, not noise.
        base = torch.rand(3, 12, 16, generator=generator)
        pixels = torch.nn.functional.interpolate(base[None], size=(120, 160), mode="bilinear")[0]
        array = (pixels.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        path = folder / f"{i}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(path)
    return paths


def make(dataset: Dataset, workers: int, timed: bool):
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)
    loader.time_stages = timed
    iterator = iter(loader)
    for _ in range(max(4, 2 * workers)):
        next(iterator)
    return loader, iterator


def one_round(dataset: Dataset, workers: int, batches: int) -> tuple[float, float, DataLoader]:
    made = {timed: make(dataset, workers, timed) for timed in (True, False)}
    spent = dict.fromkeys(made, 0.0)
    for number in range(batches // CHUNK):
        for timed in (True, False) if number % 2 else (False, True):
            iterator = made[timed][1]
            started = time.perf_counter()
            for _ in range(CHUNK):
                next(iterator)
            spent[timed] += time.perf_counter() - started
    samples = (batches // CHUNK) * CHUNK * BATCH
    return samples / spent[True], samples / spent[False], made[True][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=240)
    parser.add_argument("--cases", default="images-0,images-2,trivial-0,trivial-2")
    args = parser.parse_args()
    cores = usable_cores()
    print(
        f"machine: {platform.machine()}, {cores} usable cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}; batch {BATCH}, {args.batches} batches per loader per round"
    )
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder))
        for case in args.cases.split(","):
            kind, workers_text = case.rsplit("-", 1)
            workers = int(workers_text)
            dataset = Jpegs(paths) if kind == "images" else Trivial()
            goal = 0.99 if kind == "images" else 0.97
            batches = args.batches if kind == "images" else args.batches * 10
            ratios = []
            loader = None
            for round_ in range(args.rounds):
                on, off, loader = one_round(dataset, workers, batches)
                ratios.append(on / off)
                print(f"{case} round {round_ + 1}: off {off:,.0f} samples/s, on {on:,.0f}, ratio {on / off:.3f}")
            mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            print(f"{case}: on / off {mean:.3f} (geometric mean of {len(ratios)} rounds; goal >= {goal})")
            if loader is not None:
                for figures in loader.stages():
                    print(f"  measured: {describe(figures, top=8)}")
                    print(f"  verdict: {verdict(figures, cores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
