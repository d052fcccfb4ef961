"""The monitor's end of a script's socket: finding it, saying hello, reading the messages, sending commands.

The script serves a Unix socket (``loadertop.core.probe.server``) named after its pid in the runtime directory;
a launched script's is looked for among the pids of its tree as it appears, an attached one's is given. What
arrives is split into accepted messages by a ``LineReader`` (which counts the rest) and handed on one by one;
what the messages mean is the decoder's (``decoder.WireDecoder``). No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from loadertop.core.protocol.codec import LineReader, Rejections, WireMessage, encode_message, newer_text
from loadertop.core.protocol.messages import SERVER_TYPES, MonitorHello
from loadertop.core.protocol.runtime import runtime_dir

READ_BYTES = 262144
"""The most read from the socket at a time."""
READS_PER_DRAIN = 64
"""Reads at most in one ``drain``: the script's log and its exit are looked at between drains."""


class ScriptConnection:
    """A client of one script's socket, used by one thread (``send`` may come from another).

    Args:
        pid: the script's pid (its tree is where a launched script's socket is looked for).
        socket_path: its socket when known (attach).
        hello: the monitor's hello, made at each connection.
        on_message: each accepted message, in order.
        on_newer: once, the line saying the script speaks a newer protocol than this monitor reads.
    """

    def __init__(
        self,
        *,
        pid: int,
        socket_path: Path | None,
        hello: Callable[[], MonitorHello],
        on_message: Callable[[dict[str, Any]], None],
        on_newer: Callable[[str], None],
    ) -> None:
        self.pid = pid
        self.socket_path = socket_path
        self._hello = hello
        self._on_message = on_message
        self._on_newer = on_newer
        self.reader = LineReader(known=SERVER_TYPES)
        self._sock: socket.socket | None = None
        self._told_newer = False  # the notice that the script speaks a newer protocol was given

    @property
    def rejections(self) -> Rejections:
        """The lines refused so far (malformed, oversized, of a newer version...)."""
        return self.reader.rejections

    @property
    def connected(self) -> bool:
        """Whether the socket is open."""
        return self._sock is not None

    def candidates(self) -> list[Path]:
        """Where the script's socket may be: the one given, else one for each pid of its tree."""
        if self.socket_path is not None:
            return [self.socket_path]
        try:
            pids = [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        except psutil.Error:
            return []
        directory = runtime_dir(create=False)
        return [directory / f"{pid}.sock" for pid in pids]

    def connect(self) -> None:
        """Connect to the first candidate that answers the hello (none: still not connected)."""
        for path in self.candidates():
            if not path.exists():
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                sock.sendall(encode_message(self._hello()))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._sock = sock
            return

    def disconnect(self) -> None:
        """Close the socket (if open)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def send(self, message: WireMessage) -> None:
        """Send one message (a ``Switch``, an ``AutotuneRequest``...); raises ``OSError`` when it cannot."""
        sock = self._sock
        if sock is None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        sock.sendall(encode_message(message))

    def drain(self, wait_s: float = 0.0) -> None:
        """Read what the script sent (waiting up to ``wait_s`` for it); the script closing it disconnects."""
        sock = self._sock
        if sock is None:
            return
        try:
            ready, _, _ = select.select([sock], [], [], wait_s)
        except (OSError, ValueError):
            ready = [sock]
        if not ready:
            return
        for _ in range(READS_PER_DRAIN):  # bounded: the log and the exit are looked at between reads
            try:
                data = sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.disconnect()
                return
            for message in self.reader.feed(data):
                self._tell_if_newer()
                self._on_message(message)
            self._tell_if_newer()

    def _tell_if_newer(self) -> None:
        """Once, in one line: the script speaks a newer protocol than this monitor reads."""
        newer = self.reader.rejections.newer
        if newer is not None and not self._told_newer:
            self._told_newer = True
            self._on_newer(newer_text(newer))
