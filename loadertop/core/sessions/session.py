"""A live session: a trainer and a system sampler run together, seen through frozen views.

Front-ends (the TUI, tests, other tools) talk to a ``Session``: they pull a
``SessionView`` whenever they redraw and send commands; nothing is pushed to them.
``loadertop.core.sessions.replay.ReplaySession`` offers the same interface over recorded data.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from loadertop.core.drive.sweep import DEFAULT_BATCHES, Sweep
from loadertop.core.measure.gpu_idle import GpuIdleBook
from loadertop.core.measure.history import LoaderSignature, loader_signature
from loadertop.core.measure.limits import current_limits
from loadertop.core.measure.procs import reap_children
from loadertop.core.measure.store import refill_batches
from loadertop.core.measure.system import SystemSampler, SystemSnapshot
from loadertop.core.policy.advice import advise, default_counts, machine_facts
from loadertop.core.policy.autotune import AutoTuner, Budget, Change, Observation, curve_fields
from loadertop.core.policy.report import rows_json
from loadertop.core.policy.stages import to_wire as stages_to_wire
from loadertop.core.probe.autotune_host import AutotuneHost, default_budget, read_tree
from loadertop.core.probe.publisher import Publisher
from loadertop.core.probe.remembering import RunMemory
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import Hello
from loadertop.core.protocol.records import BatchRecord, record_line
from loadertop.core.protocol.stages import TURNED_OFF, StageFigures
from loadertop.core.sessions.view import SessionView
from loadertop.core.train.engine import Trainer, TrainerState

QUIT_WITHIN_S = 2.5
"""How long a stop may take, workers included, before loadertop stops waiting."""
STAGES_EVERY_S = 1.0
"""How often ``view`` reads the loader's stage figures again (its workers write them once a batch)."""


