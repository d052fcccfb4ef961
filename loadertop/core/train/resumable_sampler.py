"""An epoch order that survives a change of DataLoader, so a hot restart skips and repeats nothing."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled index order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class ResumableSampler(Sampler[int]):
    """Yields one epoch's shuffled indices from a given position onwards.

    The order depends only on the seed and the epoch number, and iteration starts
    at ``start``; the trainer moves ``start`` to the number of samples it has
    consumed before building a new DataLoader, so the new workers continue the
    very same permutation. Sampling happens in the main process (map-style
    datasets), so ``set_position`` also takes effect with persistent workers.
    """

    def __init__(self, num_samples: int, *, seed: int, epoch: int = 0, start: int = 0) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty: it needs at least one sample")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = epoch
        self.start = start
        self._order = epoch_permutation(num_samples, seed, epoch)

    def set_position(self, epoch: int, start: int) -> None:
        """Move to ``start`` samples into ``epoch`` (0-based)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside 0..{self.num_samples}")
        if epoch != self.epoch:
            self._order = epoch_permutation(self.num_samples, self.seed, epoch)
            self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(self._order[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
