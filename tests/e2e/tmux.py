"""Drive the real app in a real terminal: tmux on its own socket, keys in, screen text out."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.conftest import ROOT, tagged_processes


class TmuxApp:
    """``python -m loadertop ARGS`` in a detached tmux pane of ``width`` x ``height``.

    The exit status is written to ``exit_file`` when the app ends (not when the pane is killed).
    """

    def __init__(self, args: list[str], tmp: Path, *, width: int = 120, height: int = 36) -> None:
        self.tag = uuid.uuid4().hex
        self.socket = f"loadertop-test-{self.tag[:8]}"
        self.exit_file = tmp / "exit-status"
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "loadertop", *args])
        shell = f"cd {shlex.quote(str(ROOT))} && {command}; echo $? > {shlex.quote(str(self.exit_file))}; sleep 60"
        env = dict(os.environ, LOADERTOP_TEST_TAG=self.tag, TERM="xterm-256color")
        env.pop("CI", None)
        env.pop("NO_COLOR", None)
        subprocess.run(
            [
                "tmux",
                "-L",
                self.socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                str(width),
                "-y",
                str(height),
                "sh",
                "-c",
                shell,
            ],
            check=True,
            env=env,
        )

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False).stdout

    def screen(self) -> str:
        """The pane's text now."""
        return self.tmux("capture-pane", "-p")

    def send(self, *keys: str) -> None:
        """Type keys (tmux key names: ``q``, ``C-c``, ``2``)."""
        self.tmux("send-keys", *keys)

    def wait_for(
        self, predicate: Callable[[str], object], timeout: float = 60.0, what: str = "", poll_s: float = 0.1
    ) -> str:
        """Poll the screen every ``poll_s`` until ``predicate(screen)`` is true; return that screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(poll_s)
        raise AssertionError(f"timed out waiting for {what or predicate}; the screen was:\n{screen}")

    def processes(self) -> list[psutil.Process]:
        """loadertop and its workers (tagged by environment), not the shell around them."""
        return [p for p in tagged_processes(self.tag) if _is_python(p)]

    def main_pid(self) -> int:
        """The loadertop process (the tagged python whose parent is the shell)."""
        procs = self.processes()
        pids = {p.pid for p in procs}
        for proc in procs:
            if proc.ppid() not in pids:
                return proc.pid
        raise AssertionError("loadertop is not running")

    def exit_status(self, timeout: float = 15.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_file.exists() and self.exit_file.read_text().strip():
                return int(self.exit_file.read_text())
            time.sleep(0.1)
        return None

    def close(self) -> None:
        """Kill the tmux server and anything of ours still alive."""
        self.tmux("kill-server")
        for proc in tagged_processes(self.tag):
            try:
                proc.kill()
            except psutil.Error:
                pass


def app_key_latencies_ms(
    args: list[str], tmp: Path, ready: Callable[[str], object], presses: int, plus_shows: str, minus_shows: str
) -> list[float]:
    """Start the app with ``args``, wait until ``ready(screen)``, time ``presses`` key presses, quit."""
    app = TmuxApp(args, tmp)
    try:
        app.wait_for(ready, timeout=120, what="the app to be ready")
        time.sleep(2)
        latencies = key_latencies_ms(app, presses, plus_shows, minus_shows)
        app.send("q")
        app.exit_status(30)
    finally:
        app.close()
    return latencies


def percentiles_text(latencies: list[float]) -> tuple[str, float]:
    """``median 21 ms, p95 35 ms, max 45 ms`` and the p95."""
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms, max {ordered[-1]:.0f} ms", p95


def key_latencies_ms(app: TmuxApp, presses: int, plus_shows: str, minus_shows: str) -> list[float]:
    """Press ``+`` and ``-`` in turn; each time, ms until the pane shows what it should (polled every 10 ms)."""
    latencies = []
    for i in range(presses):
        key, expect = ("+", plus_shows) if i % 2 == 0 else ("-", minus_shows)
        started = time.perf_counter()
        app.send(key)
        app.wait_for(lambda s, e=expect: e in s, timeout=5, what=expect, poll_s=0.01)
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.2)
    return latencies


def _is_python(proc: psutil.Process) -> bool:
    try:
        return "python" in Path(proc.exe()).name
    except psutil.Error:
        return False


def step_of(screen: str) -> int:
    """The step shown in the header (0 before the first)."""
    match = re.search(r"step (\d+)", screen)
    return int(match.group(1)) if match else 0


HAVE_TMUX = shutil.which("tmux") is not None
