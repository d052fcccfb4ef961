"""The run of a script under ``loadertop run``: the creation hook every DataLoader it makes goes through.

``LaunchedRun`` is a ``Publisher`` (every batch to ``--record``, the monitors' socket and loadertop's lines)
that applies the launcher's settings to each loader created (``--workers``; ``--switch``: ``switches``), tells
a loader made anew from a new one, and wires the run's other parts: its autotuner (``run_autotune``), its
exchange with other nodes' ranks under a multi-node torchrun (``peer_relay``), and its end (the script's
uncaught exception to the monitors, the summary and the claim's removal at exit).
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import time
from dataclasses import replace
from typing import Any

from loadertop.core.probe.claim import release
from loadertop.core.probe.peer_relay import PeerRelay
from loadertop.core.probe.publisher import Publisher, batch_size_of, describe_workers, say_on_stderr
from loadertop.core.probe.run_autotune import RunAutotune
from loadertop.core.probe.switches import switch_due, unmet_switches
from loadertop.core.protocol.config import WORKERS_ONLY
from loadertop.core.protocol.environment import ProbeSettings, rank_of_process
from loadertop.core.protocol.messages import Hello


class LaunchedRun(Publisher):
    """The creation hook of a launched script: its settings applied, every loader published (see ``Publisher``)."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.rank = rank_of_process()
        hello = Hello(
            pid=os.getpid(),
            command=tuple(settings.command) or tuple(sys.argv),
            cwd=os.getcwd(),
            started=time.time(),
            log=settings.log,
        )
        say = say_on_stderr
        if self.rank is not None:
            hello = replace(
                hello,
                rank=self.rank.rank,
                local_rank=self.rank.local_rank,
                world_size=self.rank.world_size,
                local_world_size=self.rank.local_world_size,
                node_rank=self.rank.node_rank,
            )
            prefix = f"rank {self.rank.rank}: "

            def say(text: str) -> None:
                say_on_stderr(prefix + text)

        # Made before the publisher starts its writer thread, which ticks them.
        self._peers: PeerRelay | None = None
        if self.rank is not None and self.rank.world_size > self.rank.local_world_size:  # ranks on other nodes
            self._peers = PeerRelay(self, self.rank)
        self._autotune = RunAutotune(self, settings, self.rank.local_world_size if self.rank is not None else 1)
        self._memory: Any = None  # the run history's RunMemory, made on first use
        self._started_at = time.time()
        super().__init__(
            hello=hello,
            record=settings.record,
            serve=settings.serve,
            say=say,
            rank=self.rank.rank if self.rank is not None else None,
            watch_gpu=True,
        )
        if self.server is not None:
            self.server.on_autotune = self._autotune_request
        if settings.autotune:
            self.set_autotune(True, why="--autotune")
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self.close)

    # ------------------------------------------------------------ autotune

    @property
    def tuning(self) -> Any:
        """The run's ``LoaderTuning`` once autotune was first asked for (None before)."""
        return self._autotune.tuning

    def set_autotune(self, enabled: bool, *, why: str) -> str | None:
        """Tune the training loader's workers (from its running count), or stop (the count stays).

        ``why`` says who asked, in the line said. Returns the reason when it cannot (no CPU clock).
        """
        return self._autotune.set_enabled(enabled, why=why)

    def _autotune_request(self, enabled: bool) -> str | None:
        """A monitor's ``autotune`` message (the server's thread)."""
        return self.set_autotune(enabled, why="the monitor")

    # ---------------------------------------------------------------- hook

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``--workers`` replaces the script's count; settings that need workers are dropped at 0."""
        workers = self.settings.workers
        if workers is None:
            return arguments
        arguments = dict(arguments, num_workers=workers)
        if workers == 0:
            for name, neutral in WORKERS_ONLY.items():
                if name in arguments:
                    arguments[name] = neutral
        return arguments

    def created(self, loader: Any) -> None:
        """Watch ``loader``; the training loader that ``--switch`` addresses is the first one created, or
        the one a framework marks (Lightning's, from ``trainer.train_dataloader``)."""
        loader.time_stages = self.settings.stages
        again = self._made_again(loader)
        if again is not None:  # the same loader made anew: it goes on under its name (and role)
            loader.name = again.name
        else:
            taken = {known.name for known in self.loaders}
            if loader.name in taken:  # made at the same line as another (a helper that makes every loader)
                loader.name = next(
                    f"{loader.name}#{n}" for n in itertools.count(2) if f"{loader.name}#{n}" not in taken
                )
        self.watch(loader)
        if again is not None:
            return
        role = " (training: --switch applies to it)" if loader is self.training else ""
        self._say(
            f"DataLoader {loader.name}: {describe_workers(loader.num_workers)}, batch {batch_size_of(loader)}{role}"
        )
        if getattr(loader, "auto_workers", False):  # num_workers="auto": the run's tuner, on the training loader
            if self.training is not None and loader is not self.training:
                self._say(
                    f"DataLoader {loader.name}: num_workers='auto': the run tunes its training loader, "
                    f"{self.training.name}; this one keeps {describe_workers(loader.num_workers)}"
                )
            else:
                self.set_autotune(True, why=f"{loader.name}: num_workers='auto'")

    def _made_again(self, loader: Any) -> Any:
        """The loader ``loader`` stands in for, if it is one made anew: over the same dataset as one not
        running, by a framework (accelerate wraps the Trainer's, Lightning re-creates one to inject a
        sampler) or at the same line (a loader made every epoch)."""
        for known in reversed(self.loaders):
            if (
                known.dataset is loader.dataset
                and known._running() is None
                and (loader.made_by_package or known.site == loader.site)
            ):
                return known
        return None

    def mark_training(self, loader: Any) -> None:
        """A framework marked ``loader`` as the training loader: say so, as for the first one created."""
        first = loader is not self.training
        super().mark_training(loader)
        self._autotune.follow(loader)
        if first and self.framework_marks_training:
            self._say(f"DataLoader {loader.name} is the training loader (--switch applies to it)")

    # -------------------------------------------------------- loop thread

    def _on_batch(self, loader: Any, batch: Any, training: bool) -> None:
        super()._on_batch(loader, batch, training)
        tuning = self._autotune.tuning
        if training and tuning is not None:
            tuning.feed(batch)  # one append: the tuner's thread makes it an observation
        switches = self.settings.switches
        if not switches:  # the common case: nothing more to do on the loop's path
            return
        step = self._steps[loader.name]
        workers = switch_due(switches, loader.name, step, training=training, rank=self.rank)
        if workers is not None:
            before = loader.num_workers  # the settings asked last (an overlapped switch still in progress: its)
            loader.switch(workers)
            self._put(("say", f"{loader.name}: switching {before} -> {describe_workers(workers)} after batch {step}"))

    # ------------------------------------------------------- writer thread

    def _tick(self) -> None:
        """Between the writer's bursts: the tuner's status when it changed; once a second under a multi-node
        torchrun, this rank's summary to the job's store and the others' to monitors."""
        self._autotune.publish_status()
        peers = self._peers
        if peers is not None and not peers.tick():
            self._peers = None

    def own_rank(self) -> int | None:
        """This process's rank in its torchrun job (None outside one)."""
        return self.rank.rank if self.rank is not None else None

    def _relay_switch(self, rank: int, name: str | None, workers: int) -> str | None:
        """A monitor here switches rank ``rank`` of another node: the writer passes it on through the store."""
        peers = self._peers
        if peers is None or self.rank is None or not 0 <= rank < self.rank.world_size:
            return super()._relay_switch(rank, name, workers)
        peers.ask_switch(rank, name, workers)
        return None

    def _summary(self, sums: dict[tuple[str, int], list[float]]) -> None:
        super()._summary(sums)
        for line in unmet_switches(self.settings.switches, {loader.name for loader in self.loaders}, self.rank):
            self._say(line)
        try:
            self._remember(sums)
        except Exception as exc:  # noqa: BLE001 - the history is a help, never the script's failure
            self._say(f"nothing was remembered of this run ({type(exc).__name__}: {exc})")

    def run_memory(self) -> Any:
        """This script's run in the run history, made on first use (``--forget``: autotune searches anew)."""
        if self._memory is None:
            from loadertop.core.probe.remembering import script_memory

            self._memory = script_memory(forget=self.settings.forget, say=self._say, started=self._started_at)
        return self._memory

    def _remember(self, sums: dict[tuple[str, int], list[float]]) -> None:
        """Each loader's batches per worker count, and its stage figures, to the run history (the run's end)."""
        from loadertop.core.measure.limits import current_limits
        from loadertop.core.policy.stages import to_wire
        from loadertop.core.probe.remembering import script_loader

        memory = self.run_memory()
        cores = current_limits().cores
        loaders = []
        for loader in self.loaders:
            rows = [
                {
                    "num_workers": workers,
                    "batches": int(batches),
                    "load_ms_mean": load_s / batches * 1000,
                    "compute_ms_mean": step_s / batches * 1000,
                    "samples_per_s": samples / (load_s + step_s) if load_s + step_s > 0 else None,
                }
                for (name, workers), (batches, load_s, step_s, samples, *_) in sums.items()
                if name == loader.name and batches
            ]
            if not rows:
                continue
            stages = [to_wire(figures, cores) for figures in loader.stages() if figures.samples or figures.off]
            loaders.append((script_loader(memory.program, loader, self.own_rank()), rows, stages))
        memory.finished(loaders)

    # ----------------------------------------------------------------- end

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, value, tb))
        self._put(("exception", text))
        self._previous_excepthook(kind, value, tb)

    def close(self) -> None:
        """Write what is queued and the summary (at the script's exit), then close the socket and the claim."""
        self._autotune.stop()
        super().close()
        release(self.settings.claim)
