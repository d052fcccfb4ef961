"""The trainer: trains a workload in a background thread and hot-restarts its DataLoader on request."""

from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from loadertop.core.measure.cost import TreeCpu, TreeCpuClock
from loadertop.core.measure.memory import TreeMemory
from loadertop.core.measure.store import MetricsStore
from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader import DataLoader, LoaderBatch, batch_len
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.core.protocol.status import ExitedWorker, TrainerError, TrainerState, TrainerStatus
from loadertop.core.train.resumable_sampler import ResumableSampler
from loadertop.core.train.workload import (
    IndexedDataset,
    SampleError,
    Workload,
    WorkloadError,
    check_picklable,
    sample_index_of,
)

# loadertop reports too many workers in its own words; PyTorch's warning would land on the TUI's screen.
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)


def resolve_device(device: str) -> torch.device:
    """Map ``auto|cpu|cuda[:N]`` to a torch device; ``auto`` picks CUDA when available.

    Raises:
        ValueError: for an unknown name or CUDA asked for where there is none.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto")
        return torch.device(device)
    raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")


def _ignore_sigint_in_worker(worker_id: int) -> None:
    """Workers leave Ctrl+C to the main process, which shuts them down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_SIGNAL_CAUSES = {
    signal.SIGKILL: "likely the kernel's out-of-memory killer (see dmesg); fewer workers or smaller batches "
                    "need less memory",
    signal.SIGBUS: "likely /dev/shm is full: workers hand batches over through it (in Docker raise --shm-size; "
                   "or lower the batch size or prefetch_factor)",
    signal.SIGSEGV: "a crash in native code the dataset called",
    signal.SIGTERM: "stopped from outside loadertop",
}


class WorkerDied(RuntimeError):
    """One or more DataLoader workers ended while the loader ran; the message says which and why."""

    def __init__(self, dead: list[tuple[int, int, int | None]]) -> None:
        parts = []
        for worker_id, pid, code in dead:
            if code is not None and code < 0:
                try:
                    sig = signal.Signals(-code)
                    name, cause = sig.name, _SIGNAL_CAUSES.get(sig)
                except ValueError:
                    name, cause = f"signal {-code}", None
                parts.append(f"DataLoader worker {worker_id} (pid {pid}) was killed by {name}"
                             + (f": {cause}" if cause else ""))
            else:
                parts.append(f"DataLoader worker {worker_id} (pid {pid}) exited with code {code}")
        super().__init__("; ".join(parts) or "a DataLoader worker exited unexpectedly")


def _dead_workers(iterator: Any) -> list[tuple[int, int, int | None]]:
    """(worker id, pid, exit code) of the iterator's workers that are no longer alive."""
    dead = []
    for worker_id, process in enumerate(torch_compat.worker_processes(iterator)):
        try:
            if not process.is_alive():
                dead.append((worker_id, process.pid, process.exitcode))
        except (AssertionError, ValueError):  # a process object already closed
            continue
    return dead


def _worker_death(iterator: Any, exc: BaseException, grace_s: float = 1.0) -> WorkerDied | None:
    """The death of a worker behind ``exc``, or None when every worker is alive.

    A worker killed while it hands a batch over shows up in the main process as whatever
    the transfer hit: PyTorch's "exited unexpectedly", or a ConnectionResetError or
    EOFError while the batch's shared memory handle is received. The dead process may not
    be reaped yet at that moment, so for those errors its exit is waited for briefly.
    """
    if not torch_compat.worker_processes(iterator):
        return None
    says_exited = isinstance(exc, RuntimeError) and "exited unexpectedly" in str(exc)
    deadline = time.monotonic() + (grace_s if says_exited or isinstance(exc, (OSError, EOFError)) else 0.0)
    while True:
        dead = _dead_workers(iterator)
        if dead:
            return WorkerDied(dead)
        if time.monotonic() >= deadline:
            return WorkerDied([]) if says_exited else None
        time.sleep(0.02)


