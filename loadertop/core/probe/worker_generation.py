"""One worker generation: the torch iterator of one configuration over the epoch's index stream, made in the loop's
thread or, for an overlapped switch, in a thread of the loader's while the old generation still delivers."""

from __future__ import annotations

import threading
import time
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.probe.index_stream import IssuedIndices

_clock = time.perf_counter

GO_WAIT_S = 1.0
"""The longest a new generation's workers wait for the loop to be back in its step before they start."""


class WorkerGeneration:
    """One worker generation: a torch iterator over the epoch's index stream, with its settings' worker count."""

    __slots__ = (
        "builder",
        "created_at",
        "error",
        "go",
        "inner",
        "num_workers",
        "number",
        "ready_at",
        "stop",
        "stream",
        "timed",
    )

    def __init__(
        self, inner: Any, stream: IssuedIndices | None, num_workers: int, number: int, created_at: float, *, timed: bool
    ) -> None:
        self.inner = inner  # None while a builder thread makes it
        self.stream = stream  # None where the stream is not followed (IterableDataset, in_order=False)
        self.num_workers = num_workers
        self.number = number  # the loader's switch count when it was configured (LoaderBatch.generation)
        self.created_at = created_at  # when it was asked for
        self.timed = timed  # its workers were started for it: its first batch measures their start-up
        self.ready_at: float | None = None  # when its first batch was waiting (overlapped: before the loop asked)
        self.builder: threading.Thread | None = None
        self.go = threading.Event()  # set when the loop is back in its step: start the workers then
        self.stop = threading.Event()  # set to stop waiting for the first batch
        self.error: BaseException | None = None

    def pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in torch_compat.worker_processes(self.inner) if w.pid)

    def build(self, loader: Any, base_seed: int) -> None:
        """Make the torch iterator in a thread of its own, and wait there for its first batch (when it is
        ready is its start-up): starting processes takes long (a fork copies the process's page tables, a
        spawn pickles the dataset) and the loop goes on meanwhile. The forks begin when the loop is back in
        its step (``go``): a fork holds the GIL, a step mostly does not need it."""
        device = torch_compat.current_device_index() if loader.pin_memory else None

        def make() -> None:
            try:
                self.go.wait(GO_WAIT_S)
                if device is not None:  # the device is per thread: pin where the loop's thread would
                    torch_compat.set_device_index(device)
                self.inner = loader._new_generation(self.stream, base_seed)
                if torch_compat.wait_for_first_batch(self.inner, self.stop):
                    self.ready_at = _clock()
            except BaseException as exc:  # noqa: BLE001 - raised in the loop's thread, at the handover
                self.error = exc

        self.builder = loader._threads.builder = threading.Thread(
            target=make, name=f"loadertop-workers-{loader.name}", daemon=True
        )
        self.builder.start()

    def built(self) -> Any:
        """The torch iterator, once its builder is done; raises what the builder raised."""
        builder = self.builder
        if builder is not None:
            builder.join()
            self.builder = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.inner
