"""The monitor's reading of a run's messages: what ``RemoteSession`` shows, made of the typed messages alone.

``WireDecoder`` is fed the messages a training process sent (dicts, as the codec accepts them) and
keeps what they say: one ``LoaderTrack`` (a ``MetricsStore`` and the loader's state) per DataLoader,
the loader shown, who controls the run, the autotuner's status and changes, each loader's latest stage
figures, the ranks of other nodes, the script's exception, the latest notice. It has no socket, thread
or process of its own (tests feed it lists of messages); ``RemoteSession`` owns those, feeds it under
its lock and reads its state.

How batches become records: the script measures, for each batch, the wait in ``next()``
(load) and the time from the previous batch's ``next()`` returning to this call (the loop's
work on the previous batch). So batch N's record is complete when batch N+1 arrives: its
compute time is N+1's step time. The step after an epoch's last batch also holds the end of
the epoch (validation, checkpoints): it is measured and shown, and kept out of the
steady-state figures, as the warm-up batches after each (re)start are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import psutil

from loadertop.core.measure.cost import TreeCpu, TreeCpuClock
from loadertop.core.measure.gpu_idle import GpuIdleBook
from loadertop.core.measure.store import MetricsStore
from loadertop.core.policy.autotune import Change, TunerStatus
from loadertop.core.protocol.codec import Rejections
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import (
    AutotuneEvent,
    AutotuneStatus,
    Batch,
    ChangeKind,
    Control,
    Cpu,
    CpuReason,
    Dropped,
    ExceptionEvent,
    Hello,
    LoaderUpdate,
    Log,
    MessageError,
    Peer,
    Refused,
    ServerMessage,
    StagesUpdate,
    SwitchEvent,
    TunerState,
    server_message,
)
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.core.protocol.stages import StageFigures
from loadertop.core.sessions.view import LoaderInfo

ClockOf = Callable[[int, Sequence[int]], TreeCpuClock | None]
"""``(pid, thread ids to leave out) -> the tree's CPU clock`` (None: unreadable)."""


def script_clock(pid: int, threads: Sequence[int]) -> TreeCpuClock | None:
    """The script's tree CPU clock as the script reads it (its loadertop threads left out); None if unreadable."""
    try:
        clock = TreeCpuClock(pid)
    except psutil.Error:
        return None
    clock.exclude_threads(threads)
    return clock


@dataclass
class _Pending:
    """A batch whose compute time comes with the next batch."""

    step: int
    epoch: int
    batch: int
    config: LoaderConfig
    samples: int
    load_s: float
    time: float
    warmup: bool
    loss: float = math.nan


class LoaderTrack:
    """One DataLoader's records and (re)starts, built from its batch messages."""

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.store = MetricsStore()
        self.gpu_idle = GpuIdleBook()
        """This loader's waits against the GPU's idle time (the monitor feeds it the samples it reads)."""
        self.started = started
        self.boundary: TreeCpu | None = None  # the script's CPU reading where the next configuration begins
        self.info: LoaderInfo | None = None
        self.config: LoaderConfig | None = None
        self.pending: _Pending | None = None
        self.warmup_left = 0
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    def _config(self, num_workers: int, samples: int) -> LoaderConfig:
        batch_size = self.info.batch_size if self.info is not None and self.info.batch_size else samples
        return LoaderConfig(num_workers=num_workers, batch_size=max(1, batch_size))

    def batch(self, m: Batch) -> None:
        """A batch the loop received: the previous one's record is complete (its compute is this one's step)."""
        if m.step <= self.step:  # sent again: a reconnection replays the history
            return
        load_s = m.load_ms / 1000.0
        step_s = None if m.step_ms is None else m.step_ms / 1000.0
        if self.pending is not None:
            if step_s is not None:
                self._flush(step_s, steady=True)
            else:  # the loop's work on the epoch's last batch and the epoch's end, up to this batch's request
                self._flush(max(m.time - load_s - self.pending.time, 0.0), steady=False)
        config = self._config(m.num_workers, m.samples)
        if self.config is None or config.num_workers != self.config.num_workers:
            self._start("start" if self.config is None else "restart", config, m, load_s)
        elif m.epoch != self.epoch:
            self.store.add_start(StartEvent("epoch", config, m.step - 1, m.epoch, 0, load_s, load_s))
        warmup = self.warmup_left > 0
        self.warmup_left -= 1
        self.step, self.epoch, self.batch_in_epoch = m.step, m.epoch, m.batch
        self.pending = _Pending(m.step, m.epoch, m.batch, config, m.samples, load_s, m.time, warmup)

    def _start(self, reason: str, config: LoaderConfig, m: Batch, load_s: float) -> None:
        startup_s = load_s + m.switch_ms / 1000.0
        if self.boundary is not None:  # the training loader's: the process tree's CPU is billed to it
            self.store.close_cost(self.boundary)
            self.store.open_cost(config, self.boundary)
            self.boundary = None
        self.store.add_start(StartEvent(reason, config, m.step - 1, m.epoch, 0, startup_s, startup_s))
        self.config = config
        self.warmup_left = max(1, config.num_workers)

    def cpu(self, m: Cpu) -> None:
        """The script's own reading of its tree's CPU: where a configuration begins, and at its end."""
        reading = TreeCpu(time=m.time, main_s=m.main_s, children_s=m.children_s, rss_bytes=m.rss_bytes)
        if m.reason == CpuReason.BOUNDARY:
            self.boundary = reading
        else:
            self.store.close_cost(reading)

    def log(self, step: int, metrics: Mapping[str, object]) -> None:
        """A logged loss for batch ``step``: the latest one's, or an earlier one's (a framework that fetches
        ahead, as accelerate does under the Hugging Face Trainer, logs a batch after the next arrived)."""
        loss = metrics.get("loss")
        if not isinstance(loss, (int, float)):
            return
        if self.pending is not None and self.pending.step == step:
            self.pending.loss = float(loss)
        elif self.pending is None or step < self.pending.step:
            self.store.set_loss(step, float(loss))

    def _flush(self, compute_s: float, *, steady: bool) -> None:
        p = self.pending
        assert p is not None
        self.pending = None
        record = BatchRecord(
            step=p.step,
            epoch=p.epoch,
            batch_in_epoch=p.batch,
            config_key=p.config.key,
            num_workers=p.config.num_workers,
            batch_size=p.config.batch_size,
            samples=p.samples,
            load_s=p.load_s,
            compute_s=compute_s,
            loss=p.loss,
            accuracy=None,
            time=p.time + compute_s,
            elapsed_s=p.time + compute_s - self.started,
            warmup=p.warmup or not steady,
        )
        self.store.add(record, p.config)
        if not record.warmup:
            load_end = record.time - record.compute_s
            self.gpu_idle.add_batch(record.num_workers, load_end - record.load_s, load_end, record.time)

    def end(self) -> None:
        """The script is gone: its last batch is kept with the step time that was measured (none)."""
        if self.pending is not None:
            self._flush(0.0, steady=False)


