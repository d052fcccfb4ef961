"""A user's script under the monitor, in a real terminal: switch workers, detach, attach again, stop it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import psutil
import pytest

from loadertop.core.protocol.runtime import live_runs
from tests.conftest import ROOT
from tests.e2e.tmux import HAVE_TMUX, TmuxApp, step_of
from tests.helpers import eventually

pytestmark = [pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed"), pytest.mark.slow]

SCRIPT = str(ROOT / "tests" / "scripts" / "long_loop.py")


def workers_of(pid: int) -> list[int]:
    """The script's DataLoader workers: its python children (not the resource tracker, which is one too)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def test_run_switch_detach_attach_and_stop_a_script(tmp_path: Path, runtime_dir: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    launched = TmuxApp(
        ["run", "--sample-interval", "0.5", "--", sys.executable, SCRIPT, "--log", "--seconds", "300"],
        tmp_path / "first",
    )
    attached: TmuxApp | None = None
    try:
        screen = launched.wait_for(lambda s: step_of(s) > 10, what="the script's batches")
        assert "long_loop.py:48 (training): 0 workers" in screen
        assert "long_loop: starting, 0 workers" in screen  # the script's own output, in the log panel
        script_pid = live_runs()[0].pid
        assert f"pid {script_pid}" in screen

        launched.send("2")
        launched.wait_for(lambda s: "r: switch 0 → 2 workers" in s, timeout=5, what="the pending switch")
        launched.send("r")
        screen = launched.wait_for(
            lambda s: "2 workers, batch 16 │ RUNNING" in s and re.search(r"\bw1\s+\d+", s),
            timeout=30,
            what="2 workers in the header and the processes panel",
        )

        # The script's own DataLoader workers, under its pid, are the ones shown (re-spawned every epoch:
        # not persistent, so the pids are compared at one moment).
        def shown_are_the_scripts() -> bool:
            pids, screen = workers_of(script_pid), launched.screen()
            return len(pids) == 2 and all(re.search(rf"\bw[01]\s+{pid}\b", screen) for pid in pids)

        assert eventually(shown_are_the_scripts, 20)

        launched.send("d")
        assert launched.exit_status() == 0
        assert psutil.pid_exists(script_pid)  # detached: it runs on

        attached = TmuxApp(["attach"], tmp_path / "second")
        screen = attached.wait_for(
            lambda s: re.search(r"^│\s+0\s+\d", s, re.MULTILINE) and re.search(r"▶\s+2\s+\d", s),
            what="the history: rows for 0 and 2 workers",
        )
        assert "2 workers, batch 16 │ RUNNING" in screen
        assert "this monitor" not in screen  # it took control: no "watching only" warning either
        assert "watching only" not in screen

        attached.send("q")
        assert attached.exit_status() == 0
        assert eventually(lambda: not psutil.pid_exists(script_pid), 10)  # stopped by SIGINT, cleanly
        assert eventually(lambda: not launched.processes() and not attached.processes(), 10)
        assert not list(runtime_dir.glob("*.sock"))
    finally:
        launched.close()
        if attached is not None:
            attached.close()


def test_attach_watches_a_builtin_run_in_the_app_and_leaving_it_keeps_the_run(
    tmp_path: Path, runtime_dir: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "watcher").mkdir()
    app = TmuxApp(
        ["--workload", "tests.workloads:sleepy", "--epochs", "1000", "--sample-interval", "0.5"], tmp_path / "app"
    )
    watcher: TmuxApp | None = None
    try:
        app.wait_for(lambda s: step_of(s) > 5, what="the built-in run's batches")
        pid = app.main_pid()
        watcher = TmuxApp(["attach", "--sample-interval", "0.5"], tmp_path / "watcher")
        screen = watcher.wait_for(
            lambda s: step_of(s) > 5 and "worker counts tried" in s, timeout=30, what="the attached monitor's batches"
        )
        assert f"pid {pid}" in screen
        # No log panel: the run prints nothing of its own (the layout follows the run's hello within a frame).
        watcher.wait_for(lambda s: "the script's output" not in s and step_of(s) > 5, timeout=5, what="no log panel")
        watcher.send("2")
        watcher.send("r")
        watcher.wait_for(lambda s: f"loadertop (pid {pid}) trains" in s, timeout=10, what="the refusal")
        watcher.send("q")
        assert watcher.exit_status() == 0
        app.wait_for(lambda s: "RUNNING" in s, timeout=5, what="the app still training")
        app.send("q")
        assert app.exit_status() == 0
    finally:
        app.close()
        if watcher is not None:
            watcher.close()