class JsonlRecorder:
    """Writes each batch record as one JSON line in the record schema, flushed at once (``--record``)."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self._lock = threading.Lock()

    def __call__(self, record: BatchRecord) -> None:
        """Append ``record``."""
        self.write(record.to_json())

    def write(self, line: dict[str, object]) -> None:
        """Append one JSON object (a batch, or an event such as ``{"event": "autotune", ...}``)."""
        with self._lock:
            self.file.write(record_line(line))
            self.file.flush()


SUMMARY_FIELDS = (
    "num_workers",
    "config",
    "batches",
    "samples_per_s",
    "samples_per_s_sem",
    "load_ms_mean",
    "compute_ms_mean",
    "cpu_percent",
    "cpu_s_per_sample",
    "pss_mb",
    "worker_uss_mb",
)
"""A configuration's row in ``--record``'s ``summary`` event at the end of a run (``record.schema.json``)."""


class Session:
    """Runs ``trainer`` with a ``SystemSampler`` that follows its workers and bills their cost.

    Args:
        trainer: a trainer not yet started.
        sample_interval_s: seconds between system samples.
        record_file: an open text file receiving one JSON line per batch.
        read_gpus: False to skip NVML.
        on_record: also called with each record, in the training thread (keep it cheap).
        monitor_thread: True when the calling thread draws a monitor (the TUI): its CPU, like the
            system sampler's, is left out of what the configurations cost.
        serve: publish the run on a socket as a launched script does, so that ``loadertop attach``
            watches it from another terminal (watching only: this process keeps control).
        autotune: tune the worker count from the start (``set_autotune`` turns it on and off later).
        budget: the autotuner's CPU and memory budgets (default: the usable cores, half the available memory).
        on_autotune: also told of every autotune change (in the tuner's thread).
        memory: the run history this run is written to (each settle, and the rows when it closes); autotune
            starts where the same loader settled last on this machine unless it was told to forget.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        sample_interval_s: float = 1.0,
        record_file: IO[str] | None = None,
        read_gpus: bool = True,
        on_record: Callable[[BatchRecord], None] | None = None,
        monitor_thread: bool = False,
        serve: bool = False,
        autotune: bool = False,
        budget: Budget | None = None,
        on_autotune: Callable[[Change], None] | None = None,
        memory: RunMemory | None = None,
    ) -> None:
        self.trainer = trainer
        self.publisher: Publisher | None = None
        if serve:
            hello = Hello(
                pid=os.getpid(),
                command=tuple(sys.argv),
                cwd=os.getcwd(),
                started=time.time(),
                log=None,
                builtin=trainer.workload.name,
            )
            self.publisher = Publisher(
                hello=hello, kept_by=f"loadertop (pid {os.getpid()}) trains this workload and keeps control"
            )
            trainer.cpu_clock.exclude_threads(self.publisher.thread_ids())
            trainer.on_loader = self.publisher.watch
        self.sampler = SystemSampler(
            interval_s=sample_interval_s,
            worker_pids=trainer.worker_pids,
            on_sample=self._on_sample,
            read_gpus=read_gpus,
            on_thread_start=lambda thread_id: self._exclude_thread(thread_id),
        )
        if monitor_thread:
            self._exclude_thread(threading.get_native_id())
        _start_resource_tracker()
        self._recorder = JsonlRecorder(record_file) if record_file is not None else None
        self._sweep: Sweep | None = None
        self._extra_on_record = on_record
        trainer.on_record = self._on_record
        self._machine = machine_facts()
        self._stages: tuple[StageFigures, ...] = ()
        self._stages_read_at = -math.inf
        self.gpu_idle = GpuIdleBook()
        """The training GPU's idle time per worker count, from the sampler's NVML samples and the batches."""
        self._closed = False
        self.autotune_log: list[tuple[int, Change]] = []
        """Every autotune change with the step (batches done) when it came."""
        told: list[Callable[[Change], None]] = [self._log_change]  # autotune_log and --record
        if self.publisher is not None:
            told.append(self.publisher.autotune)  # the attached monitors
        if on_autotune is not None:
            told.append(on_autotune)  # whoever asked (headless lines)
        tuner = AutoTuner(budget or default_budget())
        self.memory = memory
        self.signature: LoaderSignature | None = None
        if memory is not None:
            self.signature = loader_signature(
                memory.program, "train", trainer.workload.dataset, trainer.config.batch_size
            )
            memory.remember(tuner, self.signature)
            told.append(memory.listener(self.signature, tuner))
        self.tuner = AutotuneHost(
            tuner,
            apply=self._tune_to,
            read=lambda: read_tree(trainer.cpu_clock, trainer.worker_pids(), stages=trainer.stages()),
            on_change=told,
            on_thread=self._exclude_thread,
            enabled=autotune,
        )

    def _exclude_thread(self, thread_id: int) -> None:
        """A monitoring thread of this process (the sampler, the TUI): not what any configuration costs."""
        self.trainer.cpu_clock.exclude_threads([thread_id])
        if self.publisher is not None:
            self.publisher.exclude_threads([thread_id])

    def _on_sample(self, snapshot: SystemSnapshot) -> None:
        """Each system sample (the sampler's thread): the running configuration's cost and memory; ``--record``'s
        ``{"event": "memory", ...}`` line."""
        self.trainer.sample_cost(snapshot.memory)
        read = snapshot.gpu_samples
        if read is None:
            self.gpu_idle.no_gpu()
        else:
            self.gpu_idle.note = read.note
            if read.gpu is not None:
                self.gpu_idle.add_samples(read.samples, read.gpu)
        if self._recorder is not None and snapshot.memory is not None:
            config = self.trainer.config
            self._recorder.write(snapshot.memory.to_event(config.num_workers, config.key))

    def _on_record(self, record: BatchRecord) -> None:
        """The training thread's callback: the record file, the monitors, then the sweep."""
        if self._recorder is not None:
            self._recorder(record)
        if not record.warmup:  # as the steady-state figures: worker start-up is billed apart
            load_end = record.time - record.compute_s
            self.gpu_idle.add_batch(record.num_workers, load_end - record.load_s, load_end, record.time)
        if self.publisher is not None:
            self.publisher.log(
                {"loss": record.loss} if record.accuracy is None else {"loss": record.loss, "accuracy": record.accuracy}
            )
        sweep = self._sweep
        if sweep is not None:
            sweep.on_record(record)
        if self.tuner.enabled:
            self.tuner.put(
                Observation(
                    record.num_workers,
                    record.samples,
                    record.load_s,
                    record.compute_s,
                    record.time,
                    refill=record.batch_in_epoch <= refill_batches(record.num_workers),
                )
            )
        if self._extra_on_record is not None:
            self._extra_on_record(record)

    def start(self) -> None:
        """Start sampling, the autotuner's thread and training."""
        self.sampler.start()
        self.tuner.start()
        self.trainer.start()

    def set_autotune(self, enabled: bool) -> None:
        """Turn autotune on (tuning from the running count; a running sweep is cancelled) or off (the count stays)."""
        if enabled:
            self.cancel_sweep()
        self.tuner.set_enabled(enabled)

    def _tune_to(self, workers: int) -> None:
        """The tuner's switch (its thread): a hot restart as ``r`` makes one."""
        if not self.trainer.state.is_done:
            self.trainer.restart(self.trainer.config.with_workers(workers))

    def _log_change(self, change: Change) -> None:
        """A change of the tuner (its thread), with the step it came at: to ``autotune_log`` and ``--record``."""
        step = self.trainer.status().step
        self.autotune_log.append((step, change))
        if self._recorder is not None:
            self._recorder.write({**change.to_event(), "step": step})

    def view(self) -> SessionView:
        """The session now."""
        system = self.sampler.latest()
        store = self.trainer.store.snapshot()
        machine = self._machine.with_system(system)
        sweep = self._sweep
        return SessionView(
            workload_name=self.trainer.workload.name,
            notes=tuple(self.trainer.workload.notes),
            status=self.trainer.status(),
            store=store,
            system=system,
            # NVML is opened by the sampler's thread alone; until its first sample there is no answer.
            gpu_status=system.gpu_status if system is not None else "sampling",
            advice=advise(store.summaries, machine),
            sweep=sweep.progress() if sweep is not None else None,
            autotune=self.tuner.status(),
            machine=machine,
            stages=self._stage_figures(),
            gpu_idle=self.gpu_idle.figures(),
            gpu_idle_note=self.gpu_idle.note,
        )

    def _stage_figures(self) -> tuple[StageFigures, ...]:
        """The training loader's stage figures, read again at most every ``STAGES_EVERY_S`` (a few small tensors)."""
        now = time.monotonic()
        if now - self._stages_read_at < STAGES_EVERY_S:
            return self._stages
        self._stages_read_at = now
        if not self.trainer.time_stages:
            self._stages = (StageFigures(self.trainer.config.num_workers, 0, 0, (), TURNED_OFF),)
            return self._stages
        try:
            self._stages = self.trainer.stages()
        except Exception:  # noqa: BLE001, S110 - a report: the last figures stay, the monitor goes on
            pass
        return self._stages

    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None:
        """Measure each worker count in turn (default 0, 1, 2, 4, ... up to twice the usable cores).

        Training goes on across the counts; the last count keeps running when the sweep is done.
        """
        if self._sweep is not None and self._sweep.progress().state == "running":
            raise RuntimeError("a sweep is already running (Esc cancels it)")
        if self.tuner.enabled:
            raise RuntimeError("autotune is on: a turns it off before a sweep")
        sweep = Sweep(self.trainer, counts or default_counts(self._machine.core_count), batches)
        self._sweep = sweep
        sweep.begin()

    def cancel_sweep(self) -> None:
        """Stop the sweep where it is; what was measured stays."""
        if self._sweep is not None:
            self._sweep.cancel()

    def apply(self, config: LoaderConfig) -> None:
        """Hot-restart with ``config``, or start again after the run ended (last request wins)."""
        self.trainer.restart(config)

    def pause(self) -> None:
        """Pause at the next batch boundary."""
        self.trainer.pause()

    def resume(self) -> None:
        """Resume after ``pause``."""
        self.trainer.resume()

    def stop(self) -> None:
        """Ask training to stop at the next batch boundary (does not wait)."""
        self.trainer.stop()

    def close(self, timeout_s: float = QUIT_WITHIN_S) -> list[int]:
        """Stop training and sampling within ``timeout_s``; return pids that had to be terminated."""
        if self._closed:
            return []
        self._closed = True
        self.tuner.stop()
        try:  # the samples since the last read: the run's last batches get theirs
            read = self.sampler.gpu_samples_now()
            if read is not None and read.gpu is not None:
                self.gpu_idle.add_samples(read.samples, read.gpu)
        except Exception:  # noqa: BLE001, S110 - a figure: closing must go on
            pass
        left = shutdown(self.trainer, self.sampler, timeout_s=timeout_s)
        cores = current_limits().cores
        stages = self.trainer.stages()
        summaries = self.trainer.store.summaries()
        rows = rows_json(summaries, stages, cores)
        if self._recorder is not None:
            for figures in stages:
                self._recorder.write({"event": "stages", **stages_to_wire(figures, cores)})
            for idle in self.gpu_idle.figures():
                self._recorder.write({"event": "gpu_idle", **idle.to_wire()})
            for row in rows:  # the table's rows: the CPU and memory a report draws per configuration
                self._recorder.write({"event": "summary", **{k: row.get(k) for k in SUMMARY_FIELDS}})
            if summaries:  # the model's curve through what was measured, as the table's advice has it
                advice = advise(summaries, self._machine)
                self._recorder.write({"event": "model", **curve_fields(advice.predicted, advice.ceiling)})
        if self.memory is not None and self.signature is not None:
            self.memory.finished([(self.signature, rows, [stages_to_wire(f, cores) for f in stages])])
        if self.publisher is not None:
            error = self.trainer.error
            if error is not None:
                self.publisher.exception(error.detail or error.message)
            self.publisher.close()
        return left

    @property
    def state(self) -> TrainerState:
        """The trainer's state."""
        return self.trainer.state


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, while ``sys.stderr`` is a real file.

    ``spawn`` and ``forkserver`` workers need it, and it starts by passing
    ``sys.stderr.fileno()`` to the new process: under a front-end that captures stderr
    (Textual's returns -1) that fails with "bad value(s) in fds_to_keep" (textual#3593).
    """
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:  # noqa: BLE001, S110 - platforms without it simply do not need it
        pass


def shutdown(trainer: Trainer, sampler: SystemSampler | None, *, timeout_s: float = QUIT_WITHIN_S) -> list[int]:
    """Stop ``trainer`` and ``sampler`` fast, even while workers are busy with a long batch.

    The trainer stops at the next batch boundary; if that has not come within a second,
    its workers are killed, which ends the batch (the DataLoader notices within a second).
    With 0 workers a long ``__getitem__`` cannot be cut short: the training thread is a
    daemon and ends with the process. Returns the pids of left-over children terminated.
    """
    deadline = time.monotonic() + timeout_s
    trainer.stop()
    if sampler is not None:
        sampler.stop(0.5)
    if not trainer.join(min(1.0, timeout_s / 2)):
        trainer.kill_workers()
        trainer.join(max(deadline - time.monotonic() - 0.3, 0.1))
    return reap_children(timeout_s=0.3)
