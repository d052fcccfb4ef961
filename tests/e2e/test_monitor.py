"""The real app with the real engine in a real terminal (tmux): switch workers, then every way to quit."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.tmux import HAVE_TMUX, TmuxApp, step_of
from tests.helpers import eventually, no_children_left

pytestmark = [pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed"), pytest.mark.slow]

# 200 samples of 2 ms each: quick batches, and long enough with many epochs.
ARGS = ["--workload", "tests.workloads:sleepy", "--batch-size", "16", "--epochs", "1000", "--sample-interval", "0.5"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TmuxApp]:
    running = TmuxApp(ARGS, tmp_path)
    yield running
    running.close()


def no_process_left(app: TmuxApp, timeout: float = 5.0) -> bool:
    return eventually(lambda: not app.processes(), timeout)


def test_switch_to_two_workers_then_quit_leaves_nothing(app: TmuxApp) -> None:
    screen = app.wait_for(lambda s: step_of(s) > 5, what="batches")
    assert "0 workers, batch 16" in screen and "RUNNING" in screen
    assert "no worker processes" in screen

    app.send("2")
    screen = app.wait_for(lambda s: "hot-restart 0 → 2 workers" in s, timeout=5, what="the pending change")
    assert "next: 2 workers, batch 16" in screen
    app.send("r")
    screen = app.wait_for(
        lambda s: "2 workers, batch 16 │ RUNNING" in s and re.search(r"^│?.*\bw1\s+\d+", s, re.MULTILINE),
        timeout=30,
        what="2 workers in the header and the processes panel",
    )
    assert re.search(r"\bw0\s+\d+", screen) and re.search(r"\bw1\s+\d+", screen)
    assert "nothing to change" in screen
    assert eventually(lambda: len(app.processes()) == 3)  # loadertop and its two workers

    step = step_of(screen)
    app.wait_for(lambda s: step_of(s) > step + 5, timeout=30, what="training to go on")
    app.send("q")
    assert app.exit_status() == 0
    assert no_process_left(app)


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("how", ["q", "ctrl-c", "sigterm", "sighup"])
def test_every_way_to_quit_during_a_stuck_batch_leaves_nothing_within_3_seconds(tmp_path: Path, how: str) -> None:
    shm_before = shm_entries()
    app = TmuxApp(["--workload", "tests.workloads:stalling", "--batch-size", "8", "--workers", "2"], tmp_path)
    try:
        app.wait_for(lambda s: re.search(r"\bw1\s+\d+", s) and step_of(s) > 3, what="2 workers and batches")
        # Wait until the run is stuck on the 60 s sample: no new step for a second and a half.
        deadline = time.monotonic() + 60
        while True:
            before = step_of(app.screen())
            time.sleep(1.5)
            if step_of(app.screen()) == before or time.monotonic() > deadline:
                break
        started = time.monotonic()
        if how == "q":
            app.send("q")
        elif how == "ctrl-c":
            app.send("C-c")
        elif how == "sigterm":
            os.kill(app.main_pid(), signal.SIGTERM)
        else:  # the terminal goes away, as when an SSH link drops
            app.tmux("kill-server")
        assert no_process_left(app, timeout=3.0), [p.cmdline() for p in app.processes()]
        took = time.monotonic() - started
        assert took < 3.0, took
        if how in ("q", "ctrl-c", "sigterm"):
            assert app.exit_status(5) == (128 + signal.SIGTERM if how == "sigterm" else 0)
            screen = app.screen()  # the terminal is back to the shell's screen: no panel left on it
            assert "±1 worker" not in screen and "╭─ loss" not in screen
        assert not {name for name in shm_entries() - shm_before if "torch" in name or "loadertop" in name}
    finally:
        app.close()


def test_keys_faster_than_workers_start_never_deadlock_and_the_last_wins(app: TmuxApp) -> None:
    app.wait_for(lambda s: step_of(s) > 3, what="batches")
    app.send("4", "r", "1", "r", "0", "r", "3", "r")
    screen = app.wait_for(
        lambda s: "3 workers, batch 16 │ RUNNING" in s and re.search(r"\bw2\s+\d+", s),
        timeout=60,
        what="3 workers running after a burst of restarts",
    )
    step = step_of(screen)
    app.wait_for(lambda s: step_of(s) > step + 5, timeout=30, what="training to go on")
    assert eventually(lambda: len(app.processes()) == 4)  # between epochs the workers re-spawn
    app.send("q")
    assert app.exit_status() == 0
    assert no_process_left(app)


def test_a_dataset_error_shows_in_the_app_keeps_the_history_and_r_tries_again(tmp_path: Path) -> None:
    app = TmuxApp(["--workload", "tests.workloads:broken", "--batch-size", "4", "--workers", "2"], tmp_path)
    try:
        screen = app.wait_for(lambda s: "ERROR" in s and "has error: no worker" in s, timeout=60, what="the error")
        assert "the dataset raised at step" in screen and "(sample index 37): ValueError: broken sample 37" in screen
        assert "retry with 2 workers, batch 4" in screen
        assert re.search(r"★◆▶\s+2\s+\d+", screen)  # the table kept the batches before the failure
        step = step_of(screen)
        assert step > 0
        app.send("r")  # the same sample fails again: the app says so again, nothing hangs
        app.wait_for(lambda s: "training again with 2 workers, batch 4" in s, timeout=10, what="the retry's notice")
        screen = app.wait_for(lambda s: "ERROR" in s and "sample index 37" in s, timeout=60, what="the error again")
        app.send("q")
        assert app.exit_status() == 1
        assert no_process_left(app)
    finally:
        app.close()


def test_a_sweep_in_the_app_fills_the_table_and_offers_the_recommendation(tmp_path: Path) -> None:
    app = TmuxApp(["--workload", "tests.workloads:sleepy", "--batch-size", "4", "--epochs", "1000"], tmp_path)
    try:
        app.wait_for(lambda s: step_of(s) > 3, what="batches")
        app.send("s")
        app.wait_for(lambda s: "sweep 1/4: 0 workers" in s or "sweep 2/4" in s, timeout=10, what="the sweep")
        screen = app.wait_for(lambda s: "sweep done" in s, timeout=120, what="the end of the sweep")
        assert "Recommended:" in screen and "(Enter)" in screen
        app.send("Escape")  # keep the current count
        screen = app.wait_for(lambda s: "sweep done" not in s, timeout=10, what="the result to close")
        for count in (0, 1, 2, 4):
            assert re.search(rf"^│ [★ ][◆ ][▶ ]\s+{count}\s+\d+", screen, re.MULTILINE), screen
        # The last count measured keeps running (4, or a count measured longer to settle the noise),
        # and the table marks that row as running.
        running = re.search(r"(\d+) workers?, batch 4 │ RUNNING", screen)
        assert running is not None and int(running.group(1)) in (0, 1, 2, 4), screen
        assert re.search(rf"^│ [★ ][◆ ]▶\s+{running.group(1)}\s+\d+", screen, re.MULTILINE), screen
        assert re.search(r"◆.*workers?:", screen)
        app.send("q")
        assert app.exit_status() == 0
        assert no_process_left(app)
    finally:
        app.close()


def test_the_app_runs_spawn_workers(tmp_path: Path) -> None:
    app = TmuxApp([*ARGS, "--workers", "2", "--start-method", "spawn"], tmp_path)
    try:
        screen = app.wait_for(
            lambda s: re.search(r"\bw1\s+\d+", s) and step_of(s) > 5, timeout=90, what="2 spawn workers and batches"
        )
        assert "2 workers, batch 16, spawn │ RUNNING" in screen
        app.send("q")
        assert app.exit_status() == 0
        assert no_process_left(app)
    finally:
        app.close()


def test_a_turns_autotune_on_and_the_panel_shows_its_changes_with_their_reasons(tmp_path: Path) -> None:
    app = TmuxApp(["run", "--workload", "loadertop.core.train.calibrated:storage_bound", "--batch-size", "8"], tmp_path)
    try:
        app.wait_for(lambda s: step_of(s) > 3, timeout=90, what="batches")
        assert "autotune:" not in app.screen()
        app.send("a")
        # The header and the panel's title each redraw on their own refresh: both within the wait, not one frame.
        app.wait_for(
            lambda s: (
                re.search(r"RUNNING │ autotune: (measuring|switching|settled)", s)
                and "╭─ predicted · autotune (a) " in s
            ),
            timeout=20,
            what="autotune's state in the header and the predicted panel's title",
        )
        # The tuner measures the running count, then jumps to the model's pick: "0 -> 3 workers: load 21.5 ms > ...";
        # the panel shows the latest change at 120x36, which may be a later step or the settle ("... 809 samples/s").
        change = re.compile(r"\b\d+ -> \d+ workers?: .*\b(ms|samples/s)\b")
        screen = app.wait_for(lambda s: change.search(s), timeout=90, what="a change with its reason", poll_s=0.5)
        assert re.search(r"autotune: (measuring|switching to|settled at) \d+", screen), screen
        app.send("q")
        assert app.exit_status(30) == 0
        assert no_process_left(app)
        assert no_children_left()
    finally:
        app.close()
