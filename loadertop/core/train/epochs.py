"""The epoch loop: one run of the training thread, epochs of batches from the run's one loader, with switches
taken between batches and every batch and (re)start recorded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from loadertop.core.measure.store import MetricsStore
from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader import DataLoader
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.core.protocol.status import TrainerState
from loadertop.core.train.costs import CostBoundaries
from loadertop.core.train.diagnosis import NonFiniteLoss, worker_death
from loadertop.core.train.handover import Handover
from loadertop.core.train.mailbox import Mailbox, Stop
from loadertop.core.train.resumable_sampler import ResumableSampler
from loadertop.core.train.workers import WorkerGenerations

Step = Callable[[Any, LoaderConfig], tuple[float, float | None, int]]
"""Trains on a batch loaded with a configuration: the loss, the accuracy (or None) and the samples."""


@dataclass
class Progress:
    """Where the run is: written by the training thread only (the non-finite counts under the trainer's lock)."""

    epoch: int = 0
    """The epoch running, 0-based."""
    position: int = 0
    """Samples of the running epoch consumed."""
    batch_in_epoch: int = 0
    step: int = 0
    """Batches trained, every run counted."""
    starts: int = 0
    """The loader's ``iter()`` calls so far."""
    t_start: float = 0.0
    """``perf_counter()`` when the trainer started (0: not yet)."""
    nonfinite_steps: int = 0
    first_nonfinite_step: int | None = None


class Start(NamedTuple):
    """A (re)start whose first batch is still to come: recorded then as a StartEvent.

    Attributes:
        reason: ``start``, ``restart`` or ``epoch``.
        requested_at: ``perf_counter()`` when it was asked for (its latency is measured from here).
        iter_at: when the epoch's ``iter()`` began, for a start that waits for it (None: a switch in ``next()``).
    """

    reason: str
    requested_at: float
    iter_at: float | None = None


class EpochLoop:
    """Trains until the run's epochs (or ``max_batches``) are done; a stop raises ``Stop``.

    Args:
        progress: where the run is; carried on from run to run.
        mailbox: the commands taken between batches, the running configuration and the state.
        costs: the CPU accounts, opened while a configuration runs.
        workers: the worker generations, noted at each ``iter()`` and reaped at the end.
        handover: the switches, asked of the loader and handed over by it.
        sampler: the epoch order, set to where the run is before each ``iter()``.
        store: where the records and start events go.
        make_loader: the run's one loader for a configuration (made at the run's first epoch).
        step: trains on a batch.
        on_record: called with each batch's record, once it is stored.
        on_nan: ``"stop"`` raises ``NonFiniteLoss`` when the loss is NaN or infinite; ``"continue"`` goes on.
        epochs: the epoch (counted from the first run's first) after which the run is done.
        max_batches: the step after which the run is done (None: no limit).
    """

    def __init__(
        self,
        *,
        progress: Progress,
        mailbox: Mailbox,
        costs: CostBoundaries,
        workers: WorkerGenerations,
        handover: Handover,
        sampler: ResumableSampler,
        store: MetricsStore,
        make_loader: Callable[[LoaderConfig], DataLoader],
        step: Step,
        on_record: Callable[[BatchRecord], None],
        on_nan: str,
        epochs: int,
        max_batches: int | None,
    ) -> None:
        self._progress = progress
        self._mailbox = mailbox
        self._costs = costs
        self._generations = workers
        self._handover = handover
        self._sampler = sampler
        self._store = store
        self._make_loader = make_loader
        self._step = step
        self._on_record = on_record
        self._on_nan = on_nan
        self._epochs = epochs
        self._max_batches = max_batches

    def _finished(self) -> bool:
        if self._max_batches is not None and self._progress.step >= self._max_batches:
            return True
        return self._progress.epoch >= self._epochs

    def run(self, reason: str) -> None:
        """Train from where the run is; ``reason``: ``start`` (the first run) or ``restart`` (a run started again).

        Raises:
            Stop: a stop was asked for.
            WorkerDied: a worker's death ended the loader (whatever error it surfaced as).
        """
        progress, mailbox = self._progress, self._mailbox
        loader: DataLoader | None = None
        iterator: Any = None
        start: Start | None = Start(reason, progress.t_start if reason == "start" else mailbox.pending_since)
        try:
            while not self._finished():
                self._costs.open(mailbox.config)  # building the loader (pickling the dataset for spawn) is its cost too
                if loader is None:
                    loader = self._make_loader(mailbox.config)
                self._sampler.set_position(progress.epoch, progress.position)
                progress.starts += 1
                t_iter = time.perf_counter()
                iterator = iter(loader)
                self._generations.note(iterator, t_iter)
                if start is None:  # an epoch boundary: every epoch pays for refilling the pipeline
                    start = Start("epoch", t_iter)
                start = start._replace(iter_at=t_iter)
                outcome, start = self._consume(loader, iterator, start)
                if outcome == "max_batches":
                    break
                progress.epoch += 1
                progress.position = 0
                progress.batch_in_epoch = 0
                # "empty": a (re)start at the very end of an epoch; its first batches, in the next
                # epoch, are still its warm-up and its start-up is still measured.
                if not mailbox.config.persistent_workers:
                    self._generations.reap(iterator, self._costs)
                    iterator = None
        except Stop:
            raise
        except Exception as exc:
            died = worker_death(iterator, exc) if iterator is not None else None
            if died is not None:
                raise died from exc
            raise
        finally:
            if iterator is not None:
                self._generations.reap(iterator, self._costs)
            kept = torch_compat.persistent_iterator(loader) if loader is not None else None
            if kept is not None:
                self._generations.reap(kept, self._costs)
            self._costs.close()

    def _consume(self, loader: DataLoader, iterator: Any, start: Start) -> tuple[str, Start | None]:
        """Train on batches until the epoch ends or max_batches is reached; restarts happen in between.

        Returns:
            ``"epoch_end"``, ``"max_batches"``, or ``"empty"`` when the loader had nothing left of the
            epoch; and the start still to be recorded at the next batch (a restart at an epoch's end), if any.
        """
        progress, mailbox, handover = self._progress, self._mailbox, self._handover
        first = True
        # After a (re)start each worker's first batch was made during start-up, in parallel:
        # they arrive in a burst, so they are warm-up, not steady state. An epoch boundary is
        # steady state: every epoch pays for refilling the pipeline (or re-spawning workers).
        warmup_left = max(1, mailbox.config.num_workers) if start.reason != "epoch" else 0
        while True:
            if not first:
                switch = mailbox.take(self._costs)
                if switch is not None and not handover.switch_to(loader, switch):
                    start = Start("restart", switch.asked_at)  # nothing for the loader to change: now
                    warmup_left = max(1, switch.config.num_workers)
            else:
                # A restart asked while the loader was starting is honoured after its first batch.
                mailbox.check_stop()
            try:
                batch = next(iterator)
            except StopIteration:
                return ("empty" if first else "epoch_end"), start
            t1 = time.perf_counter()
            delivered = handover.delivery
            assert delivered is not None  # the loader tells its observers of each batch before next() returns it
            handed_over = handover.take_handed_over()
            if handed_over is not None:  # a switch handed over in this next() (or this epoch's iter())
                iter_at = start.iter_at if start is not None else None
                start = Start("restart", handed_over, iter_at=iter_at)
                warmup_left = max(1, mailbox.config.num_workers)
            # Only this thread changes the running configuration, and only inside iter() and next().
            config = mailbox.config
            loss, accuracy, samples = self._step(batch, config)
            t2 = time.perf_counter()

            if start is not None:
                if start.iter_at is not None:  # the epoch's iter(): its workers' start-up and first batch
                    startup_s = t1 - start.iter_at
                else:  # a switch inside next(): the old workers down, the new ones up, their first batch
                    startup_s = delivered.switch_s + delivered.load_s
                    self._generations.note(iterator, t1 - startup_s)
                event = StartEvent(
                    reason=start.reason,
                    config=config,
                    after_step=progress.step,
                    epoch=progress.epoch + 1,
                    position=progress.position,
                    startup_s=startup_s,
                    latency_s=t1 - start.requested_at,
                    worker_pids=self._generations.pids,
                )
                self._store.add_start(event)
                with mailbox.lock:
                    if mailbox.state in (TrainerState.STARTING, TrainerState.RESTARTING):
                        mailbox.state = TrainerState.RUNNING
                start = None

            progress.position += samples
            progress.batch_in_epoch += 1
            progress.step += 1
            record = BatchRecord(
                step=progress.step,
                epoch=progress.epoch + 1,
                batch_in_epoch=progress.batch_in_epoch,
                config_key=config.key,
                num_workers=config.num_workers,
                batch_size=config.batch_size,
                samples=samples,
                load_s=delivered.load_s,
                compute_s=t2 - t1,
                loss=loss,
                accuracy=accuracy,
                time=time.time(),
                elapsed_s=t2 - progress.t_start,
                warmup=warmup_left > 0,
            )
            warmup_left -= 1
            self._store.add(record, config)
            self._on_record(record)
            if not math.isfinite(loss):
                with mailbox.lock:
                    progress.nonfinite_steps += 1
                    if progress.first_nonfinite_step is None:
                        progress.first_nonfinite_step = progress.step
                if self._on_nan == "stop":
                    raise NonFiniteLoss(progress.step, loss)
            first = False
            if self._max_batches is not None and progress.step >= self._max_batches:
                return "max_batches", None
