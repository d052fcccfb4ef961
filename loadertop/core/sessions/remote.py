"""A session over the protocol: the monitor in its own process, watching a user's script. No torch here.

``RemoteSession`` serves the same ``SessionView`` as the built-in ``Session``, built from what
the script publishes on its socket (``loadertop.core.probe.server``): one ``MetricsStore`` per
DataLoader, fed by a client thread. The monitor samples the script's process tree itself
(psutil by pid, NVML); the per-configuration cost comes from CPU readings the script takes of
its own tree where each configuration of its training loader begins (old workers shut down,
new ones not yet started) and at its end, with loadertop's threads left out; in between, the
monitor reads the same clock from outside at each system sample (the running figures so far).
Commands go back as ``switch`` messages; ``stop`` sends the script SIGINT (then SIGTERM after a
grace period, as a terminal's ^C would be followed up), ``detach`` leaves it running.
``set_autotune`` turns the script's autotuner on or off; its status and every change it made
come back (``autotune`` and ``event`` messages) as ``SessionView.autotune``.

How batches become records: the script measures, for each batch, the wait in ``next()``
(load) and the time from the previous batch's ``next()`` returning to this call (the loop's
work on the previous batch). So batch N's record is complete when batch N+1 arrives: its
compute time is N+1's step time. The step after an epoch's last batch also holds the end of
the epoch (validation, checkpoints): it is measured and shown, and kept out of the
steady-state figures, as the warm-up batches after each (re)start are.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from loadertop.core.drive.launcher import exit_status
from loadertop.core.drive.sweep import DEFAULT_BATCHES
from loadertop.core.measure.cost import TreeCpu, TreeCpuClock
from loadertop.core.measure.store import MetricsStore
from loadertop.core.measure.system import SystemSampler
from loadertop.core.policy.advice import advise, machine_facts
from loadertop.core.policy.autotune import Change, TunerStatus, ceiling_of, curve_of
from loadertop.core.protocol.codec import LineReader, encode
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import SERVER_TYPES
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.core.protocol.runtime import runtime_dir
from loadertop.core.protocol.status import TrainerError, TrainerState, TrainerStatus
from loadertop.core.sessions.view import LoaderInfo, ScriptView, SessionView

STOP_GRACE_S = 5.0
"""After SIGINT, how long the script has to stop before SIGTERM (and as long again before SIGKILL)."""
LOG_LINES = 200
"""Lines of the script's output the monitor keeps for its log panel."""
POLL_S = 0.25
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|[\x00-\x08\x0b-\x1f\x7f]")
"""ANSI colour and cursor sequences, OSC titles and other control characters: a log line is shown as text."""


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


class _LoaderTrack:
    """One DataLoader's records and (re)starts, built from its batch messages."""

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.store = MetricsStore()
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

    def batch(self, m: dict[str, Any]) -> None:
        num_workers, epoch, step = int(m["num_workers"]), int(m["epoch"]), int(m["step"])
        if step <= self.step:  # sent again: a reconnection replays the history
            return
        load_s = float(m["load_ms"]) / 1000.0
        step_s = None if m.get("step_ms") is None else float(m["step_ms"]) / 1000.0
        returned = float(m["time"])
        if self.pending is not None:
            if step_s is not None:
                self._flush(step_s, steady=True)
            else:  # the loop's work on the epoch's last batch and the epoch's end, up to this batch's request
                self._flush(max(returned - load_s - self.pending.time, 0.0), steady=False)
        config = self._config(num_workers, int(m["samples"]))
        if self.config is None or config.num_workers != self.config.num_workers:
            self._start("start" if self.config is None else "restart", config, step, epoch, load_s, m)
        elif epoch != self.epoch:
            self.store.add_start(StartEvent("epoch", config, step - 1, epoch, 0, load_s, load_s))
        warmup = self.warmup_left > 0
        self.warmup_left -= 1
        self.step, self.epoch, self.batch_in_epoch = step, epoch, int(m["batch"])
        self.pending = _Pending(step, epoch, int(m["batch"]), config, int(m["samples"]), load_s, returned, warmup)

    def _start(self, reason: str, config: LoaderConfig, step: int, epoch: int, load_s: float,
               m: dict[str, Any]) -> None:
        startup_s = load_s + float(m.get("switch_ms") or 0.0) / 1000.0
        if self.boundary is not None:  # the training loader's: the process tree's CPU is billed to it
            self.store.close_cost(self.boundary)
            self.store.open_cost(config, self.boundary)
            self.boundary = None
        self.store.add_start(StartEvent(reason, config, step - 1, epoch, 0, startup_s, startup_s))
        self.config = config
        self.warmup_left = max(1, config.num_workers)

    def cpu(self, m: dict[str, Any]) -> None:
        """The script's own reading of its tree's CPU: where a configuration begins, and at its end."""
        reading = TreeCpu(time=float(m["time"]), main_s=float(m["main_s"]), children_s=float(m["children_s"]),
                          rss_bytes=int(m["rss_bytes"]))
        if m.get("reason") == "boundary":
            self.boundary = reading
        elif m.get("reason") == "end":
            self.store.close_cost(reading)
        else:
            self.store.tick_cost(reading)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
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
        record = BatchRecord(step=p.step, epoch=p.epoch, batch_in_epoch=p.batch, config_key=p.config.key,
                             num_workers=p.config.num_workers, batch_size=p.config.batch_size, samples=p.samples,
                             load_s=p.load_s, compute_s=compute_s, loss=p.loss, accuracy=None,
                             time=p.time + compute_s, elapsed_s=p.time + compute_s - self.started,
                             warmup=p.warmup or not steady)
        self.store.add(record, p.config)

    def end(self) -> None:
        """The script is gone: its last batch is kept with the step time that was measured (none)."""
        if self.pending is not None:
            self._flush(0.0, steady=False)


