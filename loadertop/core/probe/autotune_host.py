"""The one host of autotune: an ``AutoTuner`` (``policy.autotune``, pure decisions) run beside a training loop.

Both kinds of run tune through ``AutotuneHost``: the built-in one (``sessions.session.Session``: observations
from the trainer's records, changes applied by a hot restart) and a script's (``probe.tuning.LoaderTuning``:
observations paired from a drop-in loader's batches, changes applied by its ``switch``). The host holds what
they share: a thread of its own that reads the process tree (``read_tree``) ``interval_s`` apart, feeds the
tuner what was delivered before the reading and applies its changes, so that the loop's only cost is one
append; tuning turned on (a new round from the running count) and off (the count stays, the status ``off``);
every change told to each listener in turn (record it, publish it, say it); its thread left out of the CPU
the training is billed. Here too: the budgets a run gets unless told (``default_budget``, from the limits
that confine the process) and how they are said (``describe_budget``).

Importing this module costs the standard library only (the drop-in loader imports it, through ``tuning``):
the tuner, psutil and the limits are imported once something is tuned.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from loadertop.core.protocol.messages import TunerState
from loadertop.core.protocol.stages import BATCH_STAGES

if TYPE_CHECKING:
    from loadertop.core.measure.cost import TreeCpuClock
    from loadertop.core.measure.memory import MemoryReader
    from loadertop.core.policy.autotune import AutoTuner, Budget, Change, Observation, Reading, TunerStatus
    from loadertop.core.protocol.stages import StageFigures

MEMORY_SHARE = 0.5
"""The default memory budget: this share of the memory available when tuning starts."""


class AutotuneHost:
    """Runs an ``AutoTuner`` beside a training loop, off until ``set_enabled(True)`` (or ``enabled``).

    The loop's thread only appends each batch's ``Observation`` (``put``: one deque append, no lock, no
    wake-up); the host's thread, once started, reads the tree ``interval_s`` apart, feeds the tuner and
    applies its changes. So the loop never waits on the tuner's arithmetic or on psutil. The tuner is only
    touched under the host's lock: a new round asked for from any thread starts at once, and ``status`` is
    never read half-way through a change.

    A host of one kind of loader overrides ``_collect`` (turn what its loop queued into observations, in the
    host's thread) and ``_round_begins`` (forget what it queued for the round before).

    Args:
        tuner: the tuner.
        apply: switches the loader to a worker count (the host's thread).
        read: a ``Reading`` of the tree now (the host's thread).
        on_change: told of every change, in order, in the host's thread (record it, publish it, say it).
        on_thread: told the host thread's native id once it runs (to leave it out of the CPU the training is billed).
        enabled: tune from the first batch.
        interval_s: seconds between readings.
    """

    def __init__(
        self,
        tuner: AutoTuner,
        *,
        apply: Callable[[int], None],
        read: Callable[[], Reading],
        on_change: Iterable[Callable[[Change], None]] = (),
        on_thread: Callable[[int], None] | None = None,
        enabled: bool = False,
        interval_s: float = 0.25,
    ) -> None:
        self.tuner = tuner
        self._apply = apply
        self._read = read
        self._on_change = tuple(on_change)
        self._on_thread = on_thread
        self._interval_s = interval_s
        self._inbox: deque[Observation] = deque(maxlen=100_000)
        self._held: list[Observation] = []  # delivered after the latest reading: for the next one
        self._lock = threading.Lock()  # the tuner's (and what feeds it): the host's thread, a new round, the status
        self._enabled = enabled
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.thread_id: int | None = None
        """The host thread's native id, once it runs."""

    # ---------------------------------------------------------- any thread

    @property
    def budget(self) -> Budget:
        """The tuner's budgets."""
        return self.tuner.budget

    @property
    def enabled(self) -> bool:
        """Whether it tunes: False, batches are dropped and nothing changes (the ``a`` key off)."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Turn tuning on (a new round from the running count) or off (the count stays)."""
        if enabled and not self._enabled:
            self.new_round()
        self._enabled = enabled

    def new_round(self) -> None:
        """Tune again from the running count (its next batches): the round and the settled count are forgotten,
        and so is what was delivered before."""
        with self._lock:
            self.tuner.restart()
            self._held = []
            self._inbox.clear()
            self._round_begins()

    def put(self, obs: Observation) -> None:
        """A batch the loop received (the loop's thread)."""
        if self._enabled:
            self._inbox.append(obs)

    def status(self) -> TunerStatus:
        """The tuner's status; ``state`` is ``off`` while it is turned off."""
        with self._lock:
            status = self.tuner.status()
        return status if self._enabled else replace(status, state=TunerState.OFF)

    def start(self) -> None:
        """Start the host's thread (once: later calls do nothing); returns once its native id is known
        (``thread_id``) and told to ``on_thread``.

        torch's warning that a loader makes more workers than cores is silenced from here on: the tuner
        tries such counts on purpose (workers that wait on storage need no core), under its CPU budget.
        """
        with self._start_lock:
            if self._thread is not None:
                return
            warnings.filterwarnings(
                "ignore", message=r"This DataLoader will create \d+ worker processes in total", category=UserWarning
            )
            self._thread = threading.Thread(target=self._run, name="loadertop-autotune", daemon=True)
            self._thread.start()
            self._running.wait(5.0)
            if self._on_thread is not None and self.thread_id is not None:
                self._on_thread(self.thread_id)

    @property
    def started(self) -> bool:
        """Whether ``start`` was called."""
        return self._thread is not None

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread (what is queued is dropped); from the thread itself too (it then ends after this tick)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # ------------------------------------------------------- host's thread

    def _run(self) -> None:
        self.thread_id = threading.get_native_id()
        self._running.set()
        while not self._stop.wait(self._interval_s):
            try:
                self.tick()
            except Exception:
                logging.getLogger(__name__).exception("autotune failed; tuning stops, training goes on")
                return

    def tick(self) -> None:
        """Read the tree, feed the tuner what was delivered before the reading, apply its changes, tell of them."""
        reading = self._read() if self._enabled else None
        switches: list[int] = []
        with self._lock:
            if reading is None or not self._enabled:
                self._held = []
                self._inbox.clear()
                return
            self._collect()
            pending, self._held = self._held, []
            while self._inbox:
                pending.append(self._inbox.popleft())
            known = len(self.tuner.changes)
            for obs in pending:
                if obs.time > reading.time:
                    self._held.append(obs)
                    continue
                change = self.tuner.observe(obs)
                if change is not None and change.to_workers != change.from_workers:
                    switches.append(change.to_workers)
            self.tuner.read(reading)
            changes = self.tuner.changes[known:]
        for workers in switches:  # outside the lock: neither the loader's switch nor a listener waits on the tuner
            self._apply(workers)
        for change in changes:
            for listener in self._on_change:
                listener(change)

    def _collect(self) -> None:
        """What the loop queued, as observations (``put``); under the host's lock. Nothing here: the loop puts them."""

    def _round_begins(self) -> None:
        """A new round: forget what was queued for the one before; under the host's lock."""


def default_budget(*, cores: float | None = None, memory_gib: float | None = None, ranks_on_node: int = 1) -> Budget:
    """The budgets: ``cores`` (default: the cores this process may use, a cgroup quota's 1.5 as 1.5, shared
    among a node's ranks), ``memory_gib`` (default: half the memory available to it, the host's or its cgroup
    limit's less what the cgroup uses, whichever is less, shared too); at most four workers a core, at least 4."""
    from loadertop.core.measure.limits import current_limits
    from loadertop.core.policy.autotune import Budget

    limits, ranks = current_limits(), max(ranks_on_node, 1)
    share = (cores if cores is not None else limits.cores) / ranks
    memory = memory_gib * 2**30 if memory_gib is not None else MEMORY_SHARE * limits.memory_available_bytes / ranks
    return Budget(cores=share, memory_bytes=memory, max_workers=max(4, math.ceil(4 * share)))


def describe_budget(budget: Budget, ranks_on_node: int = 1) -> str:
    """``1 core (the node's 2 shared by 2 ranks) and 3.1 GiB of memory for its workers``; where a limit
    confines the process, what it may use and where that came from (``this process may use 1.5 of 64 cores:
    cgroup v2 quota``)."""
    from loadertop.core.measure.limits import current_limits

    cores = f"{budget.cores:g} core{'' if budget.cores == 1 else 's'}"
    if ranks_on_node > 1:
        cores += f" (the node's {budget.cores * ranks_on_node:g} shared by {ranks_on_node} ranks)"
    if budget.memory_bytes is not None:
        cores += f" and {budget.memory_bytes / 2**30:.1f} GiB of memory for its workers"
    limits = current_limits()
    confined = [
        text
        for text, yes in ((limits.cores_text(), limits.cores_confined), (limits.memory_text(), limits.memory_confined))
        if yes
    ]
    if confined:
        cores += f" (this process may use {' and '.join(confined)})"
    return cores


def read_tree(
    clock: TreeCpuClock,
    worker_pids: Sequence[int],
    memory: MemoryReader | None = None,
    stages: Sequence[StageFigures] = (),
) -> Reading:
    """A ``Reading`` now: the tree's CPU from ``clock``, the workers' USS (through ``memory``; default: this
    process's shared reader, which the system sampler keeps fresh), ``/dev/shm``, and the CPU a sample's stages
    took at the running count, from the tuned loader's ``stages``."""
    import os
    import shutil
    import time

    import psutil

    from loadertop.core.measure.memory import shared_reader
    from loadertop.core.policy.autotune import Reading

    reader = memory if memory is not None else shared_reader()
    cpu = clock.read()
    uss = 0
    for pid in worker_pids:
        try:
            worker = reader.read(psutil.Process(pid))
        except psutil.Error:
            continue
        uss += worker.uss_bytes if worker is not None else 0
    shm = None
    if os.path.isdir("/dev/shm"):
        try:
            usage = shutil.disk_usage("/dev/shm")
            shm = usage.used / usage.total if usage.total else None
        except OSError:
            shm = None
    stage_cpu = stage_wall = math.nan
    for figures in stages:
        if figures.num_workers == len(worker_pids) and figures.samples and not figures.off:
            # The fetch and the collate: what a worker does (pinning and the copy to the device are the loop's).
            made = replace(figures, stages=tuple(s for s in figures.stages if s.name not in BATCH_STAGES))
            cpu_ms = made.sample_cpu_ms
            stage_cpu = cpu_ms / 1000.0 if cpu_ms is not None else math.nan
            stage_wall = made.sample_ms / 1000.0
    return Reading(
        time.time(),
        cpu.total_s,
        len(worker_pids),
        uss,
        shm,
        main_cpu_s=cpu.main_s,
        stage_cpu_s_per_sample=stage_cpu,
        stage_wall_s_per_sample=stage_wall,
    )
