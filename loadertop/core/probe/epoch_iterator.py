"""The iterator a loop holds over a ``loadertop.DataLoader``: one epoch, kept going across worker generations, each
batch timed (``LoaderBatch``) and handed to the observers; the switch itself is ``handover.Handover``'s.

The plain path (a batch of a generation under way, nothing asked) reads the clock twice and, when someone
observes, builds one record (benchmarks/dropin_overhead.py measures it); anything else takes the careful path.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.probe.handover import Handover, Overlap
from loadertop.core.probe.index_stream import IssuedIndices
from loadertop.core.probe.loader_reports import LoaderBatch, batch_len, new_record
from loadertop.core.probe.worker_generation import WorkerGeneration

_clock = time.perf_counter


class SwitchingIterator(Handover):
    """The iterator the loop holds; it keeps one epoch going across worker generations.

    Args:
        loader: the ``loadertop.DataLoader`` iterated.
        generation: the epoch's first worker generation.
    """

    # What the delivering generation gives the loop's path, copied from it (``_deliver_from``).
    _inner: Any  # its torch iterator
    _stream: IssuedIndices | None  # its index stream (None where it is not followed)
    _tracking: bool  # the indices it is handed are followed (map-style data, with workers)
    _workers_now: int
    _number: int  # its configuration's number (LoaderBatch.generation)
    _first_at: float | None  # when it was asked for, until its first batch
    _timed: bool  # its first batch measures its workers' start-up
    _ready_at: float | None  # when its first batch was waiting (an overlapped switch's: before the loop asked)
    _careful: bool  # next() takes the careful path (a first batch, an overlap, a request) until False
    _plain: tuple[Any, IssuedIndices | None, list[Any], int, int, float]  # what the plain path reads, in one lookup

    def __init__(self, loader: Any, generation: WorkerGeneration) -> None:
        self._loader = loader
        self._requests = loader._requests  # the loader's PendingRequest: read at every batch
        self._book = loader._book  # the loader's EpochBook: its epoch, in every record
        self._wall_offset = time.time() - _clock()  # wall-clock times from the cheap monotonic clock
        self._overlap: Overlap | None = None  # an overlapped switch under way, until its handover
        self._go: threading.Event | None = None  # to set once this next() returns: the new generation may start
        self._deliver_from(generation)
        self._pair: tuple[WorkerGeneration, WorkerGeneration | None] = (generation, None)  # for other threads
        self._since: tuple[float, int] | None = None  # the delivering generation's first batch: when, and its count
        self._batch = 0
        self._returned_at: float | None = None

    def _deliver_from(self, generation: WorkerGeneration) -> None:
        self._inner = generation.inner
        self._stream = generation.stream
        self._tracking = generation.stream is not None and generation.stream.tracking
        self._workers_now = generation.num_workers
        self._number = generation.number
        self._first_at = generation.created_at
        self._timed = generation.timed
        self._ready_at = generation.ready_at
        self._careful = True
        # What the plain path reads, in one attribute (this class's __getattr__ makes each lookup on it slow).
        self._plain = (
            self._inner,
            self._stream if self._tracking else None,
            self._loader._hooks.observers,
            self._workers_now,
            self._number,
            self._wall_offset,
        )

    def __iter__(self) -> SwitchingIterator:
        return self

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:  # torch's iterator attributes (``_workers``...) stay reachable
        if name == "_inner":  # not set yet (a copy made without __init__): no endless lookup
            raise AttributeError(name)
        return getattr(self._inner, name)

    def generations(self) -> tuple[WorkerGeneration, WorkerGeneration | None]:
        """The generation delivering and the one starting (None but during an overlapped switch)."""
        return self._pair

    def worker_pids(self) -> tuple[int, ...]:
        """Pids of the delivering generation's workers, then of the starting one's (during an overlapped switch)."""
        delivering, starting = self._pair
        return delivering.pids() + starting.pids() if starting is not None else delivering.pids()

    def _shutdown_workers(self) -> None:
        """Shut every generation's workers down: torch's iterator method of that name, which this iterator stands
        in for (``torch_compat.shutdown_workers``), done for both generations of an overlap."""
        self._loader._threads.await_reaper()
        delivering, starting = self._pair
        if starting is not None:
            starting.go.set()
            starting.stop.set()
            with contextlib.suppress(Exception):  # one that failed to start has nothing to shut down
                starting.built()
        for generation in (delivering, starting):
            if generation is not None and generation.inner is not None:
                torch_compat.shutdown_workers(generation.inner)

    def __next__(self) -> Any:
        """The next batch: the plain path (a batch of a generation under way, nothing asked) reads the clock
        twice, and builds one record for the observers if there are any; anything else takes ``_next_careful``."""
        asked = _clock()
        if self._careful or self._requests.settings is not None:
            return self._next_careful(asked)
        inner, stream, observers, workers_now, number, wall_offset = self._plain
        try:
            batch = next(inner)
        except StopIteration:
            self._ended()
            raise
        except Exception:
            self._failed()
            raise
        returned = _clock()
        if stream is not None:
            stream.delivered()
        self._batch = count = self._batch + 1
        if observers:
            previous = self._returned_at
            record = new_record(
                LoaderBatch,
                (
                    self._loader.name,
                    self._book.epoch,
                    count,
                    workers_now,
                    batch_len(batch),
                    returned - asked,
                    None if previous is None else asked - previous,
                    returned + wall_offset,
                    0.0,
                    number,
                ),
            )
            for observer in observers:
                observer(record)
        self._returned_at = returned
        return batch

    def _ended(self) -> None:
        """The epoch is over (the delivering generation raised StopIteration, no new one to go on)."""
        book = self._book
        if book.running() is self:
            book.active = None

    def _failed(self) -> None:
        """The delivering generation raised for a batch (a dataset's error): that batch was consumed."""
        if self._tracking:
            self._stream.delivered()  # as with torch's iterator
        if self._overlap is not None:
            self._overlap.handover_at -= 1  # counted as delivered, though not in self._batch
        if self._go is not None:
            self._go.set()
            self._go = None

    def _next_careful(self, asked: float) -> Any:
        """``__next__`` where something is afoot: a generation's first batch, an overlap, a request waiting."""
        loader = self._loader
        called = asked
        overlap = self._overlap
        if overlap is not None:
            if self._batch >= overlap.handover_at:  # the old generation delivered its last batch: the new one goes on
                self._hand_over()
                called = _clock()  # the handover is kept apart from the loop's step and this batch's load
        elif self._requests.settings is not None and loader.continues_exactly:
            self._switch()
            called = _clock()  # the workers' (re)start is kept apart from the loop's step and this batch's load
        try:
            batch = next(self._inner)
        except StopIteration:
            if self._overlap is not None:  # the old generation ended sooner than counted: the new one goes on
                self._hand_over()
                return self.__next__()
            self._ended()
            raise
        except Exception:
            self._failed()
            raise
        returned = _clock()
        if self._tracking:
            self._stream.delivered()
        self._batch += 1
        load_s = returned - called
        step_s = None if self._returned_at is None else asked - self._returned_at
        if self._go is not None:  # the loop goes back to its step: an overlapped switch's workers start now
            self._go.set()
            self._go = None
        if self._first_at is not None:  # a generation's first batch: how long its workers took to start
            if self._timed:
                loader._startups.note(self._workers_now, (self._ready_at or returned) - self._first_at)
            self._first_at = None
            self._since = (returned, self._batch)  # the batch interval is measured from here on
        observers = loader._hooks.observers
        if observers:
            record = LoaderBatch(
                loader.name,
                self._book.epoch,
                self._batch,
                self._workers_now,
                batch_len(batch),
                load_s,
                step_s,
                returned + self._wall_offset,
                called - asked,
                self._number,
            )
            for observer in observers:
                observer(record)
        self._returned_at = returned
        self._careful = self._overlap is not None or self._go is not None or self._first_at is not None
        return batch
