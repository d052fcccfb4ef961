"""A launched script's GPU idle time against each loader's waits, made in the publisher's writer thread.

The monitor makes the same figure from outside (``sessions.remote``); this one is for what the script
itself writes: loadertop's end lines (``--headless``) and ``gpu_idle`` events in ``--record``. Once a second
the writer thread asks NVML (``measure.system.NvmlReader``) which GPU this process holds a context on and
reads that GPU's utilisation samples since the last read; each batch the loop received is a window of the
loader's book (``measure.gpu_idle.GpuIdleBook``): from the end of the batch before (the loop's step on it,
then this ``next()``) to the batch in hand, its wait the ``next()``. Nothing here runs on the loop's path,
and without NVML or a GPU it turns itself off after its first read.
"""

from __future__ import annotations

import os
import time
from typing import Any

from loadertop.core.measure.gpu_idle import GpuIdleBook
from loadertop.core.protocol.gpu_idle import GpuIdle

READ_EVERY_S = 1.0
"""How often NVML is read (its samples come 1 to 6 a second: one read a second gets them all)."""


class GpuWatch:
    """Per loader, the GPU's idle time against the loop's waits for it (the writer thread's only; not thread-safe)."""

    def __init__(self, reader_factory: Any = None) -> None:
        self._factory = reader_factory
        self._reader: Any = None
        self._off = False
        self._next_read = 0.0
        self._warmup: dict[str, tuple[int, int]] = {}  # loader -> (workers, warm-up batches left)
        self.books: dict[str, GpuIdleBook] = {}
        self.note: str | None = None
        """Why there is no figure where NVML has a GPU (None otherwise)."""

    def batch(self, loader: str, num_workers: int, load_s: float, step_s: float | None, at: float) -> None:
        """A batch handed to the loop at ``at`` (UNIX s) after ``load_s`` in ``next()`` and ``step_s`` of the loop's
        work on the batch before (None: an epoch's first, whose window is its wait alone). The first
        ``max(1, workers)`` batches after a start or a switch are warm-up and left out, as the monitor does."""
        if self._off:
            return
        workers, left = self._warmup.get(loader, (-1, 0))
        if workers != num_workers:
            left = max(1, num_workers)
        self._warmup[loader] = (num_workers, left - 1)
        if left > 0:
            return
        book = self.books.get(loader)
        if book is None:
            book = self.books[loader] = GpuIdleBook()
        start = at - load_s - (step_s or 0.0)
        book.add_batch(num_workers, start, at - load_s, at)

    def tick(self, *, now: float | None = None, force: bool = False) -> None:
        """Read NVML when a second has passed since the last read (``force``: now, as at the end)."""
        if self._off:
            return
        now = time.monotonic() if now is None else now
        if not force and now < self._next_read:
            return
        self._next_read = now + READ_EVERY_S
        if self._reader is None:
            from loadertop.core.measure.system import NvmlReader  # psutil and NVML: only once a batch came

            self._reader = (self._factory or NvmlReader)()
        reader = self._reader
        if not reader.available:
            self.stop()
            return
        gpu = reader.gpu_of({os.getpid()})
        if gpu is None:
            self.note = "this process holds no context on a GPU NVML sees"
            return
        read = reader.utilization_samples(gpu)
        self.note = read.note
        for book in self.books.values():
            book.add_samples(read.samples, gpu)

    def stop(self) -> None:
        """Turn off: no GPU, or the run ended (NVML shut down)."""
        self._off = True
        self._warmup.clear()
        if self._reader is not None:
            self._reader.close()
        for book in self.books.values():
            book.no_gpu()

    def figures(self) -> dict[str, tuple[GpuIdle, ...]]:
        """Each loader's figures per worker count (loaders with none left out)."""
        return {name: figures for name, book in self.books.items() if (figures := book.figures())}
