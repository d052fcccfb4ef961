"""The random numbers a loader's worker generations draw: at each ``iter()`` what the configured loader draws, at a
switch none from the script's generators (the new workers' base seed comes from a private generator)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from loadertop.core.probe import torch_compat


class WorkerSeeds:
    """Where a loader's worker base seeds come from."""

    __slots__ = ("drawn", "latest")

    def __init__(self) -> None:
        self.drawn = False
        """A persistent setting's one draw of its workers' base seed is done."""
        self.latest = 0
        """The latest generation's workers' base seed, seeding a private generator for the next."""

    def epoch_iterator(self, loader: Any, stock_iter: Callable[[], Any]) -> Any:
        """Torch's iterator for a new epoch (``stock_iter()``), drawing from the script's RNG what the loader it
        configured draws.

        A stock loader draws its workers' base seed (from ``generator``, else torch's global RNG) at every
        ``iter()``, but a persistent one only at its first: its workers go on. Whatever count runs now (0
        workers under a persistent setting: an iterator made each epoch; workers started anew after a
        switch), the draws are the persistent setting's; the sampler is iterated each epoch either way.
        """
        reused = (
            loader.persistent_workers
            and loader.num_workers > 0
            and torch_compat.persistent_iterator(loader) is not None
        )
        draws = not (loader.persistent_workers and self.drawn)
        self.drawn = bool(loader.persistent_workers)
        if not draws and not reused:  # a fresh iterator, which would draw the seed: from a private generator
            with private_generator(loader, self.latest):
                inner = stock_iter()
        else:
            if draws and reused:  # the persistent setting is new, its workers are not: draw as a first iter() does
                torch_compat.draw_base_seed(loader.generator)
            inner = stock_iter()
        self.latest = torch_compat.base_seed(inner)
        return inner

    def generation_iterator(self, loader: Any, base_seed: int) -> Any:
        """A torch iterator for ``loader``'s current settings whose workers' base seed comes from ``base_seed``
        (the previous generation's); no random number drawn from the script's generators."""
        # Not torch's global RNG state saved and restored around this: a sampler that draws as it
        # goes (an infinite one) is pulled for the new workers' first batches here, and must stay pulled.
        with private_generator(loader, base_seed):
            inner = torch_compat.new_iterator(loader)
        self.latest = torch_compat.base_seed(inner)
        return inner


@contextlib.contextmanager
def private_generator(loader: Any, base_seed: int) -> Iterator[None]:
    """Torch's iterators made meanwhile draw their workers' base seed from a generator seeded from
    ``base_seed`` (the previous generation's), not from the script's ``generator`` or global RNG."""
    script_generator = loader.generator
    private = torch.Generator()
    private.manual_seed(base_seed)
    loader.generator = private
    try:
        yield
    finally:
        loader.generator = script_generator
