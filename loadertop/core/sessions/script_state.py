"""What a watched script's view says of it, made from the decoder's state and how its process ended: the
trainer's state and error, who controls the run, the line saying how it ended, the notes above the table.

Pure functions (no socket, no process): ``RemoteSession.view`` calls them under its lock. No torch here.
"""

from __future__ import annotations

import signal
import time

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.status import TrainerError, TrainerState, TrainerStatus
from loadertop.core.sessions.decoder import LoaderTrack, WireDecoder
from loadertop.core.sessions.view import ScriptView


def ended_text(gone: bool, exit_code: int | None) -> str | None:
    """How the script ended (None: it runs, or its end was not seen yet)."""
    if not gone:
        return None
    if exit_code is None:
        return "the script has ended"
    if exit_code > 128:
        name = signal.Signals(exit_code - 128).name if exit_code - 128 in signal.valid_signals() else ""
        return f"the script was ended by signal {exit_code - 128} {name}".rstrip()
    return f"the script exited with code {exit_code}"


def failed(traceback: str | None, *, stopping: bool, exit_code: int | None) -> bool:
    """It ended of itself with an exception or a non-zero code (not the ^C that ``stop`` sent)."""
    if stopping:
        last = (traceback or "").strip().splitlines()[-1:] or [""]
        return traceback is not None and not last[0].startswith("KeyboardInterrupt")
    return traceback is not None or exit_code not in (None, 0)


def script_status(
    wire: WireDecoder,
    track: LoaderTrack | None,
    *,
    ended: str | None,
    connected: bool,
    stopping: bool,
    exit_code: int | None,
    pid: int,
) -> TrainerStatus:
    """The script's run as a trainer's status: its state, the shown loader's configuration and progress.

    Args:
        wire: what the script's messages said.
        track: the loader shown (None: no DataLoader yet).
        ended: ``ended_text`` (None: it runs).
        connected: whether the monitor is connected to its socket.
        stopping: whether ``stop`` was asked.
        exit_code: its exit code, once known.
        pid: the script's pid (when its hello has not said it).
    """
    if ended is None:
        state = TrainerState.RUNNING if connected else TrainerState.STARTING
        if stopping:
            state = TrainerState.STOPPING
    elif failed(wire.traceback, stopping=stopping, exit_code=exit_code):
        state = TrainerState.ERROR
    elif stopping:
        state = TrainerState.STOPPED
    else:
        state = TrainerState.FINISHED
    error = None
    if state is TrainerState.ERROR:
        last = (wire.traceback or "").strip().splitlines()
        message = last[-1] if last else ended or "the script failed"
        error = TrainerError("script", message, None, track.step if track is not None else 0, wire.traceback or "")
    info = track.info if track is not None else None
    config = (
        track.config
        if track is not None and track.config is not None
        else LoaderConfig(
            num_workers=info.num_workers if info is not None else 0,
            batch_size=(info.batch_size or 1) if info is not None else 1,
        )
    )
    pending = None
    if info is not None and info.pending is not None and info.pending != config.num_workers:
        pending = config.with_workers(info.pending)
    return TrainerStatus(
        state=state,
        config=config,
        pending=pending,
        device=f"pid {wire.server_pid or pid}",
        epoch=track.epoch if track is not None else 0,
        epochs=0,
        batch_in_epoch=track.batch_in_epoch if track is not None else 0,
        batches_per_epoch=(info.batches_per_epoch or 0) if info is not None else 0,
        step=track.step if track is not None else 0,
        max_batches=None,
        elapsed_s=time.time() - wire.started,
        worker_pids=info.worker_pids if info is not None and ended is None else (),
        error=error,
    )


def control_text(wire: WireDecoder, monitor_id: str) -> str:
    """Who controls the run: this monitor (``monitor_id``), another, the script itself, or nobody."""
    if wire.kept_by is not None:
        return f"watching only: {wire.kept_by}"
    if wire.controller is None:
        return "nobody controls this run"
    return (
        "this monitor controls the run"
        if wire.controller_id == monitor_id
        else (f"watching only: the monitor with pid {wire.controller} controls the run")
    )


def script_notes(script: ScriptView, *, gone: bool) -> tuple[str, ...]:
    """The notes above the table: no loader yet (or none made), the loaders when several, messages dropped."""
    notes = []
    if not script.loaders:
        notes.append("no DataLoader yet" if not gone else "it created no DataLoader")
    elif len(script.loaders) > 1:
        listed = ", ".join(
            f"{'▸' if info.name == script.selected else ''}{info.name} {info.num_workers}w" for info in script.loaders
        )
        notes.append(f"loaders: {listed}; l: next")
    if script.dropped:
        notes.append(f"{script.dropped} messages dropped")
    return tuple(notes)
