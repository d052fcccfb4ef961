"""A switch within an epoch, between two batches: overlapped (the old generation's stream cut after a few more
batches, the new one started on the rest by a thread, handed over when the old has delivered all) or stop and
start (the old workers shut down, the new ones issued again what those had not delivered, first)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.probe.index_stream import IssuedIndices, continuing
from loadertop.core.probe.worker_generation import WorkerGeneration

_clock = time.perf_counter


@dataclass(slots=True)
class Overlap:
    """An overlapped switch under way: the generation starting, and when the old one has delivered all."""

    starting: WorkerGeneration
    handover_at: int
    """The loop's batch count at which the old generation has delivered its last batch."""


class Handover:
    """The switching steps of ``epoch_iterator.SwitchingIterator``: the state they change is its own (declared
    here), and they deliver from a new generation with its ``_deliver_from``."""

    _loader: Any
    _inner: Any
    _stream: IssuedIndices | None
    _tracking: bool
    _batch: int
    _returned_at: float | None
    _since: tuple[float, int] | None
    _careful: bool
    _overlap: Overlap | None
    _go: threading.Event | None
    _pair: tuple[WorkerGeneration, WorkerGeneration | None]

    def finish_switch(self) -> None:
        """Hand an overlapped switch over now (the loop left the epoch before it did)."""
        overlap = self._overlap
        if overlap is not None:
            overlap.starting.go.set()
            overlap.starting.stop.set()  # its first batch belongs to the abandoned epoch: no need to wait for it
            self._hand_over()

    def _switch(self) -> None:
        """Apply the pending settings now, between two batches: overlapped where it can be, else stop and start."""
        loader = self._loader
        changes, overlap = loader._take_request_and_overlap()
        if changes is None or self._stream is None:
            return
        stream = self._stream
        if overlap:
            in_flight = len(stream.issued) if self._tracking else 0
            reserve = loader._overlap_batches(
                changes.get("num_workers", loader.num_workers), in_flight, self._interval_s()
            )
            if in_flight + reserve > 0:
                pending = itertools.chain(stream.again, stream.source)  # not yet handed out, in order
                ahead = list(itertools.islice(pending, reserve + 1))
                # Overlap where the old generation has something to deliver and the epoch something left after it.
                if ahead and in_flight + len(ahead) > 1:
                    stream.again = deque()
                    self._begin_overlap(changes, in_flight, ahead[:-1], itertools.chain(ahead[-1:], pending))
                    return
                stream.again, stream.source = deque(ahead), pending  # as they were: stop and start
        self._switch_now(changes)

    def _interval_s(self) -> float:
        """The loop's mean time between batches since the delivering generation's first (its start-up and the
        loop's work on its first batch left out; the loader's previous figure when none has followed yet)."""
        startups = self._loader._startups
        since, returned = self._since, self._returned_at
        if since is not None and returned is not None and self._batch > since[1]:
            startups.interval_s = (returned - since[0]) / (self._batch - since[1])
        return startups.interval_s

    def _continuing(self, rest: Iterator[Any], again: tuple[Any, ...], regroup: bool) -> IssuedIndices:
        """The next generation's index stream: ``again``, then ``rest`` (regrouped by a new batch size)."""
        loader = self._loader
        return continuing(
            rest,
            again,
            batch_size=loader.batch_size if regroup else None,
            drop_last=loader.drop_last,
            tracking=loader.num_workers > 0,
        )

    def _start_generation(self, stream: IssuedIndices, base_seed: int) -> WorkerGeneration:
        """A generation of the loader's (new) settings drawing from ``stream``; its workers start now."""
        loader = self._loader
        created = _clock()
        inner = loader._new_generation(stream, base_seed)
        return WorkerGeneration(
            inner, stream, loader.num_workers, loader._book.switches, created, timed=loader.num_workers > 0
        )

    def _switch_now(self, changes: dict[str, Any]) -> None:
        """Stop and start: the old workers are shut down, then the new ones continue what those had not delivered."""
        loader = self._loader
        old, stream = self._inner, self._stream
        base_seed = torch_compat.base_seed(old)
        again = stream.undelivered()
        loader._retire(old)
        if torch_compat.persistent_iterator(loader) is old:
            torch_compat.set_persistent_iterator(loader, None)
        loader._boundary()
        loader._apply(changes)
        generation = self._start_generation(self._continuing(stream.source, again, "batch_size" in changes), base_seed)
        self._deliver_from(generation)
        self._pair = (generation, None)

    def _begin_overlap(self, changes: dict[str, Any], in_flight: int, reserved: list[Any], rest: Iterator[Any]) -> None:
        """Cut the old generation's stream after ``reserved`` and start the new settings' workers on ``rest`` now."""
        loader = self._loader
        old = self._inner
        if self._tracking:
            self._stream.source = iter(reserved)
        else:  # without workers torch draws from the sampler's iterator itself
            torch_compat.set_index_stream(old, iter(reserved))
        if torch_compat.persistent_iterator(loader) is old:  # persistent old workers: retired at the handover, here
            torch_compat.set_persistent_iterator(loader, None)
        loader._apply(changes)
        stream = self._continuing(rest, (), "batch_size" in changes)
        base_seed = torch_compat.base_seed(old)
        if loader.num_workers:
            starting = WorkerGeneration(None, stream, loader.num_workers, loader._book.switches, _clock(), timed=True)
            starting.build(loader, base_seed)
            self._go = starting.go
        else:  # nothing to start: made at once
            starting = self._start_generation(stream, base_seed)
        self._overlap = Overlap(starting, self._batch + in_flight + len(reserved))
        self._careful = True
        loader._book.handover_due = True
        self._pair = (self._pair[0], starting)

    def _hand_over(self) -> None:
        """Retire the old generation (it has delivered all it was given) and deliver from the new one."""
        loader = self._loader
        overlap = self._overlap
        assert overlap is not None
        starting = overlap.starting
        try:
            starting.built()  # mostly done long ago; else the loop waits for it here (switch_s)
        except BaseException:
            self._overlap = None
            self._pair = (self._pair[0], None)
            loader._book.handover_due = False
            loader._retire(self._inner)  # it delivered all it had: leave no worker behind
            raise
        old = self._inner
        try:
            loader._retiring(old)
        finally:
            self._overlap = None
            self._deliver_from(starting)
            self._pair = (starting, None)
            loader._book.handover_due = False
            # The old workers are idle (all they fetched was delivered): the boundary's CPU reading finds them
            # alive and bills the old configuration their CPU; they are reaped after it, without the loop waiting.
            try:
                loader._boundary()
            finally:
                loader._reap_later(old)
