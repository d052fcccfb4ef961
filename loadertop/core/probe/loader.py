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

``DataLoader`` here is the public class; each stage is a module of ``loadertop.core.probe`` whose state is one
object the loader holds:

- ``loader_settings``: what ``reconfigure`` may change and accepts, what torch refuses at 0 workers
  (``LoaderSettings``), the request waiting (``PendingRequest``);
- ``index_stream``: the epoch's position across generations (``IssuedIndices``, ``IndexSampler``,
  ``StreamHandoff``);
- ``worker_seeds``: the base seeds each ``iter()`` and each switch draw (``WorkerSeeds``);
- ``worker_generation``: one generation's torch iterator, made by a thread for an overlap (``WorkerGeneration``);
- ``worker_threads``: the builder and reaper threads and the reaping lock (``WorkerThreads``);
- ``overlap_plan``: R, from the measured start-ups and the batch interval (``StartupHistory``);
- ``loader_hooks``: observers, boundary and retire hooks (``LoaderHooks``);
- ``epoch_book``: epochs, switches, the loop running (``EpochBook``);
- ``epoch_iterator``: the iterator the loop holds, which times each batch (``SwitchingIterator``), and
  ``handover``: its switch, stop and start or overlapped;
- ``loader_reports``: what it reports (``LoaderBatch``, ``LoaderStatus``, ``batch_len``).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import IterableDataset

from loadertop.core.probe import torch_compat, tuning
from loadertop.core.probe.epoch_book import EpochBook
from loadertop.core.probe.epoch_iterator import SwitchingIterator
from loadertop.core.probe.index_stream import IndexSampler, IssuedIndices, StreamHandoff
from loadertop.core.probe.loader_hooks import LoaderHooks
from loadertop.core.probe.loader_reports import LoaderBatch, LoaderStatus, batch_len
from loadertop.core.probe.loader_settings import SETTINGS, LoaderSettings, PendingRequest, check_setting
from loadertop.core.probe.overlap_plan import DEFAULT_STARTUP_S, MAX_OVERLAP_BATCHES, StartupHistory, overlap_batches
from loadertop.core.probe.stages import BatchTimer, LoaderStages
from loadertop.core.probe.worker_generation import WorkerGeneration
from loadertop.core.probe.worker_seeds import WorkerSeeds
from loadertop.core.probe.worker_threads import WorkerThreads
from loadertop.core.protocol.stages import StageFigures

__all__ = [
    "DEFAULT_STARTUP_S",
    "MAX_OVERLAP_BATCHES",
    "SETTINGS",
    "CreationHook",
    "DataLoader",
    "LoaderBatch",
    "LoaderStatus",
    "batch_len",
    "overlap_batches",
]

