"""A launched run's autotuner: made on first use, following the run's training loader, its status published.

Autotune is asked for by ``--autotune``, by a monitor (an ``autotune`` message) or by a loader made with
``num_workers="auto"``; the tuner itself (``tuning.LoaderTuning``) and the autotuner's module are imported only
then, never when the script starts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from loadertop.core.probe.publisher import Publisher
from loadertop.core.protocol.environment import ProbeSettings
from loadertop.core.protocol.messages import AutotuneStatus, TunerState

TUNING_STATUS_S = 0.5
"""How often the writer looks whether the autotuner's status changed (to publish it)."""


class RunAutotune:
    """The autotuner of one run's training loader.

    Args:
        run: the run's publisher: its CPU clock, its training loader, where lines and messages go.
        settings: the run's settings (the tuner's CPU and memory budgets).
        ranks_on_node: the training processes sharing this node's cores (a torchrun job's ranks here; 1 outside one).
    """

    def __init__(self, run: Publisher, settings: ProbeSettings, ranks_on_node: int) -> None:
        self._run = run
        self._settings = settings
        self._ranks_on_node = ranks_on_node
        self.tuning: Any = None  # a LoaderTuning once autotune is first asked for (--autotune, a monitor, "auto")
        self._lock = threading.Lock()
        self._published: AutotuneStatus | None = None
        self._next_status = 0.0

    def set_enabled(self, enabled: bool, *, why: str) -> str | None:
        """Tune the training loader's workers (from its running count), or stop (the count stays).

        ``why`` says who asked, in the line said. Returns the reason when it cannot (no CPU clock).
        """
        tuning = self.tuner()
        if tuning is None:
            return "this run cannot read its CPU (psutil): no autotune"
        if enabled == tuning.enabled:
            return None
        if enabled:
            from loadertop.core.probe.autotune_host import describe_budget

            self._run._say(
                f"autotune on ({why}): the training loader's workers are tuned within "
                f"{describe_budget(tuning.budget, self._ranks_on_node)}"
            )
        else:
            self._run._say(f"autotune off ({why}): the workers stay as they are")
        tuning.set_enabled(enabled)
        return None

    def tuner(self) -> Any:
        """The run's tuner, made on first use (None where the tree's CPU cannot be read)."""
        run = self._run
        with self._lock:
            if self.tuning is None and run._clock is not None:
                from loadertop.core.probe.autotune_host import default_budget
                from loadertop.core.probe.tuning import LoaderTuning

                budget = default_budget(
                    cores=self._settings.cpu_budget,
                    memory_gib=self._settings.memory_budget_gib,
                    ranks_on_node=self._ranks_on_node,
                )
                self.tuning = LoaderTuning(
                    budget=budget,
                    clock=run._clock,
                    on_change=run.autotune,
                    on_thread=lambda thread_id: run.exclude_threads([thread_id]),
                    memory=run.run_memory(),
                    rank=run.own_rank(),
                )
                if run.training is not None:
                    self.follow(run.training)
            return self.tuning

    def follow(self, loader: Any) -> None:
        """The tuner follows the training loader (a framework may mark another later)."""
        tuning = self.tuning
        if tuning is None or tuning.loader is loader:
            return
        tuning.follow(loader)
        if not loader.continues_exactly:
            said = f"autotune: {loader.name} is an IterableDataset (or in_order=False): its changes apply at epoch ends"
            self._run._put(("say", said))

    def publish_status(self) -> None:
        """The tuner's status to the monitors when it changed, looked at twice a second (the writer thread;
        the server keeps the latest for monitors that attach later)."""
        if time.monotonic() < self._next_status:
            return
        self._next_status = time.monotonic() + TUNING_STATUS_S
        tuning = self.tuning
        if tuning is not None:
            try:
                status = tuning.status_message()
            except Exception:  # noqa: BLE001 - read while the tuner's thread changes it: next time
                return
        else:
            training = self._run.training
            status = AutotuneStatus(loader=training.name if training is not None else None, state=TunerState.OFF)
        if status != self._published:
            self._published = status
            self._run._publish(status)

    def stop(self) -> None:
        """Stop the tuner's thread, if one was made (at the run's end)."""
        if self.tuning is not None:
            self.tuning.stop()
