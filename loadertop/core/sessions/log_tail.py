"""The last lines of a script's output file, as the log panel shows them: text only, a progress bar's last state.

Read from the file the script's output goes to, by the monitor's client thread, a new chunk at a time. No torch
here.
"""

from __future__ import annotations

import re
import threading
from collections import deque

LOG_LINES = 200
"""Lines of the script's output the monitor keeps for its log panel."""
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|[\x00-\x08\x0b-\x1f\x7f]"
)
"""ANSI colour and cursor sequences, OSC titles and other control characters: a log line is shown as text."""
READ_BYTES = 1 << 20
"""The most read from the file at a time (the rest at the next read)."""


class LogTail:
    """The latest ``size`` complete lines of a growing file (thread-safe: read by one thread, shown by another).

    Args:
        size: lines kept.
    """

    def __init__(self, size: int = LOG_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._offset = 0
        self._partial = ""

    def read(self, path: str | None) -> None:
        """Take the new lines of the file at ``path`` (nothing when there is none, or it cannot be read)."""
        if path is None:
            return
        try:
            with open(path, "rb") as file:
                file.seek(self._offset)
                data = file.read(READ_BYTES)
        except OSError:
            return
        if not data:
            return
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        *lines, self._partial = text.replace("\r\n", "\n").split("\n")
        with self._lock:  # a progress bar's last state, without its colours or other terminal codes
            self._lines.extend(_TERMINAL_CODES.sub("", line.rsplit("\r", 1)[-1]).expandtabs(4) for line in lines)

    def lines(self) -> tuple[str, ...]:
        """The lines kept, oldest first."""
        with self._lock:
            return tuple(self._lines)
