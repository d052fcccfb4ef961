"""Autotune of a drop-in loader: the one host (``autotune_host.AutotuneHost``) on one loader, fed off the loop.

Two users: a launched script's run (``launched.LaunchedRun``: ``--autotune``, the monitor's
``a``, or a loader made with ``num_workers="auto"``) tunes its training loader, whichever
that is at the time; a ``loadertop.DataLoader(..., num_workers="auto")`` outside ``loadertop
run`` tunes itself (``tune_by_itself``), its lines on stderr. Either way the loop's only cost
is one append of the ``LoaderBatch`` it already built; the host's thread pairs each batch
with the next one's ``step_s`` (the loop's work on it) into an ``Observation`` (the step that
holds an epoch's end, ``step_s`` None, is left out), reads the process tree, and switches the
loader. The host's thread is left out of the CPU the training is billed. The drop-in loader
imports this module: the tuner itself is imported only once a loader is tuned.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loadertop.core.probe.autotune_host import AutotuneHost, default_budget, describe_budget, read_tree
from loadertop.core.protocol.config import WORKERS_ONLY
from loadertop.core.protocol.messages import AutotuneStatus

if TYPE_CHECKING:
    from loadertop.core.measure.history import LoaderSignature
    from loadertop.core.policy.autotune import Budget, Change, Reading
    from loadertop.core.probe.remembering import RunMemory


class LoaderTuning(AutotuneHost):
    """The autotune host on one loader at a time (``follow``), off until ``set_enabled(True)``; its thread
    starts once it is on and has a loader.

    Args:
        budget: the tuner's budgets.
        clock: a ``TreeCpuClock`` of this process's tree.
        on_change: told of every change (in the host's thread).
        on_thread: told the host thread's native id once it runs (to leave it out of the CPU).
        interval_s: seconds between readings of the tree.
    """

    def __init__(
        self,
        *,
        budget: Budget,
        clock: Any,
        on_change: Callable[[Change], None],
        on_thread: Callable[[int], None] | None = None,
        interval_s: float = 0.25,
        memory: RunMemory | None = None,
        rank: int | None = None,
    ) -> None:
        from loadertop.core.policy.autotune import AutoTuner

        self._memory = memory
        self._rank = rank
        self._signature: LoaderSignature | None = None  # the followed loader's, where there is a memory
        self._clock = clock
        self._loader: weakref.ref[Any] | None = None
        self._raw: deque[Any] = deque(maxlen=100_000)  # LoaderBatches, appended by the loop (or the writer)
        self._previous: Any = None  # the batch whose step comes with the next one
        super().__init__(
            AutoTuner(budget),
            apply=self._switch_loader,
            read=self._read_loader_tree,
            on_change=(on_change, self._remember),
            on_thread=on_thread,
            interval_s=interval_s,
        )

    # ---------------------------------------------------------- any thread

    @property
    def loader(self) -> Any:
        """The loader tuned now (None: none yet, or it was garbage-collected)."""
        return self._loader() if self._loader is not None else None

    def follow(self, loader: Any) -> None:
        """Tune ``loader`` from now on: a new round from its running count."""
        if self.loader is loader:
            return
        self._loader = weakref.ref(loader)
        self.new_round()
        memory = self._memory
        if memory is not None:  # it starts where this loader settled last on this machine (unless told to forget)
            from loadertop.core.probe.remembering import script_loader

            signature = self._signature = script_loader(memory.program, loader, self._rank)
            with self._lock:
                memory.remember(self.tuner, signature)
        self._start_if_due()

    def _remember(self, change: Change) -> None:
        """Each change, in the host's thread: a settle is written to the run history."""
        if self._memory is not None and self._signature is not None:
            self._memory.changed(self._signature, self.tuner, change)

    def set_enabled(self, enabled: bool) -> None:
        """On (a new round from the running count, once there is a loader) or off (the count stays)."""
        super().set_enabled(enabled)
        self._start_if_due()

    def feed(self, batch: Any) -> None:
        """A ``LoaderBatch`` of the tuned loader (the loop's thread, or a writer's): one append."""
        if self.enabled:
            self._raw.append(batch)

    def status_message(self) -> AutotuneStatus:
        """The status as the protocol's ``autotune`` message carries it (the curve rounded, unknowns null)."""
        from loadertop.core.policy.autotune import curve_fields

        status = self.status()
        loader = self.loader
        return AutotuneStatus.from_wire(
            {
                "loader": loader.name if loader is not None else None,
                "state": status.state,
                "workers": status.workers,
                "changes": len(status.changes),
                **curve_fields(status.predicted, status.ceiling),
                "cores": round(self.budget.cores, 3),
                "memory_bytes": None if self.budget.memory_bytes is None else int(self.budget.memory_bytes),
                "max_workers": self.budget.max_workers,
            }
        )

    def _start_if_due(self) -> None:
        if self.enabled and self.loader is not None and not self.started:
            self.start()

    # -------------------------------------------------------- host's thread

    def _switch_loader(self, workers: int) -> None:
        loader = self.loader
        if loader is not None:
            loader.switch(workers)

    def _read_loader_tree(self) -> Reading:
        loader = self.loader
        if loader is None:
            return read_tree(self._clock, ())
        return read_tree(self._clock, loader.status().worker_pids, stages=loader.stages())

    def _round_begins(self) -> None:
        self._previous = None
        self._raw.clear()  # batches from before (another loader's, or queued as it was turned off)

    def _collect(self) -> None:
        """Pair the batches the loop queued into observations."""
        from loadertop.core.measure.store import refill_batches
        from loadertop.core.policy.autotune import Observation

        raw = self._raw
        while raw:
            batch = raw.popleft()
            previous, self._previous = self._previous, batch
            if previous is None or batch.step_s is None or batch.loader != previous.loader:
                continue  # the step after an epoch's last batch holds the epoch's end: not a steady step
            self.put(
                Observation(
                    previous.num_workers,
                    previous.samples,
                    previous.load_s + previous.switch_s,
                    batch.step_s,
                    previous.time,
                    refill=previous.batch <= refill_batches(previous.num_workers),
                )
            )


def start_at_zero(arguments: dict[str, Any]) -> dict[str, Any]:
    """``num_workers="auto"``: the constructor's ``arguments`` changed to 0 workers (the first measurement:
    the loop then waits exactly the time to make a batch); returns the settings torch refuses at 0
    workers, taken out, for ``hold_for_workers``."""
    arguments["num_workers"] = 0
    return {key: arguments.pop(key) for key in WORKERS_ONLY if key in arguments and arguments[key] != WORKERS_ONLY[key]}


def hold_for_workers(loader: Any, held: dict[str, Any]) -> None:
    """Give ``loader`` the settings ``start_at_zero`` took out: in force whenever it has workers."""
    from loadertop.core.probe import torch_compat

    for key, value in held.items():
        if key in loader._with_workers:  # kept aside while there are no workers (the loader's own rule)
            loader._with_workers[key] = value
            if loader.num_workers > 0:
                setattr(loader, key, value)
        elif key == "persistent_workers":
            torch_compat.set_persistent_workers(loader, value)
        else:
            setattr(loader, key, value)


def tune_by_itself(loader: Any) -> LoaderTuning:
    """``num_workers="auto"`` outside ``loadertop run``: a tuner of the loader's own, its lines on stderr.

    Its thread stops when the loader is garbage-collected, or at exit.
    """
    from loadertop.core.measure.cost import TreeCpuClock
    from loadertop.core.probe.publisher import say_on_stderr
    from loadertop.core.protocol.environment import rank_of_process

    rank = rank_of_process()
    ranks_on_node = rank.local_world_size if rank is not None else 1
    budget = default_budget(ranks_on_node=ranks_on_node)
    clock = TreeCpuClock()
    name = loader.name
    prefix = f"rank {rank.rank}: " if rank is not None else ""

    def say(text: str) -> None:
        say_on_stderr(f"{prefix}autotune: {name}: {text}")

    memory = None
    try:
        from loadertop.core.probe.remembering import script_memory

        memory = script_memory(forget=os.environ.get("LOADERTOP_FORGET", "") not in ("", "0"), say=say)
    except Exception as exc:  # noqa: BLE001 - the history is a help, never the script's failure
        say(f"nothing is remembered of this run ({type(exc).__name__}: {exc})")
    tuning = LoaderTuning(
        budget=budget,
        clock=clock,
        on_change=lambda change: say(change.line()),
        on_thread=lambda thread_id: clock.exclude_threads([thread_id]),
        memory=memory,
        rank=rank.rank if rank is not None else None,
    )
    loader.add_observer(tuning.feed)
    say(
        f"num_workers='auto': from {loader.num_workers} workers, within {describe_budget(budget, ranks_on_node)}"
        + ("" if loader.continues_exactly else "; an IterableDataset: changes apply at epoch boundaries")
    )
    tuning.follow(loader)
    tuning.set_enabled(True)
    weakref.finalize(loader, tuning.stop)  # also at exit, while the loader lives
    return tuning
