"""The epoch's position, kept across worker generations: the index stream torch's iterator draws from (what it
handed out and what was delivered), the sampler that hands it to torch, and regrouping by a new batch size."""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any


class IssuedIndices:
    """The index stream a torch iterator draws from: it records what it hands out until delivered.

    Args:
        source: the sampler's (or batch_sampler's) iterator for this epoch.
        again: indices to issue before the source's: those the previous workers never delivered.
        tracking: record what is handed out. Without workers nothing is fetched ahead (an index is
            taken as its batch is made, in ``next()``), so torch is then given the bare source: the
            loop's path costs nothing more than a stock loader's.
    """

    def __init__(self, source: Iterator[Any], again: tuple[Any, ...] = (), *, tracking: bool = True) -> None:
        if again and not tracking:
            source, again = itertools.chain(again, source), ()
        self.source = source
        self.again = deque(again)
        self.tracking = tracking
        self.issued: deque[Any] = deque()  # handed to the loader, not yet delivered, oldest first

    def __iter__(self) -> IssuedIndices:
        return self

    def __next__(self) -> Any:
        item = self.again.popleft() if self.again else next(self.source)
        self.issued.append(item)
        return item

    def delivered(self) -> None:
        """The oldest issued batch reached the loop (batches are delivered in order)."""
        if self.issued:
            self.issued.popleft()

    def undelivered(self) -> tuple[Any, ...]:
        """What must be issued again, in order: sent to the old workers but not delivered, then not yet sent."""
        return (*self.issued, *self.again)


class StreamHandoff:
    """Which stream the next torch iterator of a loader draws from, and which the latest one drew from."""

    __slots__ = ("last", "to_hand_out")

    def __init__(self) -> None:
        self.to_hand_out: IssuedIndices | None = None
        """While a switch makes a generation's iterator: the stream it continues (None: a new epoch's)."""
        self.last: IssuedIndices | None = None
        """The stream the latest iterator was given (a new epoch's first generation follows it)."""

    @contextlib.contextmanager
    def handing_out(self, stream: IssuedIndices) -> Iterator[None]:
        """Torch iterators made meanwhile continue ``stream`` instead of iterating the sampler anew."""
        self.to_hand_out = stream
        try:
            yield
        finally:
            self.to_hand_out = None


class IndexSampler:
    """What ``loader._index_sampler`` returns: the real one, whose iterator is recorded (same length)."""

    def __init__(self, loader: Any, real: Any) -> None:
        # Weak: torch's persistent iterator (held by the loader) holds this; a strong reference would
        # make a cycle, and a dropped loader would keep its workers until the garbage collector runs.
        self._loader = weakref.proxy(loader)
        self._real = real

    def __iter__(self) -> IssuedIndices:
        streams = self._loader._streams
        stream = streams.to_hand_out
        if stream is None:  # a new epoch: iterate the sampler exactly as torch would
            stream = IssuedIndices(iter(self._real), tracking=self._loader.num_workers > 0)
        streams.last = stream
        return stream if stream.tracking else stream.source

    def __len__(self) -> int:
        return len(self._real)


def continuing(
    rest: Iterator[Any], again: tuple[Any, ...], *, batch_size: int | None, drop_last: bool, tracking: bool
) -> IssuedIndices:
    """The next generation's index stream: ``again``, then ``rest``; regrouped into batches of ``batch_size``
    where that is given (a new batch size: the rest of the epoch, sample by sample, in batches of the new size)."""
    if batch_size is not None:
        indices = itertools.chain(itertools.chain.from_iterable(again), itertools.chain.from_iterable(rest))
        return IssuedIndices(regrouped(indices, batch_size, drop_last), tracking=tracking)
    return IssuedIndices(rest, again, tracking=tracking)


def regrouped(indices: Iterator[Any], size: int, drop_last: bool) -> Iterator[list[Any]]:
    """Group ``indices`` into lists of ``size`` as torch's BatchSampler does (the last one shorter unless dropped)."""
    while True:
        batch = list(itertools.islice(indices, size))
        if not batch or (drop_last and len(batch) < size):
            return
        yield batch
