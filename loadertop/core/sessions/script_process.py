"""The watched script's process, as a monitor sees it from outside: whether it ended, how, and stopping it.

The process is the monitor's child when ``loadertop run -- COMMAND`` launched it (its exit code is then known),
or any process by pid when ``loadertop attach`` watches it (it has ended when it is gone or a zombie).
Stopping it is what a terminal's ^C would be, followed up as a user would: SIGINT, then SIGTERM after a grace
period, then SIGKILL. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil

from loadertop.core.drive.launcher import exit_status

STOP_GRACE_S = 5.0
"""After SIGINT, how long the script has to stop before SIGTERM (and as long again before SIGKILL)."""


class ScriptProcess:
    """The script's process (the root of its tree).

    Args:
        child: the script, when this process launched it.
        pid: its pid when attaching (used when ``child`` is None).
        grace_s: after ``interrupt``'s SIGINT, seconds before SIGTERM, and again before SIGKILL.
    """

    def __init__(
        self, *, child: subprocess.Popen[bytes] | None, pid: int | None, grace_s: float = STOP_GRACE_S
    ) -> None:
        self.child = child
        self.pid = child.pid if child is not None else int(pid)  # type: ignore[arg-type]
        self.grace_s = grace_s
        self.exit_code: int | None = None
        """The exit code (128 + N for signal N) once it ended and this process launched it."""
        self.interrupted_at: float | None = None
        """When ``interrupt`` sent SIGINT (monotonic; None: not asked)."""

    def has_exited(self) -> bool:
        """Whether the process has ended (a launched child's exit code is then kept)."""
        if self.child is not None:
            code = self.child.poll()
            if code is not None:
                self.exit_code = exit_status(code)
                return True
            return False
        try:
            proc = psutil.Process(self.pid)
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def interrupt(self) -> None:
        """SIGINT, once, as ^C would (nothing if it has ended); ``wait_for_exit`` follows it up."""
        if self.interrupted_at is None and not self.has_exited():
            self.interrupted_at = time.monotonic()
            self.signal(signal.SIGINT)

    def signal(self, signum: int) -> None:
        """Signal the script's process group when it has one of its own (as launched), else the script alone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(self.pid)
            if group == self.pid and group != os.getpgrp():
                os.killpg(group, signum)
            else:
                os.kill(self.pid, signum)

    def wait_for_exit(self) -> None:
        """Wait for it to end: SIGTERM after ``grace_s``, SIGKILL after as long again, then as long once more."""
        escalation = ((self.grace_s, signal.SIGTERM), (self.grace_s, signal.SIGKILL), (self.grace_s, None))
        for wait_s, then in escalation:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.has_exited():
                    return
                time.sleep(0.05)
            if then is not None:
                self.signal(then)
