"""The trainer: trains a workload in a background thread and hot-restarts its DataLoader on request.

``Trainer`` wires the parts, each in its own module: the mailbox (commands and state), the loader's settings
(``loaders``), the handover of switches, the cost boundaries, the worker generations, the epoch loop, the step
and the diagnosis of what went wrong.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from loadertop.core.measure.cost import TreeCpuClock
from loadertop.core.measure.memory import TreeMemory
from loadertop.core.measure.store import MetricsStore
from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader import DataLoader
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.protocol.stages import TO_DEVICE, StageFigures
from loadertop.core.protocol.status import TrainerError, TrainerState, TrainerStatus
from loadertop.core.train.costs import CostBoundaries
from loadertop.core.train.diagnosis import NonFiniteLoss, WorkerDied, describe_error
from loadertop.core.train.epochs import EpochLoop, Progress
from loadertop.core.train.handover import Handover
from loadertop.core.train.loaders import LoaderSettings, build_loader
from loadertop.core.train.mailbox import Mailbox, Stop
from loadertop.core.train.resumable_sampler import ResumableSampler
from loadertop.core.train.step import prepare_model, resolve_device, train_step
from loadertop.core.train.workers import WorkerGenerations
from loadertop.core.train.workload import IndexedDataset, Workload

# What other modules import from here: the trainer, and the names it raises and reports with.
__all__ = ["NonFiniteLoss", "Trainer", "TrainerError", "TrainerState", "WorkerDied", "resolve_device"]


class Trainer:
    """Trains ``workload`` in a background thread; every batch goes to ``store``.

    Commands (``pause``, ``resume``, ``restart``, ``stop``) may come from any
    thread and take effect at the next batch boundary. Restart requests do not
    queue: the last one wins.

    Args:
        workload: what to train.
        config: the first loader configuration.
        epochs: epochs to train before finishing.
        max_batches: stop after this many batches in all (None: no limit).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the epoch order and the model's randomness.
        store: where records go (a new MetricsStore by default).
        on_record: called in the training thread after each batch, with the record;
            keep it cheap. It may call ``restart`` to switch at an exact step.
        on_nan: ``"stop"`` (an error naming the step) or ``"continue"`` when the loss is NaN or infinite.
        stall_timeout_s: a DataLoader timeout for configurations that set none (0: none), so a
            hung worker ends in an error instead of a frozen run.
    """

    def __init__(
        self,
        workload: Workload,
        config: LoaderConfig,
        *,
        epochs: int = 5,
        max_batches: int | None = None,
        device: str = "auto",
        seed: int = 0,
        store: MetricsStore | None = None,
        on_record: Callable[[BatchRecord], None] | None = None,
        on_nan: str = "stop",
        stall_timeout_s: float = 0.0,
        overlap: bool = True,
    ) -> None:
        config.validate()
        if on_nan not in ("stop", "continue"):
            raise ValueError(f"on_nan must be 'stop' or 'continue', got {on_nan!r}")
        if stall_timeout_s < 0:
            raise ValueError(f"stall timeout must be >= 0 s, got {stall_timeout_s}")
        self.on_nan = on_nan
        self.time_stages = True
        """Whether each sample's stages are timed in the workers (``loadertop.DataLoader.time_stages``); read when
        a loader is made."""
        self._loader: DataLoader | None = None
        self.stall_timeout_s = stall_timeout_s
        self.overlap = overlap
        """Hot restarts start the new workers while the old ones deliver (``loadertop.DataLoader.overlap``);
        False: the old workers stop first, and a restart applies at the very next batch."""
        workload.validate()
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max batches must be >= 1, got {max_batches}")
        self.workload = workload
        self.device = resolve_device(device)
        self.seed = seed
        self.epochs = epochs
        self.max_batches = max_batches
        self._epochs_per_run = epochs
        self._max_batches_per_run = max_batches
        self.store = store if store is not None else MetricsStore()
        self.on_record = on_record
        self.on_loader: Callable[[DataLoader], None] | None = None
        """Called in the training thread with each run's loader as it is made (a publisher watches it)."""

        self._dataset = IndexedDataset(workload.dataset)
        self._num_samples = len(self._dataset)
        self._sampler = ResumableSampler(self._num_samples, seed=seed)
        self._optimizer: torch.optim.Optimizer | None = None
        self._error: TrainerError | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

        self.cpu_clock = TreeCpuClock()
        self._mailbox = Mailbox(config)
        self._lock = self._mailbox.lock
        self._costs = CostBoundaries(self.store, self.cpu_clock)
        self._generations = WorkerGenerations(self._lock)
        self._settings = LoaderSettings(workload, cuda=self.device.type == "cuda", stall_timeout_s=stall_timeout_s)
        self._handover = Handover(self._mailbox, self._costs, self._generations, self._settings)
        self._progress = Progress()  # written by the training thread only

    # ----------------------------------------------------------------- commands

    def start(self) -> None:
        """Start the training thread (once)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the trainer was already started")
            self._mailbox.state = TrainerState.STARTING
            self._progress.t_start = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="loadertop-trainer", daemon=True)
        self._thread.start()

    def restart(self, config: LoaderConfig, *, overlap: bool | None = None) -> None:
        """Hot-restart with ``config`` at the next batch boundary (the last request wins).

        ``overlap`` (default: the trainer's ``overlap``): start the new workers while the old ones
        deliver, handing over a few batches later; False: stop the old ones first, so that the new
        configuration's batches begin at the very next one (the sweep measures exact windows so).

        After the run has ended (finished, failed or stopped) this starts it again with
        ``config``, keeping the model, the optimizer, the step count and the store: a
        failed run retries from the batch that failed; a finished one trains for as
        many epochs (or ``max_batches``) again.
        """
        config.validate()
        with self._lock:
            if self._thread is not None and self._mailbox.state.is_done:
                self._launch_again(config)
                return
            self._mailbox.post_switch(config, overlap)

    def _launch_again(self, config: LoaderConfig) -> None:
        """Start a new training thread after the last one ended (caller holds the lock)."""
        old = self._thread
        if old is not None:
            old.join(5.0)  # it set _done and is returning
        if self._mailbox.state is TrainerState.FINISHED:
            if self.max_batches is not None and self._progress.step >= self.max_batches:
                self.max_batches += self._max_batches_per_run or 0
            else:
                self.epochs = self._progress.epoch + self._epochs_per_run
        self._mailbox.rearm(config)
        self._error = None
        self._mailbox.state = TrainerState.RESTARTING
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, kwargs={"reason": "restart"}, name="loadertop-trainer", daemon=True
        )
        self._thread.start()

    def pause(self) -> None:
        """Pause at the next batch boundary."""
        self._mailbox.pause()

    def resume(self) -> None:
        """Resume after ``pause``."""
        self._mailbox.resume()

    def stop(self) -> None:
        """Ask the training thread to stop at the next batch boundary; see ``join``."""
        self._mailbox.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the training thread to end; True when it has."""
        thread = self._thread
        if thread is None:
            return True
        # Wait on an event, not Thread.join: a signal handler that raises inside
        # Thread.join (Ctrl+C, SIGTERM in headless runs) can leave is_alive() wrong.
        if not self._done.wait(timeout):
            return False
        thread.join(5.0)  # it is only returning now
        return not thread.is_alive()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop and wait; True when the thread (and so every worker) is gone."""
        self.stop()
        return self.join(timeout)

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> TrainerState:
        """The current state."""
        return self._mailbox.state

    @property
    def error(self) -> TrainerError | None:
        """Why the run failed, once it has."""
        return self._error

    @property
    def config(self) -> LoaderConfig:
        """The running loader configuration."""
        return self._mailbox.config

    @property
    def batches_per_epoch(self) -> int:
        """Batches in a full epoch at the running batch size."""
        return math.ceil(self._num_samples / self._mailbox.config.batch_size)

    def status(self) -> TrainerStatus:
        """A frozen view of progress, for displays."""
        mailbox, progress, workers = self._mailbox, self._progress, self._generations
        with self._lock:
            return TrainerStatus(
                state=mailbox.state,
                config=mailbox.config,
                pending=mailbox.pending,
                device=str(self.device),
                epoch=min(progress.epoch + 1, self.epochs),
                epochs=self.epochs,
                batch_in_epoch=progress.batch_in_epoch,
                batches_per_epoch=self.batches_per_epoch,
                step=progress.step,
                max_batches=self.max_batches,
                elapsed_s=(time.perf_counter() - progress.t_start) if progress.t_start else 0.0,
                worker_pids=workers.pids,
                error=self._error,
                nonfinite_steps=progress.nonfinite_steps,
                first_nonfinite_step=progress.first_nonfinite_step,
                worker_spawns=workers.spawns,
                exited_workers=workers.exited,
            )

    def stages(self) -> tuple[StageFigures, ...]:
        """Where the samples' time went, per worker count run (``loadertop.DataLoader.stages``)."""
        loader = self._loader
        return loader.stages() if loader is not None else ()

    def kill_workers(self) -> list[int]:
        """Terminate the running loader's workers (when a stop must not wait for their batch); their pids.

        The training thread's DataLoader then notices within a second and the thread ends.
        """
        return self._generations.kill()

    def worker_pids(self) -> tuple[int, ...]:
        """Pids of the running loader's worker processes, in worker-id order."""
        return self._generations.pids

    def sample_cost(self, memory: TreeMemory | None = None) -> None:
        """Read the tree's CPU clock now, for the running configuration's figures so far and its peak RSS.

        Call it from a sampling thread (e.g. a SystemSampler's ``on_sample``, with its snapshot's
        ``memory``: the tree's PSS and the workers' USS count toward the running configuration): what
        each configuration finally costs is accounted at its boundaries by the training thread,
        whatever the sampling interval; this only keeps the running one's figures fresh.
        """
        self._costs.sample(memory)

    # --------------------------------------------------------------- the thread

    def _run(self, reason: str = "start") -> None:
        final = TrainerState.FINISHED
        try:
            self._prepare()
            self._epoch_loop().run(reason)
        except Stop:
            final = TrainerState.STOPPED
        except BaseException as exc:  # noqa: BLE001 - a training thread must never die silently
            final = TrainerState.ERROR
            self._error = describe_error(
                exc,
                step=self._progress.step,
                prepared=self._optimizer is not None,
                config=self._mailbox.config,
                stall_timeout_s=self.stall_timeout_s,
            )
        finally:
            with self._lock:
                self._generations.pids = ()
                # A worker that died because we were stopping is not the user's error.
                if (
                    self._mailbox.stop_requested
                    and final is TrainerState.ERROR
                    and self._error is not None
                    and self._error.kind == "worker"
                ):
                    final, self._error = TrainerState.STOPPED, None
                self._mailbox.state = final
                self._lock.notify_all()
            self._done.set()

    def _prepare(self) -> None:
        torch_compat.install()  # the 1 s worker-liveness poll; a torch loadertop cannot drive fails here, in words
        if self._optimizer is None:  # a run started again keeps its model and optimizer
            self._optimizer = prepare_model(self.workload, self.device, self.seed)

    def _epoch_loop(self) -> EpochLoop:
        """This run's loop, wired to the trainer's parts (its limits as they are now)."""
        return EpochLoop(
            progress=self._progress,
            mailbox=self._mailbox,
            costs=self._costs,
            workers=self._generations,
            handover=self._handover,
            sampler=self._sampler,
            store=self.store,
            make_loader=self._make_loader,
            step=self._train_step,
            on_record=self._report,
            on_nan=self.on_nan,
            epochs=self.epochs,
            max_batches=self.max_batches,
        )

    def _make_loader(self, config: LoaderConfig) -> DataLoader:
        """The run's one loader: loadertop's instrumented DataLoader, reconfigured in place at each restart."""
        settings = self._settings(config)
        loader = build_loader(
            self.workload, self._dataset, self._sampler, settings, seed=self.seed * 7919 + self._progress.starts
        )
        loader.overlap = self.overlap
        loader.time_stages = self.time_stages
        self._loader = loader
        self._handover.attach(loader, settings)
        loader.reaping_lock = self.cpu_clock.lock
        if self.on_loader is not None:
            self.on_loader(loader)
        return loader

    def _train_step(self, batch: Any, config: LoaderConfig) -> tuple[float, float | None, int]:
        optimizer = self._optimizer
        assert optimizer is not None
        loader = self._loader
        copy_timer = loader.batch_timer(TO_DEVICE) if loader is not None and self.device.type == "cuda" else None
        return train_step(
            self.workload, optimizer, batch, self.device, pin_memory=config.pin_memory, copy_timer=copy_timer
        )

    def _report(self, record: BatchRecord) -> None:
        if self.on_record is not None:
            self.on_record(record)
