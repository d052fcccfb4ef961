"""JSON lines, versioned, bounded: one object per line, never pickle.

Every message is a JSON object with ``"v"`` (the protocol version) and ``"type"``. A reader
rejects, and counts, a line that is longer than ``MAX_LINE_BYTES``, not JSON, not an object,
of another version, or of a type it does not know; it never raises on what it is sent. A line of a
newer version (a later loadertop on the other side) is refused with one line saying so
(``Rejections.newer``, ``newer_text``): each side tells its user, and the server tells the monitor.
Messages are typed (``messages``): ``encode_message`` writes one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

VERSION = 1
MAX_LINE_BYTES = 64 * 1024
"""The longest line either side accepts (a batch record is about 200 bytes)."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class ProtocolError(ValueError):
    """A message that cannot be encoded (too long, not JSON)."""


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class WireMessage(Protocol):
    """A typed message (``messages``): its JSON object, with its ``type``."""

    def to_wire(self) -> dict[str, object]: ...


def encode_message(message: WireMessage) -> bytes:
    """A typed message as a line of bytes (see ``encode``)."""
    fields = message.to_wire()
    kind = fields.pop("type")
    return encode(str(kind), **fields)


def newer_text(version: int) -> str:
    """The one line that refuses a message of a newer protocol version than this side's."""
    return (
        f"the other side speaks protocol version {version}, this loadertop {VERSION}: "
        "run the same loadertop version on both sides"
    )


def encode(kind: str, **fields: Any) -> bytes:
    """One message as a line of bytes: ``{"v": 1, "type": kind, ...fields}`` and a newline."""
    try:  # most messages hold no NaN: walking them for one would cost more than the encoding
        text = _ENCODER.encode({"v": VERSION, "type": kind, **fields})
    except ValueError:
        text = _ENCODER.encode({"v": VERSION, "type": kind, **_finite(fields)})
    line = text.encode("utf-8") + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"message {kind!r} is {len(line)} bytes, more than {MAX_LINE_BYTES}")
    return line


@dataclass
class Rejections:
    """What a reader threw away, by reason (shown by monitors, kept by the training side)."""

    oversized: int = 0
    malformed: int = 0
    wrong_version: int = 0
    unknown_type: int = 0
    last: str = ""
    newer: int | None = None
    """The newest protocol version refused (None: none newer than this side's seen)."""

    @property
    def total(self) -> int:
        """All rejected lines."""
        return self.oversized + self.malformed + self.wrong_version + self.unknown_type


@dataclass
class LineReader:
    """Splits a byte stream into accepted messages; bounded, never raises on bad input.

    Args:
        known: the message types this side accepts.
    """

    known: Collection[str]
    rejections: Rejections = field(default_factory=Rejections)
    _buffer: bytearray = field(default_factory=bytearray)
    _skipping: bool = False  # inside an oversized line: drop bytes until its newline

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """Accept ``data`` and yield every complete, valid message in it."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    if not self._skipping:
                        self._reject("oversized", f"a line over {MAX_LINE_BYTES} bytes")
                    self._skipping = True
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) + 1 > MAX_LINE_BYTES:
                self._reject("oversized", f"a line of {len(line)} bytes")
                continue
            if not line.strip():
                continue
            message = self._decode(line)
            if message is not None:
                yield message

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            self._reject("malformed", f"not JSON: {line[:60]!r}")
            return None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._reject("malformed", f"not a message object: {line[:60]!r}")
            return None
        version = message.get("v")
        if isinstance(version, bool) or version != VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
                self.rejections.newer = max(version, self.rejections.newer or version)
                self._reject("wrong_version", newer_text(version))
            else:
                self._reject("wrong_version", f"protocol version {version!r}, this side speaks {VERSION}")
            return None
        if message["type"] not in self.known:
            self._reject("unknown_type", f"unknown message type {message['type']!r}")
            return None
        return message

    def _reject(self, reason: str, text: str) -> None:
        setattr(self.rejections, reason, getattr(self.rejections, reason) + 1)
        self.rejections.last = text
