"""Headless runs: progress lines on stdout, scheduled hot restarts, a JSONL record and a summary table."""

from __future__ import annotations

import math
import queue
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from loadertop.core.drive.sweep import Sweep
from loadertop.core.measure.limits import current_limits
from loadertop.core.measure.store import ConfigSummary
from loadertop.core.policy.advice import Advice, advise, machine_facts, speed_text
from loadertop.core.policy.autotune import Budget, Change
from loadertop.core.policy.report import advice_lines, format_gpu_idle, format_stages, format_table
from loadertop.core.probe.remembering import RunMemory
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.sessions.session import Session
from loadertop.core.train.engine import Trainer, TrainerState

EXIT_OK = 0
EXIT_FAILED = 1


class Interrupted(Exception):
    """Raised in the main thread by Ctrl+C, SIGTERM or SIGHUP during a headless run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Window:
    """Running sums over the batches since the last progress line (warm-ups excluded)."""

    batches: int = 0
    samples: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0
    loss: float = 0.0
    correct: float = 0.0
    acc_samples: int = 0

    def add(self, record: BatchRecord) -> None:
        self.loss += record.loss * record.samples
        if record.accuracy is not None:
            self.correct += record.accuracy * record.samples
            self.acc_samples += record.samples
        if not record.warmup:
            self.batches += 1
            self.samples += record.samples
            self.load_s += record.load_s
            self.compute_s += record.compute_s

    def describe(self, all_samples: int) -> str:
        parts = []
        if self.batches:
            parts.append(f"load {self.load_s / self.batches * 1000:7.1f} ms")
            parts.append(f"compute {self.compute_s / self.batches * 1000:6.1f} ms")
            total = self.load_s + self.compute_s
            parts.append(f"{self.samples / total:7.0f} samples/s" if total > 0 else "")
        if all_samples:
            parts.append(f"loss {self.loss / all_samples:.3f}")
        if self.acc_samples:
            parts.append(f"acc {self.correct / self.acc_samples:.3f}")
        return "  ".join(p for p in parts if p)


def _core_note(num_workers: int) -> str:
    machine = machine_facts()
    return f" [more workers than the {machine.cores_text()}]" if num_workers > machine.usable_cores else ""


def _print_machine(out: IO[str]) -> None:
    """Where a cgroup or the affinity confines the process, a line saying what it may use and why; then any note
    on limits that could not be read. Nothing on a machine that confines nothing."""
    limits = current_limits()
    if limits.cores_confined or limits.memory_confined:
        print(f"  limits: {limits.cores_text()} | memory {limits.memory_text()}", file=out)
    for note in limits.notes:
        print(f"  note: {note}", file=out)


def run_headless(
    trainer: Trainer,
    *,
    switches: Mapping[int, int] | None = None,
    record_file: IO[str] | None = None,
    progress_interval_s: float = 5.0,
    sample_interval_s: float = 1.0,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    autotune: bool = False,
    budget: Budget | None = None,
    memory: RunMemory | None = None,
) -> int:
    """Run ``trainer`` to the end, printing progress; return the process exit code.

    Args:
        trainer: a trainer not yet started; its ``on_record`` is taken over.
        switches: ``{step: workers}``: hot-restart to ``workers`` once ``step`` batches have run.
        record_file: an open text file receiving one JSON object per batch, flushed per batch.
        progress_interval_s: the longest gap between progress lines within an epoch.
        sample_interval_s: seconds between system samples (CPU and memory cost per configuration).
        out: where progress goes (stdout by default); errors go to ``err`` (stderr).
        autotune: tune the worker count while it trains (a line for each change, with its reason).
        budget: the autotuner's budgets (default: the usable cores, half the available memory).
        memory: the run history the run is written to (autotune starts from it: ``Session``).

    Returns:
        0 when training finished, 1 when it failed, 128 + signal number when interrupted.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    pending_switches = dict(switches or {})
    records: queue.SimpleQueue[BatchRecord] = queue.SimpleQueue()

    def on_record(record: BatchRecord) -> None:
        workers = pending_switches.pop(record.step, None)
        if workers is not None:
            trainer.restart(trainer.config.with_workers(workers))
        records.put(record)

    def tuned(change: Change) -> None:
        print(f"autotune: {change.line()}", file=out, flush=True)

    session = Session(
        trainer,
        sample_interval_s=sample_interval_s,
        record_file=record_file,
        on_record=on_record,
        serve=True,
        autotune=autotune,
        budget=budget,
        on_autotune=tuned,
        memory=memory,
    )
    status = trainer.status()
    total = trainer.max_batches or status.batches_per_epoch * trainer.epochs
    print(f"loadertop: {trainer.workload.name}", file=out)
    for note in trainer.workload.notes:
        print(f"  note: {note}", file=out)
    limit = f", at most {trainer.max_batches} batches" if trainer.max_batches else ""
    threads = trainer.workload.num_threads
    threads_text = f" | torch threads {threads}" if threads is not None else ""
    print(
        f"  device {status.device} | {status.config.describe()} | {trainer.epochs} epochs "
        f"of {status.batches_per_epoch} batches{limit} ({total} batches){threads_text}"
        + _core_note(status.config.num_workers),
        file=out,
    )
    _print_machine(out)
    out.flush()

    interrupted: int | None = None
    previous = install_signal_handlers()
    try:
        try:
            session.start()
            _follow(trainer, records, progress_interval_s, out)
        except Interrupted as exc:
            interrupted = exc.signum
            print(
                f"\ninterrupted ({signal.Signals(exc.signum).name}): stopping and shutting the workers down",
                file=err,
                flush=True,
            )
    finally:
        restore_signal_handlers(previous)
        leftover = session.close()
        if leftover:
            print(f"loadertop: terminated left-over worker processes {leftover}", file=err)

    summaries = trainer.store.summaries()
    if summaries:
        advice = advise(summaries, machine_facts(session.sampler.latest()))
        print("\n" + format_table(summaries, advice), file=out)
        if len({s.num_workers for s in summaries}) > 1:
            print("\n".join(advice_lines(advice)), file=out)
    stage_lines = format_stages(trainer.stages(), current_limits().cores)
    if stage_lines:
        print("\n" + "\n".join(stage_lines), file=out)
    _print_gpu_idle(session, out)
    for step in sorted(pending_switches):
        print(f"note: --switch {step}:{pending_switches[step]} was not reached", file=out)
    out.flush()

    if interrupted is not None:
        return 128 + interrupted
    return exit_code(trainer, err)


