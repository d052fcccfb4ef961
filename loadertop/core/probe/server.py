"""The launched script's side of the protocol: a Unix socket that any number of monitors watch.

The training loop never waits here. ``publish`` (called by loadertop's writer thread, not the
loop) encodes a message once, keeps it in a bounded history for monitors that attach later,
and appends it to each connected monitor's outgoing buffer; a serving thread sends what each
socket accepts. A monitor that stops reading (SIGSTOPped, stalled over SSH) lets its buffer
fill to ``CLIENT_BUFFER_BYTES``; past that its messages are dropped and counted, and it is
told how many when it reads again. Commands (a ``switch``, ``autotune`` on or off) come only from
the controller: the first monitor that asked for control; the others are told who has it. The
autotuner's latest status and its changes, and each loader's latest stage figures, are kept apart
from the bounded history, so that a monitor attaching late still learns every change and the
figures. Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from loadertop.core.protocol.codec import LineReader, ProtocolError, encode_message, newer_text
from loadertop.core.protocol.messages import (
    CLIENT_TYPES,
    AutotuneEvent,
    AutotuneRequest,
    AutotuneStatus,
    Control,
    Dropped,
    Hello,
    HistoryEnd,
    LoaderUpdate,
    MessageError,
    MonitorHello,
    Refused,
    ServerMessage,
    StagesUpdate,
    client_message,
)
from loadertop.core.protocol.runtime import listen

HISTORY_MESSAGES = 50_000
"""Batch and log messages kept for monitors that attach later (~200 bytes each: about 10 MB at most)."""
CLIENT_BUFFER_BYTES = 4 * 1024 * 1024
"""Bytes waiting for one monitor; past that its messages are dropped (counted) until it reads again."""

SwitchHandler = Callable[[str | None, int, int | None], str | None]
"""``(loader name or None, workers, rank or None) -> None`` when accepted, else the reason it was refused
(``rank``: a rank of the same torchrun job on another node, reached through the job's store)."""
AutotuneHandler = Callable[[bool], str | None]
"""``(enabled) -> None`` when accepted, else the reason it was refused."""
AUTOTUNE_CHANGES_KEPT = 1000
"""Autotune changes kept for monitors that attach later (each is one ``event``; they are few)."""


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.dropped = 0
        self.pid: int | None = None
        self.monitor_id: str | None = None
        self.reader = LineReader(known=CLIENT_TYPES)
        self.told_newer = False  # it was told, once, that it speaks a newer protocol

    def queue(self, line: bytes) -> None:
        if self.dropped and len(self.out) + 64 <= CLIENT_BUFFER_BYTES:
            self.out += encode_message(Dropped(self.dropped))
            self.dropped = 0
        if len(self.out) + len(line) > CLIENT_BUFFER_BYTES:
            self.dropped += 1
        else:
            self.out += line


class RunServer:
    """Serves one run's messages on ``path`` until ``close``.

    Args:
        path: the socket to create (mode 0600; its directory is the user's alone).
        hello: the fields of the ``hello`` every monitor gets first.
        on_switch: called in the serving thread with the controller's switch requests.
        kept_by: the run's process controls it itself (the built-in trainer's app): every monitor
            watches only, and is told this.

    Attributes:
        on_autotune: called in the serving thread with the controller's ``autotune`` requests (None:
            the run cannot be tuned from a monitor; they are refused).
    """

    def __init__(self, path: Path, hello: Hello, on_switch: SwitchHandler, *, kept_by: str | None = None) -> None:
        self.path = path
        self._hello = hello
        self._on_switch = on_switch
        self._kept_by = kept_by
        self._lock = threading.Lock()
        self._history: deque[bytes] = deque(maxlen=HISTORY_MESSAGES)
        self._loaders: dict[str, bytes] = {}  # name -> its latest ``loader`` message
        self._stages: dict[str, bytes] = {}  # loader name -> its latest ``stages`` message
        self._tuning: bytes | None = None  # the latest ``autotune`` status
        self._changes: deque[bytes] = deque(maxlen=AUTOTUNE_CHANGES_KEPT)  # ``event`` autotune, oldest first
        self.on_autotune: AutotuneHandler | None = None
        self._clients: dict[int, _Client] = {}
        self._controller: _Client | None = None
        self.rejected = 0
        self._listener = listen(path)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closing = False
        self._close_by = 0.0
        self._thread = threading.Thread(target=self._serve, name="loadertop-server", daemon=True)
        self._thread.start()

    # ------------------------------------------------------- any thread

    def update_hello(self, *, threads: Sequence[int]) -> None:
        """The threads of loadertop's own (native ids) that monitors connecting from now on are told of."""
        with self._lock:
            self._hello = replace(self._hello, threads=tuple(threads))

    @property
    def native_id(self) -> int:
        """The serving thread's native id (its CPU is loadertop's, not the run's)."""
        return self._thread.native_id or 0

    @property
    def monitors(self) -> int:
        """Monitors connected now."""
        with self._lock:
            return len(self._clients)

    def publish(self, message: ServerMessage, *, keep: bool = True, wake: bool = True) -> None:
        """Send a message to every monitor (and keep it for later ones unless ``keep`` is False).

        With ``wake=False`` it waits in the buffers for ``flush`` (or the serving thread's next round).
        """
        try:
            line = encode_message(message)
        except (ProtocolError, TypeError, ValueError):
            self.rejected += 1
            return
        with self._lock:
            if isinstance(message, LoaderUpdate):
                self._loaders[message.name] = line
            elif isinstance(message, AutotuneStatus):
                self._tuning = line
            elif isinstance(message, StagesUpdate):
                self._stages[message.loader] = line
            elif isinstance(message, AutotuneEvent):
                self._changes.append(line)
            elif keep:
                self._history.append(line)
            for client in self._clients.values():
                client.queue(line)
        if wake:
            self._wake()

    def flush(self) -> None:
        """Have the serving thread send what was published without waking it."""
        with self._lock:
            waiting = any(client.out for client in self._clients.values())
        if waiting:
            self._wake()

    def close(self) -> None:
        """Send what is buffered (briefly), close every connection and remove the socket."""
        self._close_by = time.monotonic() + 1.0  # a second to hand the last messages over
        self._closing = True
        self._wake()
        self._thread.join(2.0)
        with contextlib.suppress(OSError):
            self.path.unlink()

    # --------------------------------------------------- serving thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the thread is awake anyway
            self._wake_w.send(b"x")

    def _serve(self) -> None:
        try:
            while True:
                self._update_interest()
                if self._closing and (
                    not any(c.out for c in self._clients.values()) or time.monotonic() > self._close_by
                ):
                    break
                for key, events in self._selector.select(timeout=0.5 if not self._closing else 0.1):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        self._service(key.data, events)
        finally:
            for client in list(self._clients.values()):
                self._drop(client)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _update_interest(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(client.sock, mask, client)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        with self._lock:
            control = self._control()
            client.out += encode_message(
                replace(
                    self._hello,
                    controller=control.controller,
                    controller_id=control.controller_id,
                    kept_by=control.kept_by,
                )
            )
            for line in self._loaders.values():
                client.out += line
            for line in self._stages.values():
                client.out += line
            for line in self._changes:
                client.out += line
            if self._tuning is not None:
                client.out += self._tuning
            for line in self._history:
                client.out += line
            client.out += encode_message(HistoryEnd())
            self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _controller_pid(self) -> int | None:
        return self._controller.pid if self._controller is not None else None

    def _control(self) -> Control:
        """Who controls the run now."""
        controller = self._controller
        if self._kept_by is not None:
            return Control(os.getpid(), "itself", self._kept_by)
        return Control(controller.pid if controller else None, controller.monitor_id if controller else None)

    def _service(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop(client)
                return
            if data:
                for message in client.reader.feed(data):
                    self._tell_if_newer(client)  # in order: before what came after the newer line
                    self._command(client, message)
                self._tell_if_newer(client)
        if events & selectors.EVENT_WRITE and client.out:
            with self._lock:
                try:
                    sent = client.sock.send(client.out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent = -1
                if sent > 0:
                    del client.out[:sent]
                if client.dropped and len(client.out) < CLIENT_BUFFER_BYTES // 2:  # reading again: say what it missed
                    client.out += encode_message(Dropped(client.dropped))
                    client.dropped = 0
            if sent < 0:
                self._drop(client)

    def _command(self, client: _Client, wire: dict[str, object]) -> None:
        try:
            message = client_message(wire)
        except MessageError as exc:  # refused with its one line (a watcher: that it may not command)
            if wire["type"] == MonitorHello.TYPE:
                client.reader.rejections.malformed += 1
                return
            self._refuse(client, self._not_controller_text() if self._controller is not client else str(exc))
            return
        if isinstance(message, MonitorHello):
            client.pid, client.monitor_id = message.pid, message.id
            if message.control:
                with self._lock:
                    if self._controller is None and self._kept_by is None:
                        self._controller = client
                        self._broadcast_control()
                    else:
                        client.queue(encode_message(Refused(self._owner_text())))
            return
        if self._controller is not client:
            reason: str | None = self._not_controller_text()
        elif isinstance(message, AutotuneRequest):
            reason = (
                "this run cannot be tuned from a monitor"
                if self.on_autotune is None
                else (self.on_autotune(message.enabled))
            )
        else:
            reason = self._on_switch(message.loader, message.workers, message.rank)
        if reason is not None:
            self._refuse(client, reason)

    def _tell_if_newer(self, client: _Client) -> None:
        """Once, in one line: a monitor of a newer protocol version cannot be understood (nor command)."""
        newer = client.reader.rejections.newer
        if newer is not None and not client.told_newer:
            client.told_newer = True
            self._refuse(client, newer_text(newer))

    def _refuse(self, client: _Client, reason: str) -> None:
        with self._lock:
            client.queue(encode_message(Refused(reason)))

    def _not_controller_text(self) -> str:
        """Why a monitor that is not the controller may not command."""
        if self._controller is not None or self._kept_by is not None:
            return self._owner_text()
        return "this monitor only watches"

    def _owner_text(self) -> str:
        if self._kept_by is not None:
            return f"watching only: {self._kept_by}"
        pid = self._controller_pid()
        return f"watching only: the monitor with pid {pid} controls this run" if pid else "watching only"

    def _broadcast_control(self) -> None:
        """Under the lock: tell everyone who controls the run now."""
        line = encode_message(self._control())
        for other in self._clients.values():
            other.queue(line)

    def _drop(self, client: _Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        with self._lock:
            self._clients.pop(client.sock.fileno(), None)
            if self._controller is client:
                self._controller = None
                self._broadcast_control()
        with contextlib.suppress(OSError):
            client.sock.close()