class NonFiniteLoss(ArithmeticError):
    """The loss became NaN or infinite (the run stops unless told to go on)."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"the loss is {loss} at step {step}: training diverged (a lower learning rate, gradient "
                         "clipping or a data check may help); --on-nan continue keeps going")
        self.step = step


class _Stop(Exception):
    """Internal: leave the loop because a stop was requested."""


class _Start(NamedTuple):
    """A (re)start whose first batch is still to come: recorded then as a StartEvent.

    Attributes:
        reason: ``start``, ``restart`` or ``epoch``.
        requested_at: ``perf_counter()`` when it was asked for (its latency is measured from here).
        iter_at: when the epoch's ``iter()`` began, for a start that waits for it (None: a switch in ``next()``).
    """

    reason: str
    requested_at: float
    iter_at: float | None = None


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

        self._lock = threading.Condition()
        self._config = config
        self._pending: LoaderConfig | None = None
        self._pending_since = 0.0
        self._pending_overlap: bool | None = None
        self._stop_requested = False
        self._paused = False
        self._state = TrainerState.IDLE
        self._error: TrainerError | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._worker_pids: tuple[int, ...] = ()
        self._starts = 0
        self._picklable_for: set[str | None] = set()
        self._nonfinite_steps = 0
        self._first_nonfinite_step: int | None = None
        self.cpu_clock = TreeCpuClock()
        self._cost_open = False
        self._cost_config: LoaderConfig | None = None
        self._applied: dict[str, Any] = {}  # the loader's settings now
        # Switches asked of the loader and not yet handed over (an overlapped switch hands over a few
        # batches later): (configuration, its settings, when it was asked), oldest first.
        self._handovers: deque[tuple[LoaderConfig, dict[str, Any], float]] = deque()
        self._handed_over: float | None = None  # a switch just handed over: when it was asked
        self._delivering: dict[str, Any] = {}  # the settings of the workers delivering now
        self._delivery: LoaderBatch | None = None  # the batch the loader handed over last
        self._worker_spawns = 0
        self._workers_since = 0.0
        self._exited_workers: tuple[ExitedWorker, ...] = ()

        # Progress, written by the training thread only.
        self._epoch = 0  # 0-based
        self._position = 0  # samples of the current epoch consumed
        self._batch_in_epoch = 0
        self._step = 0
        self._t_start = 0.0

    # ----------------------------------------------------------------- commands

    def start(self) -> None:
        """Start the training thread (once)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the trainer was already started")
            self._state = TrainerState.STARTING
            self._t_start = time.perf_counter()
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
            if self._thread is not None and self._state.is_done:
                self._launch_again(config)
                return
            if self._pending is None:
                self._pending_since = time.perf_counter()
            self._pending = config
            self._pending_overlap = overlap
            self._lock.notify_all()

    def _launch_again(self, config: LoaderConfig) -> None:
        """Start a new training thread after the last one ended (caller holds the lock)."""
        old = self._thread
        if old is not None:
            old.join(5.0)  # it set _done and is returning
        if self._state is TrainerState.FINISHED:
            if self.max_batches is not None and self._step >= self.max_batches:
                self.max_batches += self._max_batches_per_run or 0
            else:
                self.epochs = self._epoch + self._epochs_per_run
        self._config = config
        self._pending = None
        self._pending_since = time.perf_counter()
        self._stop_requested = False
        self._paused = False
        self._error = None
        self._state = TrainerState.RESTARTING
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, kwargs={"reason": "restart"}, name="loadertop-trainer", daemon=True
        )
        self._thread.start()

    def pause(self) -> None:
        """Pause at the next batch boundary."""
        with self._lock:
            self._paused = True
            self._lock.notify_all()

    def resume(self) -> None:
        """Resume after ``pause``."""
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def stop(self) -> None:
        """Ask the training thread to stop at the next batch boundary; see ``join``."""
        with self._lock:
            self._stop_requested = True
            self._lock.notify_all()

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
        return self._state

    @property
    def error(self) -> TrainerError | None:
        """Why the run failed, once it has."""
        return self._error

    @property
    def config(self) -> LoaderConfig:
        """The running loader configuration."""
        return self._config

    @property
    def batches_per_epoch(self) -> int:
        """Batches in a full epoch at the running batch size."""
        return math.ceil(self._num_samples / self._config.batch_size)

    def status(self) -> TrainerStatus:
        """A frozen view of progress, for displays."""
        with self._lock:
            return TrainerStatus(
                state=self._state,
                config=self._config,
                pending=self._pending,
                device=str(self.device),
                epoch=min(self._epoch + 1, self.epochs),
                epochs=self.epochs,
                batch_in_epoch=self._batch_in_epoch,
                batches_per_epoch=self.batches_per_epoch,
                step=self._step,
                max_batches=self.max_batches,
                elapsed_s=(time.perf_counter() - self._t_start) if self._t_start else 0.0,
                worker_pids=self._worker_pids,
                error=self._error,
                nonfinite_steps=self._nonfinite_steps,
                first_nonfinite_step=self._first_nonfinite_step,
                worker_spawns=self._worker_spawns,
                exited_workers=self._exited_workers,
            )

    def kill_workers(self) -> list[int]:
        """Terminate the running loader's workers (when a stop must not wait for their batch); their pids.

        The training thread's DataLoader then notices within a second and the thread ends.
        """
        killed = []
        for pid in self._worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                continue
        return killed

    def worker_pids(self) -> tuple[int, ...]:
        """Pids of the running loader's worker processes, in worker-id order."""
        return self._worker_pids

    def sample_cost(self, memory: TreeMemory | None = None) -> None:
        """Read the tree's CPU clock now, for the running configuration's figures so far and its peak RSS.

        Call it from a sampling thread (e.g. a SystemSampler's ``on_sample``, with its snapshot's
        ``memory``: the tree's PSS and the workers' USS count toward the running configuration): what
        each configuration finally costs is accounted at its boundaries by the training thread,
        whatever the sampling interval; this only keeps the running one's figures fresh.
        """
        self.store.tick_cost(self.cpu_clock.read())
        if memory is not None:
            self.store.tick_memory(memory)

    # ------------------------------------------------------------ cost boundaries

    def _open_cost(self, config: LoaderConfig, reading: TreeCpu | None = None) -> None:
        """``config`` starts (or resumes) running: its CPU is accounted from now (or from ``reading``)."""
        if not self._cost_open:
            self.store.open_cost(config, reading or self.cpu_clock.read())
            self._cost_open = True
            self._cost_config = config

    def _close_cost(self, reading: TreeCpu | None = None) -> None:
        """The running configuration stops (restart, pause, end): credit it its CPU up to now (or ``reading``)."""
        if self._cost_open:
            self.store.close_cost(reading or self.cpu_clock.read())
            self._cost_open = False
            self._cost_config = None

    def _reap_workers(self, iterator: Any) -> None:
        """Shut the iterator's workers down and reap them; their last memory counts toward the peak first.

        The clock's lock is held while they are reaped, so no reading sees a worker twice or never.
        """
        if self._cost_open and self._worker_pids:
            self.store.tick_cost(self.cpu_clock.read())
        with self.cpu_clock.lock:
            torch_compat.shutdown_workers(iterator)
        self._note_exited(time.perf_counter())

    def _note_exited(self, ended: float) -> None:
        """The running generation's workers ended at ``ended``: they become the last exited ones."""
        with self._lock:
            if self._worker_pids:
                self._exited_workers = tuple(
                    ExitedWorker(worker_id, pid, ended - self._workers_since)
                    for worker_id, pid in enumerate(self._worker_pids)
                )
            self._worker_pids = ()

    # --------------------------------------------------------------- the thread

    def _set_state(self, state: TrainerState) -> None:
        with self._lock:
            self._state = state

    def _run(self, reason: str = "start") -> None:
        final = TrainerState.FINISHED
        try:
            self._prepare()
            self._loop(reason)
        except _Stop:
            final = TrainerState.STOPPED
        except BaseException as exc:  # noqa: BLE001 - a training thread must never die silently
            final = TrainerState.ERROR
            self._error = self._describe_error(exc)
        finally:
            with self._lock:
                self._worker_pids = ()
                # A worker that died because we were stopping is not the user's error.
                if (self._stop_requested and final is TrainerState.ERROR and self._error is not None
                        and self._error.kind == "worker"):
                    final, self._error = TrainerState.STOPPED, None
                self._state = final
                self._lock.notify_all()
            self._done.set()

    def _prepare(self) -> None:
        torch_compat.install()  # the 1 s worker-liveness poll; a torch loadertop cannot drive fails here, in words
        if self._optimizer is not None:  # a run started again keeps its model and optimizer
            return
        if self.workload.num_threads is not None:
            torch.set_num_threads(self.workload.num_threads)
        torch.manual_seed(self.seed)
        model = self.workload.model.to(self.device)
        optimizer = self.workload.optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer(model.parameters())
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"the workload's optimizer factory returned {type(optimizer).__name__}, "
                    "expected a torch.optim.Optimizer"
                )
        self._optimizer = optimizer

    def _settings(self, config: LoaderConfig) -> dict[str, Any]:
        """``config`` as the instrumented loader's settings (what ``reconfigure`` takes)."""
        kwargs = config.loader_kwargs(pin_memory_allowed=self.device.type == "cuda")
        with_workers = config.num_workers > 0
        timeout = kwargs.get("timeout", self.stall_timeout_s if with_workers else 0.0)
        return {
            "num_workers": config.num_workers,
            "batch_size": config.batch_size,
            "pin_memory": kwargs["pin_memory"],
            "persistent_workers": kwargs.get("persistent_workers", False),
            "prefetch_factor": kwargs.get("prefetch_factor", 2 if with_workers else None),
            "multiprocessing_context": kwargs.get("multiprocessing_context"),
            "timeout": timeout,
        }

    def _check_picklable(self, config: LoaderConfig) -> None:
        if config.num_workers and config.start_method not in self._picklable_for:
            check_picklable(self.workload, config)  # once per start method: spawn pickles it anyway
            self._picklable_for.add(config.start_method)

    def _make_loader(self, config: LoaderConfig) -> DataLoader:
        """The run's one loader: loadertop's instrumented DataLoader, reconfigured in place at each restart."""
        self._check_picklable(config)
        settings = self._settings(config)
        generator = torch.Generator()
        generator.manual_seed(self.seed * 7919 + self._starts)
        loader = DataLoader(
            self._dataset,
            sampler=self._sampler,
            collate_fn=self.workload.collate_fn,
            worker_init_fn=_ignore_sigint_in_worker,
            generator=generator,
            drop_last=False,
            name=self.workload.name,
            **{key: value for key, value in settings.items() if value or key in ("num_workers", "batch_size")},
        )
        self._applied = self._delivering = settings
        loader.overlap = self.overlap
        loader.add_observer(self._delivered)
        loader.add_retire_hook(self._retiring)
        loader.add_boundary_hook(self._at_boundary, at_handover=True)
        loader.reaping_lock = self.cpu_clock.lock
        if self.on_loader is not None:
            self.on_loader(loader)
        return loader

    # The instrumented loader's hooks, all called in the training thread.

    def _delivered(self, batch: LoaderBatch) -> None:
        self._delivery = batch

    def _retiring(self, loader: DataLoader, pids: tuple[int, ...]) -> None:
        """A switch is about to shut the old workers down: their last memory counts toward the peak first."""
        if self._cost_open and pids:
            self.store.tick_cost(self.cpu_clock.read())

    def _at_boundary(self, loader: DataLoader) -> None:
        """A configuration begins: from here the batches are the new one's, and so is the CPU.

        A switch hands over here (overlapped: when the old workers' last batch is in; else after they
        are reaped and before the new ones start): the configuration asked for becomes the running one.
        """
        if self._handovers:
            config, self._delivering, asked = self._handovers.popleft()
            with self._lock:
                self._config = config
            self._handed_over = asked
        if self._cost_config is not self._config:
            self._note_exited(time.perf_counter())
            # The new workers of an overlapped switch are running already: their CPU so far is the new one's.
            reading = self.cpu_clock.read(apart=loader.status().worker_pids).without_apart()
            self._close_cost(reading)
            self._open_cost(self._config, reading)

    def _note_workers(self, iterator: Any, since: float) -> None:
        """The running generation's worker pids (a new generation's start is ``since``)."""
        pids = iterator.worker_pids()
        with self._lock:
            if set(pids) - set(self._worker_pids):  # a new generation (persistent workers stay)
                self._worker_spawns += len(set(pids) - set(self._worker_pids))
                self._workers_since = since
            self._worker_pids = pids

    def _switch_to(self, loader: DataLoader, config: LoaderConfig, asked: float, overlap: bool | None) -> bool:
        """A hot restart: the loader changes from its next ``next()`` on, in the running epoch (nothing lost
        or repeated), handing over once the old workers' batches are in. False: nothing to change."""
        self._check_picklable(config)
        settings = self._settings(config)
        if settings == self._applied:  # e.g. pin_memory where there is no GPU: the same workers go on
            with self._lock:
                self._config = config
            self._close_cost()
            self._open_cost(config)
            return False
        merges = bool(self._handovers) and loader.request_waiting  # the loader has not taken the last one yet
        if merges:
            self._handovers.pop()
        loader.reconfigure(overlap=overlap, **settings)
        self._applied = settings
        if merges and settings == self._delivering:  # back to what runs: the loader will change nothing
            with self._lock:
                self._config = config
            return False
        self._set_state(TrainerState.RESTARTING)
        self._handovers.append((config, settings, asked))
        return True

    def _finished(self) -> bool:
        if self.max_batches is not None and self._step >= self.max_batches:
            return True
        return self._epoch >= self.epochs

    def _take_command(self) -> tuple[LoaderConfig, float, bool | None] | None:
        """At a batch boundary: wait while paused, raise _Stop, or return a pending restart and when it was asked."""
        with self._lock:
            while True:
                if self._stop_requested:
                    raise _Stop
                if self._pending is not None:
                    config, self._pending = self._pending, None
                    return config, self._pending_since, self._pending_overlap
                if not self._paused:
                    if self._state is TrainerState.PAUSED:
                        self._state = TrainerState.RUNNING
                        self._open_cost(self._config)
                    return None
                if self._state is not TrainerState.PAUSED:
                    self._close_cost()  # a pause costs the configuration nothing
                self._state = TrainerState.PAUSED
                self._lock.wait()

    def _loop(self, reason: str) -> None:
        loader: DataLoader | None = None
        iterator: Any = None
        start: _Start | None = _Start(reason, self._t_start if reason == "start" else self._pending_since)
        try:
            while not self._finished():
                self._open_cost(self._config)  # building the loader (pickling the dataset for spawn) is its cost too
                if loader is None:
                    loader = self._make_loader(self._config)
                self._sampler.set_position(self._epoch, self._position)
                self._starts += 1
                t_iter = time.perf_counter()
                iterator = iter(loader)
                self._note_workers(iterator, t_iter)
                if start is None:  # an epoch boundary: every epoch pays for refilling the pipeline
                    start = _Start("epoch", t_iter)
                start = start._replace(iter_at=t_iter)
                outcome, start = self._consume(loader, iterator, start)
                if outcome == "max_batches":
                    break
                self._epoch += 1
                self._position = 0
                self._batch_in_epoch = 0
                # "empty": a (re)start at the very end of an epoch; its first batches, in the next
                # epoch, are still its warm-up and its start-up is still measured.
                if not self._config.persistent_workers:
                    self._reap_workers(iterator)
                    iterator = None
        except _Stop:
            raise
        except Exception as exc:
            died = _worker_death(iterator, exc) if iterator is not None else None
            if died is not None:
                raise died from exc
            raise
        finally:
            if iterator is not None:
                self._reap_workers(iterator)
            kept = torch_compat.persistent_iterator(loader) if loader is not None else None
            if kept is not None:
                self._reap_workers(kept)
            self._close_cost()

    def _consume(self, loader: DataLoader, iterator: Any, start: _Start) -> tuple[str, _Start | None]:
        """Train on batches until the epoch ends or max_batches is reached; restarts happen in between.

        Returns:
            ``"epoch_end"``, ``"max_batches"``, or ``"empty"`` when the loader had nothing left of the
            epoch; and the start still to be recorded at the next batch (a restart at an epoch's end), if any.
        """
        first = True
        # After a (re)start each worker's first batch was made during start-up, in parallel:
        # they arrive in a burst, so they are warm-up, not steady state. An epoch boundary is
        # steady state: every epoch pays for refilling the pipeline (or re-spawning workers).
        warmup_left = max(1, self._config.num_workers) if start.reason != "epoch" else 0
        while True:
            if not first:
                command = self._take_command()
                if command is not None:
                    config, requested_at, overlap = command
                    if not self._switch_to(loader, config, requested_at, overlap):
                        start = _Start("restart", requested_at)  # nothing for the loader to change: now
                        warmup_left = max(1, config.num_workers)
            else:
                # A restart asked while the loader was starting is honoured after its first batch.
                with self._lock:
                    if self._stop_requested:
                        raise _Stop
            try:
                batch = next(iterator)
            except StopIteration:
                return ("empty" if first else "epoch_end"), start
            t1 = time.perf_counter()
            delivered = self._delivery
            if self._handed_over is not None:  # a switch handed over in this next() (or this epoch's iter())
                iter_at = start.iter_at if start is not None else None
                start = _Start("restart", self._handed_over, iter_at=iter_at)
                self._handed_over = None
                warmup_left = max(1, self._config.num_workers)
            loss, accuracy, samples = self._train_step(batch)
            t2 = time.perf_counter()
            config = self._config

            if start is not None:
                if start.iter_at is not None:  # the epoch's iter(): its workers' start-up and first batch
                    startup_s = t1 - start.iter_at
                else:  # a switch inside next(): the old workers down, the new ones up, their first batch
                    startup_s = delivered.switch_s + delivered.load_s
                    self._note_workers(iterator, t1 - startup_s)
                event = StartEvent(
                    reason=start.reason,
                    config=config,
                    after_step=self._step,
                    epoch=self._epoch + 1,
                    position=self._position,
                    startup_s=startup_s,
                    latency_s=t1 - start.requested_at,
                    worker_pids=self._worker_pids,
                )
                self.store.add_start(event)
                with self._lock:
                    if self._state in (TrainerState.STARTING, TrainerState.RESTARTING):
                        self._state = TrainerState.RUNNING
                start = None

            self._position += samples
            self._batch_in_epoch += 1
            self._step += 1
            record = BatchRecord(
                step=self._step,
                epoch=self._epoch + 1,
                batch_in_epoch=self._batch_in_epoch,
                config_key=config.key,
                num_workers=config.num_workers,
                batch_size=config.batch_size,
                samples=samples,
                load_s=delivered.load_s,
                compute_s=t2 - t1,
                loss=loss,
                accuracy=accuracy,
                time=time.time(),
                elapsed_s=t2 - self._t_start,
                warmup=warmup_left > 0,
            )
            warmup_left -= 1
            self.store.add(record, config)
            if self.on_record is not None:
                self.on_record(record)
            if not math.isfinite(loss):
                with self._lock:
                    self._nonfinite_steps += 1
                    if self._first_nonfinite_step is None:
                        self._first_nonfinite_step = self._step
                if self.on_nan == "stop":
                    raise NonFiniteLoss(self._step, loss)
            first = False
            if self.max_batches is not None and self._step >= self.max_batches:
                return "max_batches", None

    def _train_step(self, batch: Any) -> tuple[float, float | None, int]:
        """Forward, backward and optimizer step; synchronised so the clock includes GPU work."""
        non_blocking = self._config.pin_memory and self.device.type == "cuda"
        batch = _to_device(batch, self.device, non_blocking)
        model = self.workload.model
        optimizer = self._optimizer
        assert optimizer is not None
        model.train()
        optimizer.zero_grad(set_to_none=True)
        if self.workload.step_fn is not None:
            loss, accuracy, samples = self._step_fn_loss(model, batch)
        else:
            loss, accuracy, samples = self._pair_loss(model, batch)
        loss.backward()
        optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if isinstance(accuracy, torch.Tensor):
            accuracy = accuracy.item()
        return float(loss.item()), (float(accuracy) if accuracy is not None else None), samples

    def _pair_loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any, int]:
        """An ``(inputs, targets)`` batch: ``loss_fn(model(inputs), targets)``, and accuracy for class labels."""
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"a batch must be (inputs, targets), got {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        inputs, targets = batch
        output = model(inputs)
        loss = self.workload.loss_fn(output, targets)
        accuracy: torch.Tensor | None = None
        if (
            isinstance(output, torch.Tensor)
            and isinstance(targets, torch.Tensor)
            and output.ndim == 2
            and targets.ndim == 1
            and not targets.is_floating_point()
        ):
            with torch.no_grad():
                accuracy = (output.argmax(dim=1) == targets).float().mean()
        return loss, accuracy, batch_len(targets if isinstance(targets, torch.Tensor) else inputs)

    def _step_fn_loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any, int]:
        """Any other batch: the workload's ``step_fn(model, batch)`` gives the loss, or ``(loss, accuracy)``."""
        assert self.workload.step_fn is not None
        result = self.workload.step_fn(model, batch)
        loss, accuracy = (result if isinstance(result, tuple) else (result, None))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"step_fn must return the loss as a scalar tensor (or (loss, accuracy)), got {type(loss).__name__}"
            )
        return loss, accuracy, batch_len(batch)

    def _describe_error(self, exc: BaseException) -> TrainerError:
        detail = "".join(traceback.format_exception(exc))
        text = str(exc)
        if isinstance(exc, SampleError) or sample_index_of(text) is not None:
            index = sample_index_of(text)
            # A worker re-raise carries the worker's traceback; the last line is the original error.
            original = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
            original = original.split("SampleError: ", 1)[-1]
            original = re.sub(r"^dataset raised at sample index -?\d+: ", "", original)
            return TrainerError("dataset", original, index, self._step, detail)
        if isinstance(exc, WorkerDied):
            return TrainerError("worker", str(exc), None, self._step, detail)
        if isinstance(exc, RuntimeError) and "DataLoader worker" in text and "exited unexpectedly" in text:
            return TrainerError("worker", text.splitlines()[0], None, self._step, detail)
        if isinstance(exc, NonFiniteLoss):
            return TrainerError("nan", str(exc), None, exc.step - 1, detail)
        if isinstance(exc, RuntimeError) and "DataLoader timed out" in text:
            config = self._config
            limit = config.timeout_s or self.stall_timeout_s
            return TrainerError(
                "timeout",
                f"no batch within the {limit:g} s timeout ({config.describe()}): a worker hangs "
                "or loads far slower than that (--timeout sets the limit)",
                None, self._step, detail,
            )
        if isinstance(exc, WorkloadError):
            return TrainerError("setup", str(exc), None, self._step, detail)
        kind = "setup" if self._step == 0 and self._optimizer is None else "step"
        first_line = text.splitlines()[0] if text else ""
        return TrainerError(kind, f"{type(exc).__name__}: {first_line}".rstrip(": "), None, self._step, detail)


def _to_device(value: Any, device: torch.device, non_blocking: bool) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in value.items()}
    return value
