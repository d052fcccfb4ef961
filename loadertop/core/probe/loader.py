"""``loadertop.DataLoader``: a drop-in ``torch.utils.data.DataLoader`` whose workers can change while a loop runs.

``for batch in loader:`` works as with torch's DataLoader (it *is* one: isinstance checks and
frameworks keep working). A request to change the worker count (``loader.switch(4)``, from
any thread) takes effect at the next batch boundary of a running loop: the old workers are
shut down, new ones started, and the loop receives exactly the batches a stock DataLoader
would have delivered, in the same order:

- The index stream (the sampler's or batch_sampler's iterator) is created once per epoch, as
  torch creates it, and handed from one worker generation to the next. Indices the old
  workers had been sent but whose batches were not yet delivered are issued again, first.
- A switch consumes no random numbers from the script's generators: the sampler is not
  re-iterated, and the new workers' base seed comes from a private generator seeded from
  the old one's, not from ``loader.generator`` or torch's global RNG.
- An ``IterableDataset`` stream (or ``in_order=False``) cannot be continued exactly in other
  workers: there the change waits for the next epoch (``LoaderStatus.deferred``).

Each batch is timed: ``load_s`` is the time blocked in ``next()``, ``step_s`` the time from
the previous ``next()`` returning to this call (whatever the loop did with the batch). The
loop's path gains two clock reads and, when someone observes, a small record and a call of
each observer (benchmarks/dropin_overhead.py measures it).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import IterableDataset

from loadertop.core.probe import torch_compat, tuning

_names = itertools.count(1)
_clock = time.perf_counter


class LoaderBatch(NamedTuple):
    """One batch as the loop received it (a named tuple: built on the loop's path, it must be cheap).

    Attributes:
        loader: the loader's name.
        epoch: 1-based: how many times the loop has iterated the loader.
        batch: 1-based position of the batch within the epoch.
        num_workers: workers of the generation that delivered it.
        samples: samples in the batch (the length of its first tensor).
        load_s: seconds blocked in ``next()`` waiting for the batch (a switch's time not included).
        step_s: seconds from the previous batch's ``next()`` returning to this ``next()`` call
            (the loop's own work with the previous batch); None for an epoch's first batch.
        time: wall-clock time (UNIX seconds) when the batch was handed to the loop.
        switch_s: seconds this ``next()`` spent switching workers before waiting for the batch
            (0 if none); ``step_s + switch_s + load_s`` is the whole time since the previous batch.
    """

    loader: str
    epoch: int
    batch: int
    num_workers: int
    samples: int
    load_s: float
    step_s: float | None
    time: float
    switch_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LoaderStatus:
    """Where a loader stands.

    Attributes:
        name: its name (``name=`` or its creation site ``file:line``).
        num_workers: the workers of the running generation (or of the next ``iter()``).
        pending: a requested worker count not yet applied.
        deferred: True when the pending change waits for the next epoch (IterableDataset, in_order=False).
        epoch: iterations started so far.
        switches: worker changes applied so far.
        worker_pids: the running generation's worker processes.
    """

    name: str
    num_workers: int
    pending: int | None
    deferred: bool
    epoch: int
    switches: int
    worker_pids: tuple[int, ...]


class CreationHook:
    """What a launcher does with every loader a script creates (see ``DataLoader.creation_hook``)."""

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The constructor's arguments by name (``torch.utils.data.DataLoader``'s), possibly changed."""
        return arguments

    def created(self, loader: DataLoader) -> None:
        """``loader`` is built."""


class DataLoader(torch.utils.data.DataLoader):
    """``torch.utils.data.DataLoader`` with the same arguments, plus ``name=``; see the module's docstring.

    Args:
        *args, **kwargs: as for ``torch.utils.data.DataLoader``; ``num_workers="auto"`` starts with 0 workers
            and tunes them while the loop runs (by ``loadertop run``'s tuner, else by one of its own).
        name: how the monitor names this loader (default: the ``file:line`` that created it).
    """

    creation_hook: CreationHook | None = None
    """Set by the launcher in a script it runs: sees (and may change) every loader's arguments."""

    def __init__(self, *args: Any, name: str | None = None, **kwargs: Any) -> None:
        torch_compat.install()
        hook = DataLoader.creation_hook
        bound = _TORCH_SIGNATURE.bind(self, *args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        self.auto_workers = arguments.get("num_workers") == "auto"
        """``num_workers="auto"``: it starts with 0 workers and is tuned (``loadertop.core.probe.tuning``)."""
        held = tuning.start_at_zero(arguments) if self.auto_workers else {}
        if hook is not None:
            arguments = hook.arguments(arguments)
        super().__init__(**arguments)
        site, self.made_by_package = _creation_site()
        self.site = site
        """Where it was made (``file:line``), as its default name."""
        self.name = name or site
        self._request: dict[str, Any] | None = None
        self._request_lock = threading.Lock()
        self._observers: list[Callable[[LoaderBatch], None]] = []
        self._boundary_hooks: list[Callable[[DataLoader], None]] = []
        self._retire_hooks: list[Callable[[DataLoader, tuple[int, ...]], None]] = []
        self.reaping_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        """Held while a switch shuts the old workers down and reaps them (a CPU clock's lock)."""
        self._stream_to_hand_out: _IssuedIndices | None = None
        self._last_stream: _IssuedIndices | None = None
        self._active: weakref.ref[_SwitchingIterator] | None = None  # weak: a dropped iterator ends its workers
        self._epoch = 0
        self._switches = 0
        # Settings torch allows only with workers: kept here while there are none, for when there are again.
        self._with_workers = {key: _current(self, key) for key in _WORKERS_ONLY}
        tuning.hold_for_workers(self, held)
        if hook is not None:
            hook.created(self)  # under loadertop run: the run's tuner tunes an "auto" training loader
        elif self.auto_workers:
            tuning.tune_by_itself(self)

    # -------------------------------------------------------------- public

    def switch(self, num_workers: int) -> None:
        """Change the worker count at the next batch boundary (or the next epoch; last request wins)."""
        self.reconfigure(num_workers=num_workers)

    def reconfigure(self, **settings: Any) -> None:
        """Change any of ``SETTINGS`` at the next batch boundary, as ``switch`` does the worker count.

        Requests merge, the last value of each setting winning. ``batch_size`` can change only
        where the loader batches by itself (``batch_size=``, no ``batch_sampler``): the rest of
        the epoch's indices, in the same order, are then grouped by the new size.

        Raises:
            ValueError: an unknown setting or a value torch's DataLoader would refuse.
        """
        for key, value in settings.items():
            _check_setting(self, key, value)
        with self._request_lock:
            self._request = {**(self._request or {}), **settings}
        if self._running() is None:  # no loop is running: the next iter() starts with it
            self._apply_between_epochs()

    def add_observer(self, observer: Callable[[LoaderBatch], None]) -> None:
        """Call ``observer`` with a ``LoaderBatch`` for every batch the loop receives (in the loop's thread)."""
        self._observers.append(observer)

    def add_boundary_hook(self, hook: Callable[[DataLoader], None]) -> None:
        """Call ``hook(loader)`` in the loop's thread where a configuration begins: before the first
        ``iter()``, and at each switch after the old workers are shut down and before new ones start
        (where a CPU reading bills each configuration its own workers)."""
        self._boundary_hooks.append(hook)

    def add_retire_hook(self, hook: Callable[[DataLoader, tuple[int, ...]], None]) -> None:
        """Call ``hook(loader, worker_pids)`` in the loop's thread just before a switch shuts a
        generation's workers down (their last memory and CPU can still be read)."""
        self._retire_hooks.append(hook)

    def _boundary(self) -> None:
        for hook in self._boundary_hooks:
            hook(self)

    def _retire(self, iterator: Any) -> None:
        """Shut ``iterator``'s workers down (and reap them) after telling the retire hooks."""
        if self._retire_hooks:
            pids = tuple(w.pid for w in getattr(iterator, "_workers", ()) if w.pid)
            for hook in self._retire_hooks:
                hook(self, pids)
        with self.reaping_lock:
            torch_compat.shutdown_workers(iterator)

    @property
    def continues_exactly(self) -> bool:
        """Whether a switch can continue the running epoch exactly (map-style data, batches in order)."""
        return not isinstance(self.dataset, IterableDataset) and getattr(self, "in_order", True)

    def status(self) -> LoaderStatus:
        """A frozen view of this loader."""
        active = self._running()
        pids = active.worker_pids() if active is not None else ()
        request = self._request
        pending = request.get("num_workers") if request else None
        return LoaderStatus(self.name, self.num_workers, pending,
                            pending is not None and not self.continues_exactly,
                            self._epoch, self._switches, pids)

    # ------------------------------------------------------ torch's hooks

    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]
        """Torch's index sampler, wrapped so that the indices handed to workers are known (map-style data)."""
        real = super()._index_sampler
        return _IndexSampler(self, real) if self.continues_exactly else real

    def __iter__(self) -> _SwitchingIterator:  # type: ignore[override]
        if self._epoch == 0:
            self._boundary()
        self._apply_between_epochs()
        self._epoch += 1
        inner = super().__iter__()
        iterator = _SwitchingIterator(self, inner, self._last_stream if self.continues_exactly else None)
        self._active = weakref.ref(iterator)
        return iterator

    def _running(self) -> _SwitchingIterator | None:
        """The iterator of the loop in progress, if any."""
        return self._active() if self._active is not None else None

    # ------------------------------------------------------------ switching

    def _take_request(self) -> dict[str, Any] | None:
        """The pending settings that differ from the current ones (None if none), cleared."""
        with self._request_lock:
            request, self._request = self._request, None
        if request is None:
            return None
        changes = {key: value for key, value in request.items()
                   if (self._with_workers[key] if key in _WORKERS_ONLY else _current(self, key)) != value}
        return changes or None

    def _apply_between_epochs(self) -> None:
        """No batch is in flight: a pending change just sets the settings for the next ``iter()``."""
        changes = self._take_request()
        if changes is None:
            return
        old = getattr(self, "_iterator", None)
        if old is not None:  # persistent workers of the old settings
            self._retire(old)
            self._iterator = None
        if self._epoch:
            self._boundary()
        self._apply(changes)

    def _apply(self, changes: dict[str, Any]) -> None:
        """Set the settings (between two worker generations)."""
        for key, value in changes.items():
            if key in _WORKERS_ONLY:
                self._with_workers[key] = value
        for key in SETTINGS:  # num_workers first: torch checks multiprocessing_context against it
            if key in _WORKERS_ONLY:
                value = self._with_workers[key] if self.num_workers > 0 else _WORKERS_ONLY[key]
                if _current(self, key) != value:
                    setattr(self, key, value)
            elif key == "batch_size" and key in changes:
                torch_compat.set_batch_size(self, changes[key])
            elif key == "persistent_workers" and key in changes:
                torch_compat.set_persistent_workers(self, changes[key])
            elif key in changes:
                setattr(self, key, changes[key])
        if self.num_workers > 0 and self.prefetch_factor is None:
            self.prefetch_factor = 2
        self._switches += 1

    def _new_generation(self, stream: _IssuedIndices, base_seed: int) -> Any:
        """A torch iterator for the current settings that continues ``stream``; no random number drawn."""
        self._stream_to_hand_out = stream
        script_generator = self.generator
        private = torch.Generator()
        private.manual_seed(base_seed)  # the new workers' base seed, from the old one: not the script's RNG
        try:
            self.generator = private
            # Not torch's global RNG state saved and restored around this: a sampler that draws as it
            # goes (an infinite one) is pulled for the new workers' first batches here, and must stay pulled.
            inner = self._get_iterator()
        finally:
            self.generator = script_generator
            self._stream_to_hand_out = None
        if self.persistent_workers and self.num_workers > 0:
            self._iterator = inner
        return inner


class _IssuedIndices:
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

    def __iter__(self) -> _IssuedIndices:
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


class _IndexSampler:
    """What ``loader._index_sampler`` returns: the real one, whose iterator is recorded (same length)."""

    def __init__(self, loader: DataLoader, real: Any) -> None:
        # Weak: torch's persistent iterator (held by the loader) holds this; a strong reference would
        # make a cycle, and a dropped loader would keep its workers until the garbage collector runs.
        self._loader = weakref.proxy(loader)
        self._real = real

    def __iter__(self) -> _IssuedIndices:
        stream = self._loader._stream_to_hand_out
        if stream is None:  # a new epoch: iterate the sampler exactly as torch would
            stream = _IssuedIndices(iter(self._real), tracking=self._loader.num_workers > 0)
        self._loader._last_stream = stream
        return stream if stream.tracking else stream.source

    def __len__(self) -> int:
        return len(self._real)


class _SwitchingIterator:
    """The iterator the loop holds; it keeps one epoch going across worker generations."""

    def __init__(self, loader: DataLoader, inner: Any, stream: _IssuedIndices | None) -> None:
        self._loader = loader
        self._inner = inner
        self._stream = stream
        self._tracking = stream is not None and stream.tracking  # indices handed to workers are followed
        self._batch = 0
        self._returned_at: float | None = None
        self._wall_offset = time.time() - _clock()  # wall-clock times from the cheap monotonic clock

    def __iter__(self) -> _SwitchingIterator:
        return self

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:  # torch's iterator attributes (``_workers``...) stay reachable
        if name == "_inner":  # not set yet (a copy made without __init__): no endless lookup
            raise AttributeError(name)
        return getattr(self._inner, name)

    def worker_pids(self) -> tuple[int, ...]:
        """Pids of the running generation's workers."""
        return tuple(w.pid for w in getattr(self._inner, "_workers", ()) if w.pid)

    def __next__(self) -> Any:
        loader = self._loader
        called = asked = _clock()
        if loader._request is not None and loader.continues_exactly:
            self._switch()
            called = _clock()  # the workers' restart is kept apart from the loop's step and this batch's load
        try:
            batch = next(self._inner)
        except StopIteration:
            if loader._running() is self:
                loader._active = None
            raise
        except Exception:
            if self._tracking:
                self._stream.delivered()  # a batch that raised was consumed, as with torch's iterator
            raise
        returned = _clock()
        if self._tracking:
            self._stream.delivered()
        self._batch += 1
        if loader._observers:
            record = LoaderBatch(loader.name, loader._epoch, self._batch, loader.num_workers, batch_len(batch),
                                 returned - called,
                                 None if self._returned_at is None else asked - self._returned_at,
                                 returned + self._wall_offset, called - asked)
            for observer in loader._observers:
                observer(record)
        self._returned_at = returned
        return batch

    def _switch(self) -> None:
        """Apply the pending settings now, between two batches."""
        loader = self._loader
        changes = loader._take_request()
        if changes is None or self._stream is None:
            return
        old, stream = self._inner, self._stream
        base_seed = int(getattr(old, "_base_seed", 0))
        again = stream.undelivered()
        loader._retire(old)
        if getattr(loader, "_iterator", None) is old:
            loader._iterator = None
        loader._boundary()
        loader._apply(changes)
        if "batch_size" in changes:  # the rest of the epoch, sample by sample, in batches of the new size
            rest = itertools.chain(itertools.chain.from_iterable(again), itertools.chain.from_iterable(stream.source))
            self._stream = _IssuedIndices(_batches(rest, loader.batch_size, loader.drop_last),
                                          tracking=loader.num_workers > 0)
        else:
            self._stream = _IssuedIndices(stream.source, again, tracking=loader.num_workers > 0)
        self._tracking = self._stream.tracking
        self._inner = loader._new_generation(self._stream, base_seed)


SETTINGS = ("num_workers", "batch_size", "pin_memory", "persistent_workers", "prefetch_factor",
            "multiprocessing_context", "timeout")
"""What ``DataLoader.reconfigure`` may change (torch's argument names), in the order they are applied."""

_WORKERS_ONLY = {"multiprocessing_context": None, "timeout": 0}
"""Settings torch refuses at 0 workers, with the value they then take."""


def _check_setting(loader: DataLoader, key: str, value: Any) -> None:
    """Raise ValueError, in torch's terms, for a setting ``reconfigure`` cannot apply."""
    def whole(minimum: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    if key not in SETTINGS:
        raise ValueError(f"cannot reconfigure {key!r}: a DataLoader's {', '.join(SETTINGS)} can change")
    if key == "num_workers" and not whole(0):
        raise ValueError(f"num_workers must be an integer >= 0, got {value!r}")
    if key == "batch_size":
        if not whole(1):
            raise ValueError(f"batch_size must be an integer >= 1, got {value!r}")
        if loader.batch_size is None:
            raise ValueError("this loader's batch_sampler makes its batches: its batch size cannot change")
    if key == "prefetch_factor" and value is not None and not whole(1):
        raise ValueError(f"prefetch_factor must be an integer >= 1 or None, got {value!r}")
    if key == "timeout" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
        raise ValueError(f"timeout must be a number of seconds >= 0, got {value!r}")
    if key in ("pin_memory", "persistent_workers") and not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    if key == "multiprocessing_context" and value is not None and not isinstance(value, str):
        raise ValueError(f"multiprocessing_context must be a start method's name or None, got {value!r}")


def _current(loader: DataLoader, key: str) -> Any:
    """A setting's value as ``reconfigure`` takes it (a multiprocessing context by its start method's name)."""
    value = getattr(loader, key)
    if key == "multiprocessing_context" and value is not None and not isinstance(value, str):
        return value.get_start_method()
    return value


def _batches(indices: Iterator[Any], size: int, drop_last: bool) -> Iterator[list[Any]]:
    """Group ``indices`` into lists of ``size`` as torch's BatchSampler does (the last one shorter unless dropped)."""
    while True:
        batch = list(itertools.islice(indices, size))
        if not batch or (drop_last and len(batch) < size):
            return
        yield batch


_Tensor = torch.Tensor


def _signature_with_name() -> inspect.Signature:
    """torch's ``DataLoader.__init__`` signature plus ``name=``: what frameworks that read the signature see.

    Lightning maps a loader's positional arguments to names by the signature of its ``__init__``
    (to re-create it with a DistributedSampler); ``(*args, name=None, **kwargs)`` would map the
    dataset to ``name``.
    """
    torch_signature = inspect.signature(torch.utils.data.DataLoader.__init__)
    name = inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
    return torch_signature.replace(parameters=[*torch_signature.parameters.values(), name])
_INSTALLED = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_TORCH_SIGNATURE = inspect.signature(torch.utils.data.DataLoader.__init__)
DataLoader.__init__.__signature__ = _signature_with_name()  # type: ignore[attr-defined]


def batch_len(value: Any) -> int:
    """Samples in a batch: the length of its first tensor (in a tuple, list or dict), else 1."""
    kind = type(value)
    if (kind is list or kind is tuple) and value:  # the common (inputs, targets) batch, without the general walk
        first = value[0]
        if type(first) is _Tensor:
            shape = first.shape
            return shape[0] if shape else 1
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.ndim else 1
    if isinstance(value, (tuple, list)) and value:
        return batch_len(value[0])
    if isinstance(value, dict) and value:
        return batch_len(next(iter(value.values())))
    return 1


def _creation_site() -> tuple[str, bool]:
    """``file:line`` of the user's code that created the loader, outside loadertop and any installed
    package (torch, or a framework that makes the loader for the user: Lightning's hooks wrap it, the
    Hugging Face Trainer and accelerate make their own); and whether an installed package made it."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    frame = sys._getframe(2)
    by_package: bool | None = None
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(here) and f"{os.sep}torch{os.sep}" not in path:
            if not any(part in path for part in _INSTALLED) and not path.startswith("<"):
                return f"{os.path.basename(path)}:{frame.f_lineno}", bool(by_package)
            if by_package is None:
                by_package = True  # the first frame past loadertop and torch is a package's
        frame = frame.f_back
    return f"loader {next(_names)}", bool(by_package)
