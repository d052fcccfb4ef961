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

What the messages say is read by a ``decoder.WireDecoder`` (no socket: see there how batches become
records); this class keeps the socket, the client thread, the script's process and its log, feeds the
decoder under its lock and serves the view from its state.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from loadertop.core.drive.launcher import exit_status
from loadertop.core.drive.sweep import DEFAULT_BATCHES
from loadertop.core.measure.store import MetricsStore
from loadertop.core.measure.system import SystemSampler
from loadertop.core.policy.advice import advise, machine_facts
from loadertop.core.protocol.codec import LineReader, encode_message, newer_text
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import SERVER_TYPES, AutotuneRequest, MonitorHello, Peer, Switch
from loadertop.core.protocol.runtime import runtime_dir
from loadertop.core.protocol.status import TrainerError, TrainerState, TrainerStatus
from loadertop.core.sessions.decoder import LoaderTrack, WireDecoder
from loadertop.core.sessions.view import ScriptView, SessionView

STOP_GRACE_S = 5.0
"""After SIGINT, how long the script has to stop before SIGTERM (and as long again before SIGKILL)."""
LOG_LINES = 200
"""Lines of the script's output the monitor keeps for its log panel."""
POLL_S = 0.25
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|[\x00-\x08\x0b-\x1f\x7f]")
"""ANSI colour and cursor sequences, OSC titles and other control characters: a log line is shown as text."""


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
        self.grace_s = grace_s
        self._want_control = control
        self._lock = threading.RLock()
        self._connected = False
        self.monitor_id = uuid.uuid4().hex[:16]  # several monitors may share a process (and a pid)
        self._exit_code: int | None = None
        self._gone = False
        self._stopping: float | None = None  # when SIGINT was sent
        self._detached = False
        self.ranks_on_node = 1
        """Training processes sharing this machine's cores (a torchrun job's ranks here): the advice's share."""
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._reader = LineReader(known=SERVER_TYPES)
        self._told_newer = False  # the notice that the script speaks a newer protocol was given
        self._wire = WireDecoder(command=command, log_path=log_path, server_pid=pid,
                                 rejections=self._reader.rejections)
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._log_offset = 0
        self._log_partial = ""
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
            wire = self._wire
            track = wire.selected_track()
            store = track.store.snapshot() if track is not None else MetricsStore().snapshot()
            status = self._status(track)
            script = ScriptView(
                command=wire.command, pid=wire.server_pid, log_path=wire.log_path, log_tail=tuple(self._log),
                loaders=wire.loaders(), selected=wire.selected, connected=self._connected,
                control=self._control_text(), ended=self._ended_text(), dropped=wire.dropped + wire.script_dropped,
                rejected=self._reader.rejections.total, notice=wire.notice, builtin=wire.builtin)
        system = self.sampler.latest()
        machine = replace(self._machine.with_system(system), ranks_on_node=self.ranks_on_node)
        name = " ".join(self.command) or f"pid {self.root_pid}"
        with self._lock:
            autotune = self._wire.autotune_view()
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
            track = self._wire.selected_track()
            sock = self._sock
        if self._ended_text() is not None:
            raise RuntimeError("the script has ended: nothing to switch (q quits)")
        if track is None or sock is None:
            raise RuntimeError("no DataLoader yet: nothing to switch")
        switch = Switch(config.num_workers, track.name) if rank is None else Switch(config.num_workers, None, rank)
        try:
            sock.sendall(encode_message(switch))
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
            sock.sendall(encode_message(AutotuneRequest(bool(enabled))))
        except OSError as exc:
            raise RuntimeError(f"the script does not answer ({exc.strerror})") from None

    def select_next_loader(self) -> str | None:
        """Show and command the next DataLoader (in creation order); returns its name."""
        with self._lock:
            return self._wire.select_next()

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
        if self._wire.builtin is not None:
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
            self._wire.end()
        return []

    # ------------------------------------------------------------- queries

    @property
    def exit_code(self) -> int | None:
        """The script's exit code (128 + N for signal N) once it ended and this process launched it."""
        return self._exit_code

    @property
    def traceback(self) -> str | None:
        """The script's uncaught exception, as it printed it."""
        return self._wire.traceback

    @property
    def traceback_at(self) -> float:
        """When the script's exception arrived (monotonic; inf: none): which of several ranks failed first."""
        return self._wire.traceback_at

    @property
    def peers(self) -> dict[int, Peer]:
        """The ranks of other nodes of the same torchrun job, as the script relays them from the job's store."""
        return self._wire.peers

    @property
    def command(self) -> tuple[str, ...]:
        """The script's command line (given, or as its hello says)."""
        return self._wire.command

    @property
    def log_path(self) -> str | None:
        """The file the script's output goes to (given, or as its hello says)."""
        return self._wire.log_path

    # ------------------------------------------------------------ internals

    def _worker_pids(self) -> Sequence[int]:
        with self._lock:
            track = self._wire.selected_track()
            return track.info.worker_pids if track is not None and track.info is not None else ()

    def _on_sample(self, snapshot: Any) -> None:
        """Each system sample: the running configuration's cost so far, from the script's CPU clock, and its
        memory (the tree's PSS and the workers' USS, read from here)."""
        with self._lock:
            clock = self._wire.clock
            track = self._wire.training_track()
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

    def _status(self, track: LoaderTrack | None) -> TrainerStatus:
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
            last = (self._wire.traceback or "").strip().splitlines()
            message = last[-1] if last else ended or "the script failed"
            error = TrainerError("script", message, None, track.step if track is not None else 0,
                                 self._wire.traceback or "")
        info = track.info if track is not None else None
        config = track.config if track is not None and track.config is not None else LoaderConfig(
            num_workers=info.num_workers if info is not None else 0,
            batch_size=(info.batch_size or 1) if info is not None else 1)
        pending = None
        if info is not None and info.pending is not None and info.pending != config.num_workers:
            pending = config.with_workers(info.pending)
        return TrainerStatus(
            state=state, config=config, pending=pending, device=f"pid {self._wire.server_pid or self.root_pid}",
            epoch=track.epoch if track is not None else 0, epochs=0,
            batch_in_epoch=track.batch_in_epoch if track is not None else 0,
            batches_per_epoch=(info.batches_per_epoch or 0) if info is not None else 0,
            step=track.step if track is not None else 0, max_batches=None,
            elapsed_s=time.time() - self._wire.started,
            worker_pids=info.worker_pids if info is not None and ended is None else (),
            error=error)

    def _failed(self) -> bool:
        """It ended of itself with an exception or a non-zero code (not the ^C that ``stop`` sent)."""
        traceback = self._wire.traceback
        if self._stopping is not None:
            last = (traceback or "").strip().splitlines()[-1:] or [""]
            return traceback is not None and not last[0].startswith("KeyboardInterrupt")
        return traceback is not None or self._exit_code not in (None, 0)

    def _control_text(self) -> str:
        wire = self._wire
        if wire.kept_by is not None:
            return f"watching only: {wire.kept_by}"
        if wire.controller is None:
            return "nobody controls this run"
        return "this monitor controls the run" if wire.controller_id == self.monitor_id else (
            f"watching only: the monitor with pid {wire.controller} controls the run")

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

    # --------------------------------------------------------- client thread

    def _run(self) -> None:
        while not self._closed.is_set():
            self._read_log()
            if not self._gone and self._has_exited():
                self._read_log()
                self._drain()
                self._gone = True
                with self._lock:
                    self._wire.end()
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
                sock.sendall(encode_message(MonitorHello(os.getpid(), self.monitor_id, self._want_control)))
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
                self._tell_if_newer()
                with self._lock:
                    self._wire.feed((message,))
            self._tell_if_newer()

    def _tell_if_newer(self) -> None:
        """Once, in one line: the script speaks a newer protocol than this monitor reads."""
        newer = self._reader.rejections.newer
        if newer is not None and not self._told_newer:
            self._told_newer = True
            with self._lock:
                self._wire.say(newer_text(newer))

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