class WireDecoder:
    """What a run's messages say, as the monitor shows it (see the module's docstring). Not thread-safe: its
    owner feeds and reads it under one lock.

    Args:
        command: the run's command line when known (else its hello's).
        log_path: the file its output goes to when known (else its hello's).
        server_pid: the pid serving the socket when known (attach; else its hello's).
        rejections: where a message of a known type with wrong fields is counted (``malformed``); the codec's
            reader's, so that one count holds both.
        clock_of: makes the script's CPU clock from its hello (a test passes one that reads nothing).
    """

    def __init__(
        self,
        *,
        command: Sequence[str] = (),
        log_path: str | None = None,
        server_pid: int | None = None,
        rejections: Rejections | None = None,
        clock_of: ClockOf = script_clock,
    ) -> None:
        self.command = tuple(command)
        self.log_path = log_path
        self.server_pid = server_pid
        self.rejections = rejections if rejections is not None else Rejections()
        self._clock_of = clock_of
        self.started = time.time()
        self.tracks: dict[str, LoaderTrack] = {}
        self.selected: str | None = None
        self.chosen = False  # the user picked a loader: the training one no longer takes over
        self.controller: int | None = None
        self.controller_id: str | None = None
        self.dropped = 0  # messages the server dropped for this monitor
        self.script_dropped = 0  # batch records the script's writer dropped
        self.notice: tuple[int, str] = (0, "")
        self.traceback: str | None = None
        self.traceback_at = math.inf
        """When the script's exception arrived (monotonic): which of several ranks failed first."""
        self.builtin: str | None = None  # the workload's name when the run is loadertop's own trainer
        self.kept_by: str | None = None  # who keeps control when no monitor can have it
        self.peers: dict[int, Peer] = {}  # ranks on other nodes, as the job's store tells of them
        self.tune_status: AutotuneStatus | None = None  # the script's latest ``autotune`` message
        self.tune_changes: list[Change] = []  # its autotuner's changes, oldest first
        self.clock: TreeCpuClock | None = None  # the script's tree, read from here between its own readings
        self.stages: dict[str, tuple[StageFigures, ...]] = {}  # loader -> its latest stage figures, per worker count

    # ------------------------------------------------------------ feeding

    def feed(self, messages: Iterable[Mapping[str, object]]) -> None:
        """Read ``messages`` in order (as the codec accepts them); one of wrong fields is counted as malformed."""
        for wire in messages:
            try:
                message = server_message(wire)
            except MessageError:
                self.rejections.malformed += 1
                continue
            self.apply(message)

    def apply(self, m: ServerMessage) -> None:
        """Take in one typed message."""
        if isinstance(m, Batch):
            track = self.tracks.get(m.loader)
            if track is not None:
                track.batch(m)
        elif isinstance(m, LoaderUpdate):
            self._loader(m)
        elif isinstance(m, Cpu):
            track = self.tracks.get(m.loader)
            if track is not None:
                track.cpu(m)
        elif isinstance(m, Log):
            track = self.tracks.get(m.loader)
            if track is not None:
                track.log(m.step, m.metrics)
        elif isinstance(m, Hello):
            self._hello(m)
        elif isinstance(m, Control):
            self.controller, self.controller_id = m.controller, m.controller_id
        elif isinstance(m, Refused):
            self.say(f"refused: {m.reason}")
        elif isinstance(m, Dropped):
            self.dropped += m.count
        elif isinstance(m, ExceptionEvent):
            self.traceback = m.traceback
            self.traceback_at = time.monotonic()
        elif isinstance(m, SwitchEvent):
            self.say(f"{m.loader}: {m.from_workers} -> {m.to_workers} workers after batch {m.after_step}")
        elif isinstance(m, AutotuneEvent):
            change = Change(
                m.change,
                m.from_workers,
                m.to_workers,
                m.reason,
                m.predicted,
                math.inf if m.ceiling is None else m.ceiling,
            )
            self.tune_changes.append(change)
            self.say(f"autotune: {change.line()}")
        elif isinstance(m, Peer):
            self.peers[m.rank] = m
        elif isinstance(m, AutotuneStatus):
            self.tune_status = m
        elif isinstance(m, StagesUpdate):
            self.stages[m.loader] = m.figures
        # history_end, the exit event and events of other kinds change nothing shown

    def _hello(self, m: Hello) -> None:
        self.server_pid = m.pid
        self.clock = self._clock_of(m.pid, m.threads)
        self.started = m.started or self.started
        self.controller, self.controller_id = m.controller, m.controller_id
        self.tune_changes = []  # a (re)connection sends every change again
        self.builtin = m.builtin or None
        self.kept_by = m.kept_by or None
        self.command = self.command or m.command
        self.log_path = self.log_path or m.log

    def _loader(self, m: LoaderUpdate) -> None:
        track = self.tracks.get(m.name)
        if track is None:
            track = self.tracks[m.name] = LoaderTrack(m.name, self.started)
        track.info = LoaderInfo(
            name=m.name,
            num_workers=m.num_workers,
            batch_size=m.batch_size,
            batches_per_epoch=m.batches_per_epoch,
            training=m.training,
            exact=m.exact,
            pending=m.pending,
            epoch=m.epoch,
            worker_pids=m.worker_pids,
        )
        self.script_dropped = max(self.script_dropped, m.dropped)
        if self.selected is None or (m.training and not self.chosen):
            self.selected = m.name

    def say(self, text: str) -> None:
        """A new notice (the count tells a front-end it is new)."""
        self.notice = (self.notice[0] + 1, text)

    def end(self) -> None:
        """The script is gone: every loader's last batch becomes a record."""
        for track in self.tracks.values():
            track.end()

    # ------------------------------------------------------------ reading

    def selected_track(self) -> LoaderTrack | None:
        """The loader shown and commanded."""
        return self.tracks.get(self.selected) if self.selected is not None else None

    def training_track(self) -> LoaderTrack | None:
        """The training loader (its tree's CPU and memory are billed to it)."""
        return next((t for t in self.tracks.values() if t.info is not None and t.info.training), None)

    def selected_stages(self) -> tuple[StageFigures, ...] | None:
        """The shown loader's latest stage figures (None: it has sent none, e.g. a script of an older loadertop)."""
        return self.stages.get(self.selected) if self.selected is not None else None

    def loaders(self) -> tuple[LoaderInfo, ...]:
        """Every loader that has reported itself, in creation order."""
        return tuple(t.info for t in self.tracks.values() if t.info is not None)

    def select_next(self) -> str | None:
        """Show and command the next DataLoader (in creation order); returns its name."""
        names = list(self.tracks)  # creation order
        if not names:
            return None
        index = names.index(self.selected) if self.selected in names else -1
        self.selected = names[(index + 1) % len(names)]
        self.chosen = True
        return self.selected

    def autotune_view(self) -> TunerStatus | None:
        """The script's autotuner as it published it (None: a run that says nothing of one).

        Without a status (a built-in run publishes its changes only) the state is read off the last change.
        """
        status, changes = self.tune_status, tuple(self.tune_changes)
        if status is None:
            if not changes:
                return None
            last = changes[-1]
            state = (
                TunerState.SETTLED
                if last.kind == ChangeKind.SETTLE
                else TunerState.SWITCHING
                if last.to_workers != last.from_workers
                else TunerState.MEASURING
            )
            return TunerStatus(state, last.to_workers, changes, last.predicted, last.ceiling)
        return TunerStatus(
            status.state,
            status.workers,
            changes,
            status.predicted,
            math.inf if status.ceiling is None else status.ceiling,
        )
