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
come back (``autotune`` and ``event`` messages) as ``SessionView.autotune``. Each loader's stage
figures come as ``stages`` messages; the view has the shown loader's (``SessionView.stages``). The GPU's
idle time against each loader's waits is made here, from the NVML samples this monitor reads of the
script's GPU and the loader's batches (``SessionView.gpu_idle``: the shown loader's).

The class wires small parts, each of one job: the socket client (``script_connection.ScriptConnection``),
what the messages say (``decoder.WireDecoder``, no socket: see there how batches become records), the script's
process (``script_process.ScriptProcess``: its exit, stopping it), its output (``log_tail.LogTail``) and what
the view says of them (``script_state``). Its client thread reads the socket and the log and looks for the
exit; it feeds the decoder under the session's lock, and the view is served from their state.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from loadertop.core.drive.sweep import DEFAULT_BATCHES
from loadertop.core.measure.gpu_idle import GpuSamples
from loadertop.core.measure.store import MetricsStore
from loadertop.core.measure.system import SystemSampler
from loadertop.core.policy.advice import advise, machine_facts
from loadertop.core.protocol.codec import WireMessage
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import AutotuneRequest, MonitorHello, Peer, Switch
from loadertop.core.protocol.status import TrainerStatus
from loadertop.core.sessions.decoder import LoaderTrack, WireDecoder
from loadertop.core.sessions.log_tail import LOG_LINES, LogTail
from loadertop.core.sessions.script_connection import ScriptConnection
from loadertop.core.sessions.script_process import STOP_GRACE_S, ScriptProcess
from loadertop.core.sessions.script_state import control_text, ended_text, script_notes, script_status
from loadertop.core.sessions.view import ScriptView, SessionView

__all__ = ["LOG_LINES", "POLL_S", "STOP_GRACE_S", "RemoteSession"]

POLL_S = 0.25
"""The client thread's longest wait on the socket: the log and the script's exit are looked at as often."""


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

    def __init__(
        self,
        *,
        child: subprocess.Popen[bytes] | None = None,
        pid: int | None = None,
        socket_path: Path | None = None,
        log_path: str | None = None,
        command: Sequence[str] = (),
        sample_interval_s: float = 1.0,
        read_gpus: bool = True,
        control: bool = True,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        if child is None and pid is None:
            raise ValueError("give the child process or the pid to watch")
        self._process = ScriptProcess(child=child, pid=pid, grace_s=grace_s)
        self.child = child
        self.root_pid = self._process.pid
        self._want_control = control
        self._lock = threading.RLock()
        self.monitor_id = uuid.uuid4().hex[:16]  # several monitors may share a process (and a pid)
        self._gone = False  # the script's end was seen (after its last messages were read)
        self._detached = False
        self.ranks_on_node = 1
        """Training processes sharing this machine's cores (a torchrun job's ranks here): the advice's share."""
        self._closed = threading.Event()
        self._connection = ScriptConnection(
            pid=self.root_pid, socket_path=socket_path, hello=self._hello, on_message=self._feed, on_newer=self._say
        )
        self._reader = self._connection.reader
        self._wire = WireDecoder(command=command, log_path=log_path, server_pid=pid, rejections=self._reader.rejections)
        self._log = LogTail(LOG_LINES)
        self.sampler = SystemSampler(
            interval_s=sample_interval_s,
            pid=self.root_pid,
            worker_pids=self._worker_pids,
            on_sample=self._on_sample,
            read_gpus=read_gpus,
        )
        self._machine = machine_facts()
        self._gpu_idle_note: str | None = None
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
                command=wire.command,
                pid=wire.server_pid,
                log_path=wire.log_path,
                log_tail=self._log.lines(),
                loaders=wire.loaders(),
                selected=wire.selected,
                connected=self._connection.connected,
                control=control_text(wire, self.monitor_id),
                ended=self._ended_text(),
                dropped=wire.dropped + wire.script_dropped,
                rejected=self._reader.rejections.total,
                notice=wire.notice,
                builtin=wire.builtin,
            )
        system = self.sampler.latest()
        machine = replace(self._machine.with_system(system), ranks_on_node=self.ranks_on_node)
        name = " ".join(self.command) or f"pid {self.root_pid}"
        with self._lock:
            autotune = self._wire.autotune_view()
            stages = self._wire.selected_stages()
            gpu_idle = track.gpu_idle.figures() if track is not None else ()
            gpu_idle_note = self._gpu_idle_note
        return SessionView(
            workload_name=name,
            notes=script_notes(script, gone=self._gone),
            status=status,
            store=store,
            system=system,
            gpu_status=system.gpu_status if system is not None else "sampling",
            advice=advise(store.summaries, machine),
            script=script,
            autotune=autotune,
            machine=machine,
            stages=stages,
            gpu_idle=gpu_idle,
            gpu_idle_note=gpu_idle_note,
        )

    def apply(self, config: LoaderConfig, *, rank: int | None = None) -> None:
        """Switch the selected loader to ``config.num_workers``; the script keeps its other settings.

        ``rank``: instead, the training loader of that rank of the same torchrun job on another node
        (the script passes it on through the job's store).
        """
        with self._lock:
            track = self._wire.selected_track()
        if self._ended_text() is not None:
            raise RuntimeError("the script has ended: nothing to switch (q quits)")
        if track is None or not self._connection.connected:
            raise RuntimeError("no DataLoader yet: nothing to switch")
        self._send(Switch(config.num_workers, track.name) if rank is None else Switch(config.num_workers, None, rank))

    def set_autotune(self, enabled: bool) -> None:
        """Turn the script's autotuner on (it tunes the training loader from its running count) or off (the
        count stays). Only the controlling monitor may: the script refuses the others (``script.notice``)."""
        if self._ended_text() is not None:
            raise RuntimeError("the script has ended: nothing to tune (q quits)")
        if not self._connection.connected:
            raise RuntimeError("not connected to the script yet: nothing to tune")
        self._send(AutotuneRequest(bool(enabled)))

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
        self._process.interrupt()

    def detach(self) -> None:
        """Stop watching; the script runs on (``loadertop attach`` watches it again)."""
        self._detached = True

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked (the script's KeyboardInterrupt is then ours)."""
        return self._process.interrupted_at is not None

    @property
    def detached(self) -> bool:
        """Whether ``detach`` was asked."""
        return self._detached

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """Stop listening and sampling; after ``stop``, wait for the script (SIGTERM, then SIGKILL, if it lingers)."""
        if self.stopping and not self._detached:
            self._process.wait_for_exit()
        self._closed.set()
        self._thread.join(1.0)
        if not self._gone and not self._detached and self._process.has_exited():
            self._gone = True
        self.sampler.stop(0.5)
        with self._lock:
            self._wire.end()
        return []

    # ------------------------------------------------------------- queries

    @property
    def exit_code(self) -> int | None:
        """The script's exit code (128 + N for signal N) once it ended and this process launched it."""
        return self._process.exit_code

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

    def _status(self, track: LoaderTrack | None) -> TrainerStatus:
        return script_status(
            self._wire,
            track,
            ended=self._ended_text(),
            connected=self._connection.connected,
            stopping=self.stopping,
            exit_code=self._process.exit_code,
            pid=self.root_pid,
        )

    def _ended_text(self) -> str | None:
        return ended_text(self._gone, self._process.exit_code)

    def _send(self, message: WireMessage) -> None:
        try:
            self._connection.send(message)
        except OSError as exc:
            raise RuntimeError(f"the script does not answer ({exc.strerror})") from None

    def _hello(self) -> MonitorHello:
        return MonitorHello(os.getpid(), self.monitor_id, self._want_control)

    def _feed(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._wire.feed((message,))

    def _say(self, text: str) -> None:
        with self._lock:
            self._wire.say(text)

    def _worker_pids(self) -> Sequence[int]:
        with self._lock:
            track = self._wire.selected_track()
            return track.info.worker_pids if track is not None and track.info is not None else ()

    def _on_sample(self, snapshot: Any) -> None:
        """Each system sample: the running configuration's cost so far, from the script's CPU clock, and its
        memory (the tree's PSS and the workers' USS, read from here)."""
        self._sample_gpu(snapshot.gpu_samples)
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

    def _sample_gpu(self, read: GpuSamples | None) -> None:
        """The script's GPU's new utilisation samples, to every loader's book (its waits against them)."""
        with self._lock:
            books = [track.gpu_idle for track in self._wire.tracks.values()]
            self._gpu_idle_note = read.note if read is not None else None
        for book in books:
            if read is None:
                book.no_gpu()
            elif read.gpu is not None:
                book.add_samples(read.samples, read.gpu)

    # --------------------------------------------------------- client thread

    def _run(self) -> None:
        connection = self._connection
        while not self._closed.is_set():
            self._log.read(self.log_path)
            if not self._gone and self._process.has_exited():
                self._log.read(self.log_path)
                connection.drain()
                self._gone = True
                with self._lock:
                    self._wire.end()
            if not connection.connected:
                if not self._gone and not self._detached:
                    connection.connect()
                self._closed.wait(0.1 if not connection.connected else 0)
                continue
            connection.drain(POLL_S)
            if self._detached:
                connection.disconnect()
        connection.disconnect()
