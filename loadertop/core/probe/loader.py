"""``loadertop.DataLoader``: a drop-in ``torch.utils.data.DataLoader`` whose workers can change while a loop runs.

``for batch in loader:`` works as with torch's DataLoader (it *is* one: isinstance checks and
frameworks keep working). A request to change the worker count (``loader.switch(4)``, from
any thread) takes effect at a batch boundary of a running loop, and the loop receives exactly
the batches a stock DataLoader would have delivered, in the same order:

- The index stream (the sampler's or batch_sampler's iterator) is created once per epoch, as
  torch creates it, and handed from one worker generation to the next.
- A switch consumes no random numbers from the script's generators: the sampler is not
  re-iterated, and the new workers' base seed comes from a private generator seeded from
  the old one's, not from ``loader.generator`` or torch's global RNG.
- Each ``iter()`` draws what the configured loader's draws, whatever count runs: a persistent
  loader's workers' base seed only at its first (``_epoch_iterator``).
- An ``IterableDataset`` stream (or ``in_order=False``) cannot be continued exactly in other
  workers: there the change waits for the next epoch (``LoaderStatus.deferred``).

A switch is *overlapped* by default: at the request the old generation's index stream is cut
after the batches it has in flight plus R more, and the new generation is started on the
indices after those, by a thread of the loader's once the loop is back in its step (starting
processes takes long: a fork copies the process's page tables holding the GIL, a spawn pickles
the dataset); the old workers keep delivering meanwhile. When the old generation has delivered
its last batch the loop's next ``next()`` hands over (the retire and boundary hooks run there)
and goes on with the new one, whose first batches are usually ready by then; the old workers,
idle, are reaped by another thread. The loop stalls for about the handover, not for the
workers' start-up (plus, with fork, what forking a large process costs any thread that needs
the GIL or touches memory meanwhile). R is chosen so that the old generation delivers for
about the new one's start-up: this loader's own measured start-up of its latest generation of
that size (or the nearest; ``DEFAULT_STARTUP_S`` before any) over its recent batch interval,
less the batches in flight, at most ``MAX_OVERLAP_BATCHES``. A request made during an overlap
waits for its handover. Where the epoch has nothing left for a new generation, with
``overlap=False`` (the ``overlap`` attribute, or ``reconfigure(..., overlap=False)``), or for a
loader with a boundary hook written for switches that apply at the next batch (added without
``at_handover=True``), a switch shuts the old workers down first and then starts the new ones;
indices the old workers had been sent but whose batches were not yet delivered are then issued
again, first.

Each batch is timed: ``load_s`` is the time blocked in ``next()``, ``step_s`` the time from
the previous ``next()`` returning to this call (whatever the loop did with the batch). The
loop's path gains two clock reads and, when someone observes, a small record and a call of
each observer (benchmarks/dropin_overhead.py measures it; benchmarks/switch_stall.py the
stall at a switch).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os
import sys
import threading
import time
import warnings
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
            An overlapped switch spends it twice: at the request (starting the new workers) and
            at the handover (retiring the old ones).
        generation: the configuration that delivered it, numbered as ``LoaderStatus.switches``
            counts them (0: the loader's first settings); it changes where a switch hands over.
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
    generation: int = 0


@dataclass(frozen=True, slots=True)
class LoaderStatus:
    """Where a loader stands.

    Attributes:
        name: its name (``name=`` or its creation site ``file:line``).
        num_workers: the workers of the generation delivering the batches (or of the next ``iter()``).
        pending: a requested worker count not yet delivering: during an overlapped switch, the
            starting generation's until the handover.
        deferred: True when the pending change waits for the next epoch (IterableDataset, in_order=False).
        epoch: iterations started so far.
        switches: configuration changes handed over so far.
        worker_pids: the worker processes of the generation delivering, then (during an overlapped
            switch) those of the one starting: every worker process the loader has now.
        starting_pids: which of ``worker_pids`` belong to the starting generation (empty but
            during an overlapped switch).
    """

    name: str
    num_workers: int
    pending: int | None
    deferred: bool
    epoch: int
    switches: int
    worker_pids: tuple[int, ...]
    starting_pids: tuple[int, ...] = ()


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

    overlap: bool = True
    """Whether a switch starts the new workers while the old ones still deliver (see the module's
    docstring); set it on a loader, or on the class, to switch by stopping and starting instead.
    A boundary hook added without ``at_handover=True`` makes the loader stop and start anyway."""

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
        self._request_overlap: bool | None = None  # the request's own overlap= (None: the loader's)
        self._request_lock = threading.Lock()
        self._observers: list[Callable[[LoaderBatch], None]] = []
        self._boundary_hooks: list[Callable[[DataLoader], None]] = []
        self._stop_start_only = False  # a boundary hook expects switches to apply at the next batch
        self._retire_hooks: list[Callable[[DataLoader, tuple[int, ...]], None]] = []
        self.reaping_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        """Held while a switch shuts the old workers down and reaps them (a CPU clock's lock; after an
        overlapped switch that is done in a thread of the loader's, so the lock must be a thread-safe one)."""
        self._stream_to_hand_out: _IssuedIndices | None = None
        self._last_stream: _IssuedIndices | None = None
        self._active: weakref.ref[_SwitchingIterator] | None = None  # weak: a dropped iterator ends its workers
        self._epoch = 0
        self._switches = 0
        self._startup_s: dict[int, float] = {}  # worker count -> its generations' measured start-up
        self._handover_due = False  # an overlapped switch began and its boundary hooks have not run yet
        self._builder: threading.Thread | None = None  # the thread starting an overlapped switch's new workers
        self._reaper: threading.Thread | None = None  # the thread reaping an overlapped switch's old workers
        self._interval_s = 0.0  # the loop's time between batches when last measured (0: never)
        self._seed_drawn = False  # a persistent setting's one draw of its workers' base seed is done
        # The latest generation's workers' base seed, seeding a private generator for the next (not torch's _base_seed).
        self._generation_seed = 0
        # Settings torch allows only with workers: kept here while there are none, for when there are again.
        self._with_workers = {key: _current(self, key) for key in _WORKERS_ONLY}
        tuning.hold_for_workers(self, held)
        if hook is not None:
            hook.created(self)  # under loadertop run: the run's tuner tunes an "auto" training loader
        elif self.auto_workers:
            tuning.tune_by_itself(self)

    def check_worker_number_rationality(self) -> None:
        """torch's warning that this loader makes more workers than there are cores, counting the cores this
        process may use: a cgroup CPU quota (a container's ``--cpus``) too, which torch's count of the CPU
        affinity misses. The message begins as torch's does, so that filters written for it still apply."""
        from loadertop.core.measure.limits import current_limits, usable_cores_phrase

        if not self.num_workers:
            return
        limits = current_limits()
        if self.num_workers > limits.cores:
            warnings.warn(
                f"This DataLoader will create {self.num_workers} worker processes in total, more than the "
                f"{usable_cores_phrase(limits.cores, limits)} this process may use: workers past the cores compete "
                "for CPU and can make loading slower; lower num_workers if so (loadertop sweep measures it)",
                stacklevel=2)

    # -------------------------------------------------------------- public

    def switch(self, num_workers: int, *, overlap: bool | None = None) -> None:
        """Change the worker count from the next batch boundary on (or the next epoch; last request wins).

        Args:
            num_workers: the new worker count.
            overlap: start the new workers while the old ones deliver (default: the loader's ``overlap``).
        """
        self.reconfigure(num_workers=num_workers, overlap=overlap)

    def reconfigure(self, *, overlap: bool | None = None, **settings: Any) -> None:
        """Change any of ``SETTINGS`` from the next batch boundary on, as ``switch`` does the worker count.

        Requests merge, the last value of each setting winning. ``batch_size`` can change only
        where the loader batches by itself (``batch_size=``, no ``batch_sampler``): the rest of
        the epoch's indices, in the same order, are then grouped by the new size (with an
        overlapped switch, those after the old workers' last batch).

        Args:
            overlap: start the new workers while the old ones deliver, handing over a few batches
                later (default: the loader's ``overlap``); False: stop the old ones, then start.
            **settings: torch's argument names and their new values.

        Raises:
            ValueError: an unknown setting or a value torch's DataLoader would refuse.
        """
        for key, value in settings.items():
            _check_setting(self, key, value)
        with self._request_lock:
            self._request = {**(self._request or {}), **settings}
            if overlap is not None:
                self._request_overlap = bool(overlap)
        if self._running() is None:  # no loop is running: the next iter() starts with it
            self._apply_between_epochs()

    def add_observer(self, observer: Callable[[LoaderBatch], None]) -> None:
        """Call ``observer`` with a ``LoaderBatch`` for every batch the loop receives (in the loop's thread)."""
        self._observers.append(observer)

    def add_boundary_hook(self, hook: Callable[[DataLoader], None], *, at_handover: bool = False) -> None:
        """Call ``hook(loader)`` in the loop's thread where a configuration begins: before the first
        ``iter()``, and at each switch before the new configuration's first batch reaches the loop
        (where a CPU reading splits the configurations).

        Without overlap the hook runs after the old workers are shut down and reaped and before the
        new ones start: each configuration is billed its own workers. With overlap it runs at the
        handover, where the batches split too (``LoaderBatch.generation``): the old workers, idle
        (all they fetched was delivered), are still alive and reaped just after it in a thread
        holding ``reaping_lock`` (the little CPU they spend exiting goes to the new configuration);
        the new workers have been running since the request, and the CPU they spent starting and
        fetching ahead (their first batches) is billed to the configuration before, as the old
        workers' start was billed to theirs.

        Args:
            hook: called with the loader.
            at_handover: the hook (and its caller) takes a switch's configuration to begin at the
                handover, batches delivered meanwhile still the old one's (``LoaderBatch.num_workers``,
                ``generation``). A hook added without it was written for switches that apply at the
                next batch: every switch of this loader then stops and starts, whatever ``overlap`` says.
        """
        self._boundary_hooks.append(hook)
        if not at_handover:
            self._stop_start_only = True

    def add_retire_hook(self, hook: Callable[[DataLoader, tuple[int, ...]], None]) -> None:
        """Call ``hook(loader, worker_pids)`` in the loop's thread just before a switch shuts a
        generation's workers down (their last memory and CPU can still be read); with overlap, at the
        handover, just before the boundary hooks (the workers are shut down after those)."""
        self._retire_hooks.append(hook)

    def _boundary(self) -> None:
        for hook in self._boundary_hooks:
            hook(self)

    def _retire(self, iterator: Any) -> None:
        """Shut ``iterator``'s workers down (and reap them) after telling the retire hooks."""
        self._retiring(iterator)
        with self.reaping_lock:
            torch_compat.shutdown_workers(iterator)

    def _retiring(self, iterator: Any) -> None:
        """Tell the retire hooks that ``iterator``'s workers are about to be shut down."""
        if self._retire_hooks:
            pids = tuple(w.pid for w in torch_compat.worker_processes(iterator) if w.pid)
            for hook in self._retire_hooks:
                hook(self, pids)

    def _reap_later(self, iterator: Any) -> None:
        """Shut ``iterator``'s idle workers down and reap them in a thread: their exit takes tens of ms each,
        which the loop need not wait for (CPU readings wait for the reaping lock instead)."""
        if not torch_compat.worker_processes(iterator):
            return

        def reap() -> None:
            with self.reaping_lock:
                torch_compat.shutdown_workers(iterator)

        self._await_reaper()
        self._reaper = threading.Thread(target=reap, name=f"loadertop-reaper-{self.name}", daemon=True)
        self._reaper.start()

    def _await_reaper(self) -> None:
        """Wait until the workers an overlapped switch retired are reaped."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.join()

    @property
    def request_waiting(self) -> bool:
        """A change was asked for and the loader has not taken it yet (requests made meanwhile merge with it)."""
        return self._request is not None

    @property
    def continues_exactly(self) -> bool:
        """Whether a switch can continue the running epoch exactly (map-style data, batches in order)."""
        return not isinstance(self.dataset, IterableDataset) and getattr(self, "in_order", True)

    def status(self) -> LoaderStatus:
        """A frozen view of this loader (callable from any thread)."""
        active = self._running()
        request = self._request
        pending = request.get("num_workers") if request else None
        restarts = pending is not None and not self.continues_exactly
        if active is None:
            return LoaderStatus(self.name, self.num_workers, pending, restarts, self._epoch, self._switches, ())
        delivering, starting = active.generations()
        if starting is None:
            return LoaderStatus(self.name, self.num_workers, pending, restarts, self._epoch, self._switches,
                                delivering.pids())
        # Mid-overlap: the loader's settings are already the starting generation's; it is pending until the handover.
        new_pids = starting.pids()
        return LoaderStatus(self.name, delivering.num_workers, starting.num_workers if pending is None else pending,
                            False, self._epoch, self._switches - 1, delivering.pids() + new_pids, new_pids)

    # ------------------------------------------------------ torch's hooks

    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]
        """Torch's index sampler, wrapped so that the indices handed to workers are known (map-style data)."""
        real = torch_compat.index_sampler(super())
        return _IndexSampler(self, real) if self.continues_exactly else real

    def __iter__(self) -> _SwitchingIterator:  # type: ignore[override]
        if self._epoch == 0:
            self._boundary()
        previous = self._running()
        if previous is not None:  # a loop left mid-epoch: a switch it had begun hands over now
            previous.finish_switch()
        if self._handover_due:  # ... or its iterator was dropped (torch shut both generations' workers down)
            self._await_builder()
            self._handover_due = False
            self._boundary()
        self._apply_between_epochs()
        self._epoch += 1
        before = torch_compat.persistent_iterator(self)
        created = _clock()
        inner = self._epoch_iterator()
        fresh = self.num_workers > 0 and inner is not before  # new workers (not persistent ones going on)
        generation = _Generation(inner, self._last_stream if self.continues_exactly else None, self.num_workers,
                                 self._switches, created, timed=fresh)
        iterator = _SwitchingIterator(self, generation)
        self._active = weakref.ref(iterator)
        return iterator

    def _epoch_iterator(self) -> Any:
        """Torch's iterator for a new epoch, drawing from the script's RNG what the loader it configured draws.

        A stock loader draws its workers' base seed (from ``generator``, else torch's global RNG) at every
        ``iter()``, but a persistent one only at its first: its workers go on. Whatever count runs now (0
        workers under a persistent setting: an iterator made each epoch; workers started anew after a
        switch), the draws are the persistent setting's; the sampler is iterated each epoch either way.
        """
        reused = self.persistent_workers and self.num_workers > 0 and torch_compat.persistent_iterator(self) is not None
        draws = not (self.persistent_workers and self._seed_drawn)
        self._seed_drawn = bool(self.persistent_workers)
        if not draws and not reused:  # a fresh iterator, which would draw the seed: from a private generator
            with self._private_generator(self._generation_seed):
                inner = super().__iter__()
        else:
            if draws and reused:  # the persistent setting is new, its workers are not: draw as a first iter() does
                torch_compat.draw_base_seed(self.generator)
            inner = super().__iter__()
        self._generation_seed = torch_compat.base_seed(inner)
        return inner

    def _running(self) -> _SwitchingIterator | None:
        """The iterator of the loop in progress, if any."""
        return self._active() if self._active is not None else None

    # ------------------------------------------------------------ switching

    def _take_request(self) -> dict[str, Any] | None:
        """The pending settings that differ from the current ones (None if none), cleared."""
        return self._take_request_and_overlap()[0]

    def _take_request_and_overlap(self) -> tuple[dict[str, Any] | None, bool]:
        """The pending settings that differ from the current ones (None if none), and whether to
        overlap the switch; both cleared."""
        with self._request_lock:
            request, self._request = self._request, None
            overlap, self._request_overlap = self._request_overlap, None
        overlap = (self.overlap if overlap is None else overlap) and not self._stop_start_only
        if request is None:
            return None, overlap
        changes = {key: value for key, value in request.items()
                   if (self._with_workers[key] if key in _WORKERS_ONLY else _current(self, key)) != value}
        return changes or None, overlap

    def _await_builder(self) -> None:
        """Let a thread still starting an abandoned overlap's workers finish (it reads the settings)."""
        builder, self._builder = self._builder, None
        if builder is not None:
            builder.join()

    def _apply_between_epochs(self) -> None:
        """No batch is in flight: a pending change just sets the settings for the next ``iter()``."""
        self._await_builder()
        changes = self._take_request()
        if changes is None:
            return
        old = torch_compat.persistent_iterator(self)
        if old is not None:  # persistent workers of the old settings
            self._retire(old)
            torch_compat.set_persistent_iterator(self, None)
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

    @contextlib.contextmanager
    def _private_generator(self, base_seed: int) -> Iterator[None]:
        """Torch's iterators made meanwhile draw their workers' base seed from a generator seeded from
        ``base_seed`` (the previous generation's), not from the script's ``generator`` or global RNG."""
        script_generator = self.generator
        private = torch.Generator()
        private.manual_seed(base_seed)
        self.generator = private
        try:
            yield
        finally:
            self.generator = script_generator

    def _new_generation(self, stream: _IssuedIndices, base_seed: int) -> Any:
        """A torch iterator for the current settings that continues ``stream``; no random number drawn."""
        self._stream_to_hand_out = stream
        try:
            # Not torch's global RNG state saved and restored around this: a sampler that draws as it
            # goes (an infinite one) is pulled for the new workers' first batches here, and must stay pulled.
            with self._private_generator(base_seed):
                inner = torch_compat.new_iterator(self)
        finally:
            self._stream_to_hand_out = None
        self._generation_seed = torch_compat.base_seed(inner)
        if self.persistent_workers and self.num_workers > 0:
            torch_compat.set_persistent_iterator(self, inner)
        return inner

    def expected_startup_s(self, num_workers: int) -> float:
        """How long ``num_workers`` new workers are expected to take to deliver their first batch: this
        loader's latest measurement for that count (else for the nearest count measured, else
        ``DEFAULT_STARTUP_S``); 0 for no workers."""
        if num_workers == 0:
            return 0.0
        known = self._startup_s
        if num_workers in known:
            return known[num_workers]
        if known:
            return known[min(known, key=lambda count: (abs(count - num_workers), -count))]
        return DEFAULT_STARTUP_S

    def _overlap_batches(self, num_workers: int, in_flight: int, interval_s: float) -> int:
        """R: the batches an old generation delivers beyond its ``in_flight`` ones while ``num_workers`` new
        workers start (from this loader's measured start-ups and the loop's batch interval)."""
        if num_workers == 0:  # no processes to start: hand over once the batches already fetched are delivered
            return 0
        return overlap_batches(self.expected_startup_s(num_workers), interval_s, in_flight)

    def _note_startup(self, num_workers: int, measured_s: float) -> None:
        """A generation of ``num_workers`` had its first batch ready ``measured_s`` after it was asked for."""
        self._startup_s[num_workers] = measured_s


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


class _Generation:
    """One worker generation: a torch iterator over the epoch's index stream, with its settings' worker count."""

    __slots__ = ("builder", "created_at", "error", "go", "inner", "num_workers", "number", "ready_at", "stop", "stream",
                 "timed")

    def __init__(self, inner: Any, stream: _IssuedIndices | None, num_workers: int, number: int,
                 created_at: float, *, timed: bool) -> None:
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

    def build(self, loader: DataLoader, base_seed: int) -> None:
        """Make the torch iterator in a thread of its own, and wait there for its first batch (when it is
        ready is its start-up): starting processes takes long (a fork copies the process's page tables, a
        spawn pickles the dataset) and the loop goes on meanwhile. The forks begin when the loop is back in
        its step (``go``): a fork holds the GIL, a step mostly does not need it."""
        device = torch_compat.current_device_index() if loader.pin_memory else None

        def make() -> None:
            try:
                self.go.wait(_GO_WAIT_S)
                if device is not None:  # the device is per thread: pin where the loop's thread would
                    torch_compat.set_device_index(device)
                self.inner = loader._new_generation(self.stream, base_seed)
                if torch_compat.wait_for_first_batch(self.inner, self.stop):
                    self.ready_at = _clock()
            except BaseException as exc:  # noqa: BLE001 - raised in the loop's thread, at the handover
                self.error = exc

        self.builder = loader._builder = threading.Thread(target=make, name=f"loadertop-workers-{loader.name}",
                                                          daemon=True)
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


class _SwitchingIterator:
    """The iterator the loop holds; it keeps one epoch going across worker generations."""

    def __init__(self, loader: DataLoader, generation: _Generation) -> None:
        self._loader = loader
        self._wall_offset = time.time() - _clock()  # wall-clock times from the cheap monotonic clock
        self._starting: _Generation | None = None  # an overlapped switch's new generation, until the handover
        self._go: threading.Event | None = None  # to set once this next() returns: the new generation may start
        self._deliver_from(generation)
        self._pair: tuple[_Generation, _Generation | None] = (generation, None)  # for other threads, set at once
        self._handover_at = 0  # during an overlap: the batch count at which the old generation has delivered all
        self._since: tuple[float, int] | None = None  # the delivering generation's first batch: when, and its count
        self._batch = 0
        self._returned_at: float | None = None

    def _deliver_from(self, generation: _Generation) -> None:
        self._inner = generation.inner
        self._stream = generation.stream
        self._tracking = generation.stream is not None and generation.stream.tracking  # indices handed out are followed
        self._workers_now = generation.num_workers
        self._number = generation.number
        self._first_at: float | None = generation.created_at  # until its first batch
        self._timed = generation.timed
        self._ready_at = generation.ready_at
        self._careful = True  # next() takes the careful path (a first batch, an overlap, a request) until False
        # What the plain path reads, in one attribute (this class's __getattr__ makes each lookup on it slow).
        self._plain = (self._inner, self._stream if self._tracking else None, self._loader._observers,
                       self._workers_now, self._number, self._wall_offset)

    def __iter__(self) -> _SwitchingIterator:
        return self

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:  # torch's iterator attributes (``_workers``...) stay reachable
        if name == "_inner":  # not set yet (a copy made without __init__): no endless lookup
            raise AttributeError(name)
        return getattr(self._inner, name)

    def generations(self) -> tuple[_Generation, _Generation | None]:
        """The generation delivering and the one starting (None but during an overlapped switch)."""
        return self._pair

    def worker_pids(self) -> tuple[int, ...]:
        """Pids of the delivering generation's workers, then of the starting one's (during an overlapped switch)."""
        delivering, starting = self._pair
        return delivering.pids() + starting.pids() if starting is not None else delivering.pids()

    def finish_switch(self) -> None:
        """Hand an overlapped switch over now (the loop left the epoch before it did)."""
        starting = self._starting
        if starting is not None:
            starting.go.set()
            starting.stop.set()  # its first batch belongs to the abandoned epoch: no need to wait for it
            self._hand_over()

    def _shutdown_workers(self) -> None:
        """Shut every generation's workers down: torch's iterator method of that name, which this iterator stands
        in for (``torch_compat.shutdown_workers``), done for both generations of an overlap."""
        self._loader._await_reaper()
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
        if self._careful or self._loader._request is not None:
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
            record = _new_tuple(LoaderBatch, (self._loader.name, self._loader._epoch, count, workers_now,
                                              batch_len(batch), returned - asked,
                                              None if previous is None else asked - previous,
                                              returned + wall_offset, 0.0, number))
            for observer in observers:
                observer(record)
        self._returned_at = returned
        return batch

    def _ended(self) -> None:
        """The epoch is over (the delivering generation raised StopIteration, no new one to go on)."""
        if self._loader._running() is self:
            self._loader._active = None

    def _failed(self) -> None:
        """The delivering generation raised for a batch (a dataset's error): that batch was consumed."""
        if self._tracking:
            self._stream.delivered()  # as with torch's iterator
        self._handover_at -= 1  # counted as delivered, though not in self._batch
        if self._go is not None:
            self._go.set()
            self._go = None

    def _next_careful(self, asked: float) -> Any:
        """``__next__`` where something is afoot: a generation's first batch, an overlap, a request waiting."""
        loader = self._loader
        called = asked
        if self._starting is not None:
            if self._batch >= self._handover_at:  # the old generation delivered its last batch: the new one takes over
                self._hand_over()
                called = _clock()  # the handover is kept apart from the loop's step and this batch's load
        elif loader._request is not None and loader.continues_exactly:
            self._switch()
            called = _clock()  # the workers' (re)start is kept apart from the loop's step and this batch's load
        try:
            batch = next(self._inner)
        except StopIteration:
            if self._starting is not None:  # the old generation ended sooner than counted: the new one goes on
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
                loader._note_startup(self._workers_now, (self._ready_at or returned) - self._first_at)
            self._first_at = None
            self._since = (returned, self._batch)  # the batch interval is measured from here on
        if loader._observers:
            record = LoaderBatch(loader.name, loader._epoch, self._batch, self._workers_now, batch_len(batch), load_s,
                                 step_s, returned + self._wall_offset, called - asked, self._number)
            for observer in loader._observers:
                observer(record)
        self._returned_at = returned
        self._careful = self._starting is not None or self._go is not None or self._first_at is not None
        return batch

    def _switch(self) -> None:
        """Apply the pending settings now, between two batches: overlapped where it can be, else stop and start."""
        loader = self._loader
        changes, overlap = loader._take_request_and_overlap()
        if changes is None or self._stream is None:
            return
        stream = self._stream
        if overlap:
            in_flight = len(stream.issued) if self._tracking else 0
            reserve = loader._overlap_batches(changes.get("num_workers", loader.num_workers), in_flight,
                                              self._interval_s())
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
        since, returned = self._since, self._returned_at
        if since is not None and returned is not None and self._batch > since[1]:
            self._loader._interval_s = (returned - since[0]) / (self._batch - since[1])
        return self._loader._interval_s

    def _continuing(self, rest: Iterator[Any], again: tuple[Any, ...], regroup: bool) -> _IssuedIndices:
        """The next generation's index stream: ``again``, then ``rest`` (regrouped by a new batch size)."""
        loader = self._loader
        if regroup:  # the rest of the epoch, sample by sample, in batches of the new size
            indices = itertools.chain(itertools.chain.from_iterable(again), itertools.chain.from_iterable(rest))
            regrouped = _batches(indices, loader.batch_size, loader.drop_last)
            return _IssuedIndices(regrouped, tracking=loader.num_workers > 0)
        return _IssuedIndices(rest, again, tracking=loader.num_workers > 0)

    def _start_generation(self, stream: _IssuedIndices, base_seed: int) -> _Generation:
        """A generation of the loader's (new) settings drawing from ``stream``; its workers start now."""
        loader = self._loader
        created = _clock()
        inner = loader._new_generation(stream, base_seed)
        return _Generation(inner, stream, loader.num_workers, loader._switches, created, timed=loader.num_workers > 0)

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
            starting = _Generation(None, stream, loader.num_workers, loader._switches, _clock(), timed=True)
            starting.build(loader, base_seed)
            self._go = starting.go
        else:  # nothing to start: made at once
            starting = self._start_generation(stream, base_seed)
        self._handover_at = self._batch + in_flight + len(reserved)
        self._starting = starting
        self._careful = True
        loader._handover_due = True
        self._pair = (self._pair[0], starting)

    def _hand_over(self) -> None:
        """Retire the old generation (it has delivered all it was given) and deliver from the new one."""
        loader = self._loader
        starting = self._starting
        assert starting is not None
        try:
            starting.built()  # mostly done long ago; else the loop waits for it here (switch_s)
        except BaseException:
            self._starting = None
            self._pair = (self._pair[0], None)
            loader._handover_due = False
            loader._retire(self._inner)  # it delivered all it had: leave no worker behind
            raise
        old = self._inner
        try:
            loader._retiring(old)
        finally:
            self._starting = None
            self._deliver_from(starting)
            self._pair = (starting, None)
            loader._handover_due = False
            # The old workers are idle (all they fetched was delivered): the boundary's CPU reading finds them
            # alive and bills the old configuration their CPU; they are reaped after it, without the loop waiting.
            try:
                loader._boundary()
            finally:
                loader._reap_later(old)


DEFAULT_STARTUP_S = 0.3
"""The start-up a loader assumes for new workers before it has measured any of its own (forked workers
start in tens to hundreds of ms; an overlap longer than needed only delays the switch)."""

MAX_OVERLAP_BATCHES = 256
"""The most batches an old generation delivers beyond those it has in flight while a new one starts."""

_OVERLAP_NO_INTERVAL = 4
"""Batches an overlap lasts (in flight included) before the loop's batch interval is known."""

_OVERLAP_MARGIN = 1.25
"""Overlap this much longer than the expected start-up: a handover that waits stalls the loop."""

_GO_WAIT_S = 1.0
"""The longest a new generation's workers wait for the loop to be back in its step before they start."""


def overlap_batches(startup_s: float, interval_s: float, in_flight: int) -> int:
    """R: how many batches an old generation delivers beyond its ``in_flight`` ones so that, at one batch
    each ``interval_s`` (0: unknown), it keeps the loop busy for about ``startup_s`` while a new one starts."""
    wanted = math.ceil(_OVERLAP_MARGIN * startup_s / interval_s) if interval_s > 0 else _OVERLAP_NO_INTERVAL
    return max(0, min(wanted - in_flight, MAX_OVERLAP_BATCHES))


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
_new_tuple = tuple.__new__  # a LoaderBatch made without its Python-level __new__ (on the loop's path)


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