def _print_gpu_idle(session: Session, out: IO[str]) -> None:
    """The training GPU's idle time per worker count, after the stages (nothing without a GPU)."""
    lines = format_gpu_idle(session.gpu_idle.figures(), session.gpu_idle.note)
    if lines:
        print("\n".join(lines), file=out, flush=True)


def exit_code(trainer: Trainer, err: IO[str]) -> int:
    """0 when the run ended well; 1 after printing why it failed (sample index and traceback)."""
    error = trainer.error
    if trainer.state is TrainerState.ERROR and error is not None:
        stage = f", in {error.stage}" if error.stage else ""
        where = f" (sample index {error.sample_index}{stage})" if error.sample_index is not None else ""
        print(f"loadertop: run failed at step {error.step + 1}{where}: {error.message}", file=err)
        if error.detail:
            print("details:\n" + _indent(error.detail.rstrip()), file=err)
        err.flush()
        return EXIT_FAILED
    return EXIT_OK


def _follow(trainer: Trainer, records: queue.SimpleQueue[BatchRecord], interval_s: float, out: IO[str]) -> None:
    """Print progress until the training thread ends."""
    window = _Window()
    window_samples = 0
    epoch_window = _Window()
    epoch_samples = 0
    last_line = time.monotonic()
    starts_seen = 0
    current_epoch = 1
    warned_nonfinite = False
    while True:
        done = trainer.join(0.1)
        drained = []
        while True:
            try:
                drained.append(records.get_nowait())
            except queue.Empty:
                break
        snapshot_starts = trainer.store.starts()
        for event in snapshot_starts[starts_seen:]:
            if event.reason == "restart":
                print(
                    f"step {event.after_step}: hot restart to {event.config.describe()} "
                    f"(start-up {event.startup_s * 1000:.0f} ms, epoch {event.epoch} "
                    f"continues at sample {event.position})" + _core_note(event.config.num_workers),
                    file=out,
                )
        starts_seen = len(snapshot_starts)
        for record in drained:
            if not math.isfinite(record.loss) and not warned_nonfinite:
                warned_nonfinite = True
                print(
                    f"warning: the loss is {record.loss} at step {record.step} "
                    f"({'stopping' if trainer.on_nan == 'stop' else 'going on: --on-nan continue'})",
                    file=out,
                    flush=True,
                )
            if record.epoch != current_epoch:
                _epoch_line(trainer, current_epoch, epoch_window, epoch_samples, out)
                epoch_window, epoch_samples = _Window(), 0
                window, window_samples = _Window(), 0
                last_line = time.monotonic()
                current_epoch = record.epoch
            window.add(record)
            window_samples += record.samples
            epoch_window.add(record)
            epoch_samples += record.samples
        now = time.monotonic()
        if drained and now - last_line >= interval_s and window_samples:
            status = trainer.status()
            print(
                f"  epoch {current_epoch}/{trainer.epochs} batch {status.batch_in_epoch:>4}/"
                f"{status.batches_per_epoch}  step {status.step:>6}  w{status.config.num_workers}  "
                + window.describe(window_samples),
                file=out,
                flush=True,
            )
            window, window_samples = _Window(), 0
            last_line = now
        if done:
            if epoch_samples:
                _epoch_line(trainer, current_epoch, epoch_window, epoch_samples, out)
            out.flush()
            return