_names = itertools.count(1)
_clock = time.perf_counter


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

    time_stages: bool = True
    """Whether each sample's stages are timed in the workers (``loadertop.core.probe.stages``; ``stages()``);
    set False on a loader, or on the class, before its ``iter()`` to fetch exactly as torch does."""

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
        # Each stage's state, in one object of its own.
        self._requests = PendingRequest()  # settings asked for, not yet taken
        self._settings = LoaderSettings(self)  # what torch refuses at 0 workers, kept for when there are workers
        self._hooks = LoaderHooks()  # observers, boundary and retire hooks
        self._threads = WorkerThreads()  # the builder and reaper threads, the reaping lock
        self._streams = StreamHandoff()  # which index stream torch's next iterator draws from
        self._startups = StartupHistory()  # measured start-ups and batch interval: how long an overlap lasts
        self._seeds = WorkerSeeds()  # where the workers' base seeds come from
        self._book = EpochBook()  # epochs, switches, the loop running
        self._stages = LoaderStages()  # each generation's stage sheet
        tuning.hold_for_workers(self, held)
        if hook is not None:
            hook.created(self)  # under loadertop run: the run's tuner tunes an "auto" training loader
        elif self.auto_workers:
            tuning.tune_by_itself(self)

    @property
    def reaping_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held while a switch shuts the old workers down and reaps them (a CPU clock's lock; after an
        overlapped switch that is done in a thread of the loader's, so the lock must be a thread-safe one)."""
        return self._threads.reaping_lock

    @reaping_lock.setter
    def reaping_lock(self, lock: contextlib.AbstractContextManager[Any]) -> None:
        self._threads.reaping_lock = lock

    @property
    def _with_workers(self) -> dict[str, Any]:
        """The settings torch refuses at 0 workers, in force whenever there are workers (``tuning`` sets them)."""
        return self._settings.with_workers

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
                stacklevel=2,
            )

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
            check_setting(self, key, value)
        self._requests.add(settings, overlap)
        if self._running() is None:  # no loop is running: the next iter() starts with it
            self._apply_between_epochs()

    def add_observer(self, observer: Callable[[LoaderBatch], None]) -> None:
        """Call ``observer`` with a ``LoaderBatch`` for every batch the loop receives (in the loop's thread)."""
        self._hooks.observers.append(observer)

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
        self._hooks.add_boundary(hook, at_handover=at_handover)

    def add_retire_hook(self, hook: Callable[[DataLoader, tuple[int, ...]], None]) -> None:
        """Call ``hook(loader, worker_pids)`` in the loop's thread just before a switch shuts a
        generation's workers down (their last memory and CPU can still be read); with overlap, at the
        handover, just before the boundary hooks (the workers are shut down after those)."""
        self._hooks.retire.append(hook)

    @property
    def request_waiting(self) -> bool:
        """A change was asked for and the loader has not taken it yet (requests made meanwhile merge with it)."""
        return self._requests.settings is not None

    @property
    def continues_exactly(self) -> bool:
        """Whether a switch can continue the running epoch exactly (map-style data, batches in order)."""
        return not isinstance(self.dataset, IterableDataset) and getattr(self, "in_order", True)

    def status(self) -> LoaderStatus:
        """A frozen view of this loader (callable from any thread)."""
        active = self._running()
        request = self._requests.settings
        pending = request.get("num_workers") if request else None
        restarts = pending is not None and not self.continues_exactly
        book = self._book
        if active is None:
            return LoaderStatus(self.name, self.num_workers, pending, restarts, book.epoch, book.switches, ())
        delivering, starting = active.generations()
        if starting is None:
            return LoaderStatus(
                self.name, self.num_workers, pending, restarts, book.epoch, book.switches, delivering.pids()
            )
        # Mid-overlap: the loader's settings are already the starting generation's; it is pending until the handover.
        new_pids = starting.pids()
        return LoaderStatus(
            self.name,
            delivering.num_workers,
            starting.num_workers if pending is None else pending,
            False,
            book.epoch,
            book.switches - 1,
            delivering.pids() + new_pids,
            new_pids,
        )

    def stages(self) -> tuple[StageFigures, ...]:
        """Where the samples' time went, per worker count run so far (callable from any thread; empty where
        ``time_stages`` is off or nothing was fetched yet)."""
        return self._stages.figures()

    def batch_timer(self, name: str) -> BatchTimer | None:
        """The running generation's timer of a stage once a batch in this process (``TO_DEVICE``: the built-in
        trainer times its copy to the device into it), None where stage timing is off."""
        return self._stages.batch_timer(name)

    def expected_startup_s(self, num_workers: int) -> float:
        """How long ``num_workers`` new workers are expected to take to deliver their first batch: this
        loader's latest measurement for that count (else for the nearest count measured, else
        ``DEFAULT_STARTUP_S``); 0 for no workers."""
        return self._startups.expected_startup_s(num_workers)

    # ------------------------------------------------------ torch's hooks

    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]
        """Torch's index sampler, wrapped so that the indices handed to workers are known (map-style data)."""
        real = torch_compat.index_sampler(super())
        return IndexSampler(self, real) if self.continues_exactly else real

    def __iter__(self) -> SwitchingIterator:  # type: ignore[override]
        book = self._book
        if book.epoch == 0:
            self._boundary()
        previous = self._running()
        if previous is not None:  # a loop left mid-epoch: a switch it had begun hands over now
            previous.finish_switch()
        if book.handover_due:  # ... or its iterator was dropped (torch shut both generations' workers down)
            self._threads.await_builder()
            book.handover_due = False
            self._boundary()
        self._apply_between_epochs()
        book.epoch += 1
        before = torch_compat.persistent_iterator(self)
        created = _clock()
        with self._stages.creating(self) as stages:
            inner = self._seeds.epoch_iterator(self, super().__iter__)
        stages.attach(inner, fresh=inner is not before)
        fresh = self.num_workers > 0 and inner is not before  # new workers (not persistent ones going on)
        generation = WorkerGeneration(
            inner,
            self._streams.last if self.continues_exactly else None,
            self.num_workers,
            book.switches,
            created,
            timed=fresh,
        )
        iterator = SwitchingIterator(self, generation)
        book.active = weakref.ref(iterator)
        return iterator

    def _running(self) -> SwitchingIterator | None:
        """The iterator of the loop in progress, if any."""
        return self._book.running()

    # ------------------------------------------------ stages, for the iterator

    def _boundary(self) -> None:
        self._hooks.run_boundary(self)

    def _retire(self, iterator: Any) -> None:
        """Shut ``iterator``'s workers down (and reap them) after telling the retire hooks."""
        self._retiring(iterator)
        self._threads.shut_down(iterator)

    def _retiring(self, iterator: Any) -> None:
        """Tell the retire hooks that ``iterator``'s workers are about to be shut down."""
        self._hooks.run_retiring(self, iterator)

    def _reap_later(self, iterator: Any) -> None:
        """Shut ``iterator``'s idle workers down and reap them in a thread, off the loop's path."""
        self._threads.reap_later(iterator, self.name)

    def _take_request(self) -> dict[str, Any] | None:
        """The pending settings that differ from the current ones (None if none), cleared."""
        return self._take_request_and_overlap()[0]

    def _take_request_and_overlap(self) -> tuple[dict[str, Any] | None, bool]:
        """The pending settings that differ from the current ones (None if none), and whether to
        overlap the switch; both cleared."""
        request, overlap = self._requests.take()
        overlap = (self.overlap if overlap is None else overlap) and not self._hooks.stop_start_only
        if request is None:
            return None, overlap
        return self._settings.changes(self, request), overlap

    def _apply_between_epochs(self) -> None:
        """No batch is in flight: a pending change just sets the settings for the next ``iter()``."""
        self._threads.await_builder()
        changes = self._take_request()
        if changes is None:
            return
        old = torch_compat.persistent_iterator(self)
        if old is not None:  # persistent workers of the old settings
            self._retire(old)
            torch_compat.set_persistent_iterator(self, None)
        if self._book.epoch:
            self._boundary()
        self._apply(changes)

    def _apply(self, changes: dict[str, Any]) -> None:
        """Set the settings (between two worker generations): a new configuration."""
        self._settings.apply(self, changes)
        self._book.switches += 1

    def _new_generation(self, stream: IssuedIndices, base_seed: int) -> Any:
        """A torch iterator for the current settings that continues ``stream``; no random number drawn."""
        with self._streams.handing_out(stream), self._stages.creating(self) as stages:
            inner = self._seeds.generation_iterator(self, base_seed)
        stages.attach(inner, fresh=True)
        if self.persistent_workers and self.num_workers > 0:
            torch_compat.set_persistent_iterator(self, inner)
        return inner

    def _overlap_batches(self, num_workers: int, in_flight: int, interval_s: float) -> int:
        """R: the batches an old generation delivers beyond its ``in_flight`` ones while ``num_workers`` new
        workers start (from this loader's measured start-ups and the loop's batch interval)."""
        if num_workers == 0:  # no processes to start: hand over once the batches already fetched are delivered
            return 0
        return overlap_batches(self.expected_startup_s(num_workers), interval_s, in_flight)


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