class RemoteSession:
    """A user's script seen over its socket; implements ``SessionLike``.

    Args:
        child: the script, when this process launched it (``loadertop run -- COMMAND``).
        pid: the script's pid when attaching (``loadertop attach``).
        socket_path: its socket when known (attach); a launched child's is found as it appears.
        log_path: the file its output goes to (the log panel's source).
        command: its command line.
        sample_interval_s: seconds between system samples.
        read_gpus: False to skip NVML.
        control: ask to be the run's controller (the first monitor that asks is).
        grace_s: after ``stop``'s SIGINT, seconds before SIGTERM, and again before SIGKILL.
    """

    def __init__(self, *, child: subprocess.Popen[bytes] | None = None, pid: int | None = None,
                 socket_path: Path | None = None, log_path: str | None = None, command: Sequence[str] = (),
                 sample_interval_s: float = 1.0, read_gpus: bool = True, control: bool = True,
                 grace_s: float = STOP_GRACE_S) -> None:
        if child is None and pid is None:
            raise ValueError("give the child process or the pid to watch")
        self.child = child
        self.root_pid = child.pid if child is not None else int(pid)  # type: ignore[arg-type]
        self.socket_path = socket_path
        self.command = tuple(command)
        self.log_path = log_path
        self.grace_s = grace_s
        self._want_control = control
        self._lock = threading.RLock()
        self._tracks: dict[str, _LoaderTrack] = {}
        self._selected: str | None = None
        self._chosen = False  # the user picked a loader: the training one no longer takes over
        self._server_pid: int | None = pid
        self._started = time.time()
        self._connected = False
        self._controller: int | None = None
        self._controller_id: str | None = None
        self.monitor_id = uuid.uuid4().hex[:16]  # several monitors may share a process (and a pid)
        self._dropped = 0
        self._script_dropped = 0
        self._notice: tuple[int, str] = (0, "")
        self._traceback: str | None = None
        self.traceback_at = math.inf
        self._exit_code: int | None = None
        self._gone = False
        self._stopping: float | None = None  # when SIGINT was sent
        self._detached = False
        self._builtin: str | None = None  # the workload's name when the run is loadertop's own trainer
        self._kept_by: str | None = None  # who keeps control when no monitor can have it
        self.peers: dict[int, dict[str, Any]] = {}  # ranks on other nodes, as the job's store tells of them
        self._tune_status: dict[str, Any] | None = None  # the script's latest ``autotune`` message
        self._tune_changes: list[Change] = []  # its autotuner's changes, oldest first
        self.ranks_on_node = 1
        """Training processes sharing this machine's cores (a torchrun job's ranks here): the advice's share."""
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._reader = LineReader(known=SERVER_TYPES)
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._log_offset = 0
        self._log_partial = ""
        self._clock: TreeCpuClock | None = None  # the script's tree, read from here between its own readings
        self.sampler = SystemSampler(interval_s=sample_interval_s, pid=self.root_pid, worker_pids=self._worker_pids,
                                     on_sample=self._on_sample, read_gpus=read_gpus)
        self._machine = machine_facts()
        self._thread = threading.Thread(target=self._run, name="loadertop-client", daemon=True)

    # ------------------------------------------------------------ SessionLike

    def start(self) -> None:
        """Start listening and sampling."""
        self.sampler.start()
        self._thread.start()

    def view(self) -> SessionView:
        """The script now."""
        with self._lock:
            track = self._selected_track()
            infos = tuple(t.info for t in self._tracks.values() if t.info is not None)  # in creation order
            store = track.store.snapshot() if track is not None else MetricsStore().snapshot()
            status = self._status(track)
            script = ScriptView(
                command=self.command, pid=self._server_pid, log_path=self.log_path, log_tail=tuple(self._log),
                loaders=infos, selected=self._selected, connected=self._connected, control=self._control_text(),
                ended=self._ended_text(), dropped=self._dropped + self._script_dropped,
                rejected=self._reader.rejections.total, notice=self._notice, builtin=self._builtin)
        system = self.sampler.latest()
        machine = replace(self._machine.with_system(system), ranks_on_node=self.ranks_on_node)
        name = " ".join(self.command) or f"pid {self.root_pid}"
        with self._lock:
            autotune = self._autotune_view()
        return SessionView(workload_name=name, notes=self._notes(script), status=status, store=store, system=system,
                           gpu_status=system.gpu_status if system is not None else "sampling",
                           advice=advise(store.summaries, machine), script=script, autotune=autotune,
                           machine=machine)

    def apply(self, config: LoaderConfig, *, rank: int | None = None) -> None:
        """Switch the selected loader to ``config.num_workers``; the script keeps its other settings.

        ``rank``: instead, the training loader of that rank of the same torchrun job on another node
        (the script passes it on through the job's store).
        """
        with self._lock:
            track = self._selected_track()
            sock = self._sock
        if self._ended_text() is not None:
            raise RuntimeError("the script has ended: nothing to switch (q quits)")
        if track is None or sock is None:
            raise RuntimeError("no DataLoader yet: nothing to switch")
        fields = {"loader": track.name} if rank is None else {"loader": None, "rank": rank}
        try:
            sock.sendall(encode("switch", workers=config.num_workers, **fields))
        except OSError as exc:
            raise RuntimeError(f"the script does not answer ({exc.strerror})") from None

    def set_autotune(self, enabled: bool) -> None:
        """Turn the script's autotuner on (it tunes the training loader from its running count) or off (the
        count stays). Only the controlling monitor may: the script refuses the others (``script.notice``)."""
        with self._lock:
            sock = self._sock
        if self._ended_text() is not None:
            raise RuntimeError("the script has ended: nothing to tune (q quits)")
        if sock is None:
            raise RuntimeError("not connected to the script yet: nothing to tune")
        try:
            sock.sendall(encode("autotune", enabled=bool(enabled)))
        except OSError as exc:
            raise RuntimeError(f"the script does not answer ({exc.strerror})") from None

    def select_next_loader(self) -> str | None:
        """Show and command the next DataLoader (in creation order); returns its name."""
        with self._lock:
            names = list(self._tracks)  # creation order
            if not names:
                return None
            index = names.index(self._selected) if self._selected in names else -1
            self._selected = names[(index + 1) % len(names)]
            self._chosen = True
            return self._selected

    def pause(self) -> None:
        """Scripts run their own loop: not paused from here."""
        raise RuntimeError("a script's loop is its own: loadertop cannot pause it (q stops it, d detaches)")

    resume = pause

    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None:
        """Not for scripts yet: switch counts by hand (the table compares them)."""
        raise RuntimeError("no sweep over a script yet: switch with 0-9 and r, the table compares the counts")

    def cancel_sweep(self) -> None:
        """Nothing to cancel."""

    def stop(self) -> None:
        """Stop the script as ^C would: SIGINT now; ``close`` follows up with SIGTERM if it does not end.

        A built-in run belongs to the loadertop that trains it: leaving it only detaches.
        """
        if self._builtin is not None:
            self.detach()
            return
        if self._stopping is None and not self._has_exited():
            self._stopping = time.monotonic()
            self._signal(signal.SIGINT)

    def detach(self) -> None:
        """Stop watching; the script runs on (``loadertop attach`` watches it again)."""
        self._detached = True

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked (the script's KeyboardInterrupt is then ours)."""
        return self._stopping is not None

    @property
    def detached(self) -> bool:
        """Whether ``detach`` was asked."""
        return self._detached

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """Stop listening and sampling; after ``stop``, wait for the script (SIGTERM, then SIGKILL, if it lingers)."""
        if self._stopping is not None and not self._detached:
            self._wait_for_exit()
        self._closed.set()
        self._thread.join(1.0)
        if not self._gone and not self._detached and self._has_exited():
            self._gone = True
        self.sampler.stop(0.5)
        with self._lock:
            for track in self._tracks.values():
                track.end()
        return []

    # ------------------------------------------------------------- queries

    @property
    def exit_code(self) -> int | None:
        """The script's exit code (128 + N for signal N) once it ended and this process launched it."""
        return self._exit_code

    @property
    def traceback(self) -> str | None:
        """The script's uncaught exception, as it printed it."""
        return self._traceback

    # ------------------------------------------------------------ internals

    def _autotune_view(self) -> TunerStatus | None:
        """Under the lock: the script's autotuner as it published it (None: a run that says nothing of one).

        Without a status (a built-in run publishes its changes only) the state is read off the last change.
        """
        status, changes = self._tune_status, tuple(self._tune_changes)
        if status is None:
            if not changes:
                return None
            last = changes[-1]
            state = "settled" if last.kind == "settle" else "switching" if last.to_workers != last.from_workers \
                else "measuring"
            return TunerStatus(state, last.to_workers, changes, last.predicted, last.ceiling)
        workers = status.get("workers")
        return TunerStatus(str(status.get("state") or "off"), workers if isinstance(workers, int) else None, changes,
                           curve_of(status.get("predicted")), ceiling_of(status.get("ceiling")))

    def _selected_track(self) -> _LoaderTrack | None:
        """Under the lock: the loader shown and commanded."""
        return self._tracks.get(self._selected) if self._selected is not None else None

    def _worker_pids(self) -> Sequence[int]:
        with self._lock:
            track = self._selected_track()
            return track.info.worker_pids if track is not None and track.info is not None else ()

    def _on_sample(self, snapshot: Any) -> None:
        """Each system sample: the running configuration's cost so far, from the script's CPU clock, and its
        memory (the tree's PSS and the workers' USS, read from here)."""
        with self._lock:
            clock = self._clock
            track = next((t for t in self._tracks.values() if t.info is not None and t.info.training), None)
        if clock is None or track is None or self._gone:
            return
        with contextlib.suppress(psutil.Error):
            reading = clock.read()
            with self._lock:
                track.store.tick_cost(reading)
                if snapshot.memory is not None:
                    track.store.tick_memory(snapshot.memory)

    def _has_exited(self) -> bool:
        if self.child is not None:
            code = self.child.poll()
            if code is not None:
                self._exit_code = exit_status(code)
                return True
            return False
        try:
            proc = psutil.Process(self.root_pid)
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def _signal(self, signum: int) -> None:
        """Signal the script's process group when it has one of its own (as launched), else the script alone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(self.root_pid)
            if group == self.root_pid and group != os.getpgrp():
                os.killpg(group, signum)
            else:
                os.kill(self.root_pid, signum)

    def _wait_for_exit(self) -> None:
        escalation = ((self.grace_s, signal.SIGTERM), (self.grace_s, signal.SIGKILL), (self.grace_s, None))
        for wait_s, then in escalation:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self._has_exited():
                    return
                time.sleep(0.05)
            if then is not None:
                self._signal(then)

    def _status(self, track: _LoaderTrack | None) -> TrainerStatus:
        ended = self._ended_text()
        if ended is None:
            state = TrainerState.RUNNING if self._connected else TrainerState.STARTING
            if self._stopping is not None:
                state = TrainerState.STOPPING
        elif self._failed():
            state = TrainerState.ERROR
        elif self._stopping is not None:
            state = TrainerState.STOPPED
        else:
            state = TrainerState.FINISHED
        error = None
        if state is TrainerState.ERROR:
            last = (self._traceback or "").strip().splitlines()
            message = last[-1] if last else ended or "the script failed"
            error = TrainerError("script", message, None, track.step if track is not None else 0,
                                 self._traceback or "")
        info = track.info if track is not None else None
        config = track.config if track is not None and track.config is not None else LoaderConfig(
            num_workers=info.num_workers if info is not None else 0,
            batch_size=(info.batch_size or 1) if info is not None else 1)
        pending = None
        if info is not None and info.pending is not None and info.pending != config.num_workers:
            pending = config.with_workers(info.pending)
        return TrainerStatus(
            state=state, config=config, pending=pending, device=f"pid {self._server_pid or self.root_pid}",
            epoch=track.epoch if track is not None else 0, epochs=0,
            batch_in_epoch=track.batch_in_epoch if track is not None else 0,
            batches_per_epoch=(info.batches_per_epoch or 0) if info is not None else 0,
            step=track.step if track is not None else 0, max_batches=None,
            elapsed_s=time.time() - self._started,
            worker_pids=info.worker_pids if info is not None and ended is None else (),
            error=error)

    def _failed(self) -> bool:
        """It ended of itself with an exception or a non-zero code (not the ^C that ``stop`` sent)."""
        if self._stopping is not None:
            last = (self._traceback or "").strip().splitlines()[-1:] or [""]
            return self._traceback is not None and not last[0].startswith("KeyboardInterrupt")
        return self._traceback is not None or self._exit_code not in (None, 0)

    def _control_text(self) -> str:
        if self._kept_by is not None:
            return f"watching only: {self._kept_by}"
        if self._controller is None:
            return "nobody controls this run"
        return "this monitor controls the run" if self._controller_id == self.monitor_id else (
            f"watching only: the monitor with pid {self._controller} controls the run")

    def _ended_text(self) -> str | None:
        if not self._gone:
            return None
        if self._exit_code is None:
            return "the script has ended"
        if self._exit_code > 128:
            name = signal.Signals(self._exit_code - 128).name if self._exit_code - 128 in signal.valid_signals() else ""
            return f"the script was ended by signal {self._exit_code - 128} {name}".rstrip()
        return f"the script exited with code {self._exit_code}"

    def _notes(self, script: ScriptView) -> tuple[str, ...]:
        notes = []
        if not script.loaders:
            notes.append("no DataLoader yet" if not self._gone else "it created no DataLoader")
        elif len(script.loaders) > 1:
            listed = ", ".join(f"{'▸' if info.name == script.selected else ''}{info.name} {info.num_workers}w"
                               for info in script.loaders)
            notes.append(f"loaders: {listed}; l: next")
        if script.dropped:
            notes.append(f"{script.dropped} messages dropped")
        return tuple(notes)

    def _say(self, text: str) -> None:
        self._notice = (self._notice[0] + 1, text)

    # --------------------------------------------------------- client thread

    def _run(self) -> None:
        while not self._closed.is_set():
            self._read_log()
            if not self._gone and self._has_exited():
                self._read_log()
                self._drain()
                self._gone = True
                with self._lock:
                    for track in self._tracks.values():
                        track.end()
            if self._sock is None:
                if not self._gone and not self._detached:
                    self._connect()
                self._closed.wait(0.1 if self._sock is None else 0)
                continue
            self._drain(POLL_S)
            if self._detached:
                self._disconnect()
        self._disconnect()

    def _candidates(self) -> list[Path]:
        if self.socket_path is not None:
            return [self.socket_path]
        try:
            pids = [self.root_pid, *(p.pid for p in psutil.Process(self.root_pid).children(recursive=True))]
        except psutil.Error:
            return []
        directory = runtime_dir(create=False)
        return [directory / f"{pid}.sock" for pid in pids]

    def _connect(self) -> None:
        for path in self._candidates():
            if not path.exists():
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                sock.sendall(encode("hello", pid=os.getpid(), id=self.monitor_id, control=self._want_control))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._sock = sock
            with self._lock:
                self._connected = True
            return

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        with self._lock:
            self._connected = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _drain(self, wait_s: float = 0.0) -> None:
        """Read what the script sent (waiting up to ``wait_s`` for it)."""
        sock = self._sock
        if sock is None:
            return
        try:
            ready, _, _ = select.select([sock], [], [], wait_s)
        except (OSError, ValueError):
            ready = [sock]
        if not ready:
            return
        for _ in range(64):  # bounded: the log and the exit are looked at between reads
            try:
                data = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._disconnect()
                return
            for message in self._reader.feed(data):
                with self._lock:
                    self._handle(message)

    def _handle(self, m: dict[str, Any]) -> None:
        kind = m["type"]
        try:
            if kind == "batch":
                track = self._tracks.get(str(m["loader"]))
                if track is not None:
                    track.batch(m)
            elif kind == "loader":
                self._loader(m)
            elif kind == "cpu":
                track = self._tracks.get(str(m["loader"]))
                if track is not None:
                    track.cpu(m)
            elif kind == "log":
                track = self._tracks.get(str(m["loader"]))
                if track is not None and isinstance(m.get("metrics"), dict):
                    track.log(int(m["step"]), m["metrics"])
            elif kind == "hello":
                self._server_pid = int(m["pid"])
                self._clock = _script_clock(self._server_pid, m.get("threads") or ())
                self._started = float(m.get("started") or self._started)
                self._controller, self._controller_id = m.get("controller"), m.get("controller_id")
                self._tune_changes = []  # a (re)connection sends every change again
                self._builtin = str(m["builtin"]) if m.get("builtin") else None
                self._kept_by = str(m["kept_by"]) if m.get("kept_by") else None
                self.command = self.command or tuple(m.get("command") or ())
                self.log_path = self.log_path or m.get("log")
            elif kind == "control":
                self._controller, self._controller_id = m.get("controller"), m.get("controller_id")
            elif kind == "refused":
                self._say(f"refused: {m.get('reason')}")
            elif kind == "dropped":
                self._dropped += int(m.get("count") or 0)
            elif kind == "event":
                self._event(m)
            elif kind == "peer":
                self.peers[int(m["rank"])] = m
            elif kind == "autotune":
                self._tune_status = m
        except (KeyError, TypeError, ValueError):  # a message of the right type with wrong fields
            self._reader.rejections.malformed += 1

    def _loader(self, m: dict[str, Any]) -> None:
        name = str(m["name"])
        track = self._tracks.get(name)
        if track is None:
            track = self._tracks[name] = _LoaderTrack(name, self._started)
        track.info = LoaderInfo(
            name=name, num_workers=int(m["num_workers"]),
            batch_size=m["batch_size"] if isinstance(m.get("batch_size"), int) else None,
            batches_per_epoch=m["batches_per_epoch"] if isinstance(m.get("batches_per_epoch"), int) else None,
            training=bool(m.get("training")), exact=bool(m.get("exact", True)),
            pending=m["pending"] if isinstance(m.get("pending"), int) else None, epoch=int(m.get("epoch") or 0),
            worker_pids=tuple(int(p) for p in m.get("worker_pids") or ()))
        self._script_dropped = max(self._script_dropped, int(m.get("dropped") or 0))
        if self._selected is None or (track.info.training and not self._chosen):
            self._selected = name

    def _event(self, m: dict[str, Any]) -> None:
        event = m.get("event")
        if event == "exception":
            self._traceback = str(m.get("traceback") or "")
            self.traceback_at = time.monotonic()  # which of several ranks failed first
        elif event == "switch":
            self._say(f"{m.get('loader')}: {m.get('from')} -> {m.get('to')} workers after batch {m.get('after_step')}")
        elif event == "autotune":
            change = Change(str(m["change"]), int(m["from"]), int(m["to"]), str(m.get("reason") or ""),
                            curve_of(m.get("predicted")), ceiling_of(m.get("ceiling")))
            self._tune_changes.append(change)
            self._say(f"autotune: {change.line()}")

    def _read_log(self) -> None:
        """New lines of the script's output file (the log panel's)."""
        if self.log_path is None:
            return
        try:
            with open(self.log_path, "rb") as file:
                file.seek(self._log_offset)
                data = file.read(1 << 20)
        except OSError:
            return
        if not data:
            return
        self._log_offset += len(data)
        text = self._log_partial + data.decode("utf-8", errors="replace")
        *lines, self._log_partial = text.replace("\r\n", "\n").split("\n")
        with self._lock:  # a progress bar's last state, without its colours or other terminal codes
            self._log.extend(_TERMINAL_CODES.sub("", line.rsplit("\r", 1)[-1]).expandtabs(4) for line in lines)


def _script_clock(pid: int, threads: Sequence[int]) -> TreeCpuClock | None:
    """The script's tree CPU clock as the script reads it (its loadertop threads left out); None if unreadable."""
    try:
        clock = TreeCpuClock(pid)
    except psutil.Error:
        return None
    clock.exclude_threads(int(t) for t in threads)
    return clock