def _epoch_line(trainer: Trainer, epoch: int, window: _Window, samples: int, out: IO[str]) -> None:
    print(f"epoch {epoch}/{trainer.epochs}  " + window.describe(samples), file=out, flush=True)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> dict[int, Any]:
    """Ctrl+C, SIGTERM and SIGHUP all stop the run in order (main thread only)."""
    previous: dict[int, Any] = {}
    try:
        for sig in _SIGNALS:
            previous[sig] = signal.signal(sig, _raise_interrupted)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return previous


def restore_signal_handlers(previous: dict[int, Callable[..., Any] | int | None]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def run_sweep_headless(
    trainer: Trainer,
    sweep: Sweep,
    *,
    sample_interval_s: float = 1.0,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> tuple[int, tuple[ConfigSummary, ...], Advice]:
    """Run ``sweep`` on a fresh ``trainer`` to the end, a line per count; print the table and the advice.

    Returns:
        The exit code (0, 1 when training failed, 128 + signal when interrupted), the swept
        rows in sweep order and the advice (both cover what was measured, also when cut short).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    session = Session(trainer, sample_interval_s=sample_interval_s, on_record=sweep.on_record)
    sweep.on_done = trainer.stop
    total = len(sweep.counts) * sweep.batches_per_count
    print(f"loadertop sweep: {trainer.workload.name}", file=out)
    for note in trainer.workload.notes:
        print(f"  note: {note}", file=out)
    print(
        f"  device {trainer.status().device} | batch {trainer.config.batch_size} | workers "
        f"{', '.join(map(str, sweep.counts))} | {sweep.batches_per_count} steady batches each "
        f"({total} in all, warm-up after each restart not counted)",
        file=out,
    )
    _print_machine(out)
    out.flush()
    interrupted: int | None = None
    previous = install_signal_handlers()
    reported = 0
    try:
        try:
            session.sampler.start()
            sweep.begin()
            while not trainer.join(0.2):
                reported = _report_counts(trainer, sweep, reported, out)
        except Interrupted as exc:
            interrupted = exc.signum
            print(
                f"\ninterrupted ({signal.Signals(exc.signum).name}): stopping; the counts measured so far follow",
                file=err,
                flush=True,
            )
    finally:
        restore_signal_handlers(previous)
        leftover = session.close()
        if leftover:
            print(f"loadertop: terminated left-over worker processes {leftover}", file=err)
    _report_counts(trainer, sweep, reported, out)
    rows = sweep.rows(trainer.store.summaries())
    advice = advise(rows, machine_facts(session.sampler.latest()))
    if rows:
        print("\n" + format_table(rows, advice), file=out)
        print("\n".join(advice_lines(advice)), file=out, flush=True)
    stage_lines = format_stages(trainer.stages(), current_limits().cores)
    if stage_lines:
        print("\n" + "\n".join(stage_lines), file=out, flush=True)
    _print_gpu_idle(session, out)
    code = 128 + interrupted if interrupted is not None else exit_code(trainer, err)
    return code, rows, advice


def _report_counts(trainer: Trainer, sweep: Sweep, reported: int, out: IO[str]) -> int:
    """Print a line for each count finished since ``reported``; return how many are reported now."""
    done = sweep.progress().index
    if done <= reported:
        return reported
    by_key = {s.key: s for s in trainer.store.summaries()}
    for i in range(reported, done):
        s = by_key.get(sweep.configs[i].key)
        if s is None:
            continue
        if i == sweep.planned:
            print(
                f"measuring {', '.join(map(str, sweep.counts[sweep.planned :]))} workers longer: the measurements "
                "cannot yet tell which of them are within 5% of the fastest",
                file=out,
                flush=True,
            )
        where = f"{i + 1}/{sweep.planned}" if i < sweep.planned else "longer"
        print(
            f"[{where}] {s.config.describe()}: load {s.load_ms_mean:.1f} ms, compute "
            f"{s.compute_ms_mean:.1f} ms, {speed_text(s)}, start-up {s.startup_ms:,.0f} ms, "
            f"{s.cpu_s_per_sample * 1000:.2f} CPU ms/sample",
            file=out,
            flush=True,
        )
    return done
