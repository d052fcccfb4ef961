"""The monitor in its own process: a real script under the launcher, watched through RemoteSession."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from loadertop.core.drive.launcher import spawn
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.runtime import live_runs
from loadertop.core.protocol.status import TrainerState
from loadertop.core.sessions.remote import RemoteSession
from loadertop.core.sessions.view import SessionView
from tests.conftest import ROOT
from tests.helpers import wait_for

SCRIPT = str(ROOT / "tests" / "scripts" / "long_loop.py")


@pytest.fixture
def watch(runtime_dir: Path) -> Iterator[object]:
    sessions: list[RemoteSession] = []

    def start(*args: str, grace_s: float = 5.0, **kwargs: object) -> RemoteSession:
        command = [sys.executable, SCRIPT, *args]
        child, log = spawn(command, **kwargs)  # type: ignore[arg-type]
        session = RemoteSession(
            child=child, log_path=log, command=command, read_gpus=False, grace_s=grace_s, sample_interval_s=0.2
        )
        session.start()
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        if session.child is not None and session.child.poll() is None:
            os.killpg(session.child.pid, signal.SIGKILL)
            session.child.wait(10)
        session.close()


def steps(view: SessionView) -> list[int]:
    return [r.step for r in view.store.records]


def test_a_switch_from_the_monitor_runs_two_workers_under_the_script_and_every_batch_is_accounted(watch) -> None:
    session = watch("--log", "--seconds", "60")
    wait_for(lambda: session.view().status.step >= 40, 60)
    view = session.view()
    assert view.script is not None and [i.name for i in view.script.loaders] == ["long_loop.py:48", "long_loop.py:49"]
    session.apply(LoaderConfig(num_workers=2, batch_size=16))
    wait_for(lambda: len(session.view().status.worker_pids) == 2, 30)
    script_pid = session.view().script.pid
    children = {p.pid for p in psutil.Process(script_pid).children()}
    assert set(session.view().status.worker_pids) <= children
    wait_for(lambda: session.view().status.step >= 120, 60)
    view = session.view()
    # Every batch the loop received is a record, in order, none twice (the last is still open).
    assert steps(view) == list(range(1, len(steps(view)) + 1))
    by_workers = {s.num_workers: s for s in view.store.summaries}
    assert set(by_workers) == {0, 2}
    for summary in by_workers.values():
        assert summary.batches > 0 and math.isfinite(summary.cpu_s) and summary.cpu_s > 0
    assert by_workers[2].worker_cpu_share > 0.2  # the workers' CPU, read by the script of its own tree
    assert by_workers[0].worker_cpu_share < 0.05
    assert [s.reason for s in view.store.starts if s.reason != "epoch"] == ["start", "restart"]
    assert all(math.isfinite(r.loss) for r in view.store.records)  # loadertop.log(loss=...) in the script
    assert view.script.control == "this monitor controls the run"
    session.stop()
    session.close()
    assert session.child.returncode is not None and session.view().status.state is TrainerState.STOPPED


def test_a_failing_script_shows_its_traceback_keeps_the_history_and_its_exit_code(watch) -> None:
    session = watch("--fail-after", "30")
    wait_for(lambda: session.view().script.ended is not None, 60)
    view = session.view()
    assert session.exit_code == 1
    assert view.status.state is TrainerState.ERROR
    assert "failing on purpose after 30 batches" in view.status.error.message
    assert "Traceback" in (session.traceback or "")
    assert len(view.store.records) == 30
    assert any("failing on purpose" in line for line in view.script.log_tail)  # the log panel has it too
    assert view.script.ended == "the script exited with code 1"


def test_a_script_without_a_dataloader_is_watched_and_says_so(watch) -> None:
    session = watch("--no-loader", "--seconds", "30")
    wait_for(
        lambda: (
            session.view().system is not None
            and any(line.startswith("long_loop: starting") for line in session.view().script.log_tail)
        ),
        30,
    )
    view = session.view()
    assert "no DataLoader yet" in view.notes
    assert view.system.processes[0].pid == session.child.pid
    with pytest.raises(RuntimeError, match="no DataLoader yet"):
        session.apply(LoaderConfig(num_workers=2))


def test_a_killed_script_ends_in_words_and_its_history_stays(watch) -> None:
    session = watch("--seconds", "60")
    wait_for(lambda: session.view().status.step >= 20, 60)
    os.kill(session.child.pid, signal.SIGKILL)
    wait_for(lambda: session.view().script.ended is not None, 10)
    view = session.view()
    assert view.script.ended == "the script was ended by signal 9 SIGKILL"
    assert session.exit_code == 128 + 9
    assert len(view.store.records) >= 19
    assert not live_runs()  # its socket was left behind, found stale and removed


def test_stop_sends_sigint_then_sigterm_to_a_script_that_ignores_it(watch, tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, time, torch\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    child, log = spawn([sys.executable, str(stubborn)])
    session = RemoteSession(child=child, log_path=log, read_gpus=False, grace_s=1.0)
    session.start()
    try:
        wait_for(lambda: "ready" in session.view().script.log_tail, 30)
        session.stop()
        session.close()
        assert session.exit_code == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()


def test_a_second_monitor_sees_the_history_and_only_watches(watch, runtime_dir: Path) -> None:
    session = watch("--seconds", "60")
    wait_for(lambda: session.view().status.step >= 20, 60)
    run = live_runs()[0]
    second = RemoteSession(pid=run.pid, socket_path=run.socket_path, log_path=run.log_path, read_gpus=False)
    second.start()
    try:
        wait_for(lambda: second.view().status.step >= 20, 30)
        assert second.view().store.records[0].step == 1  # the whole history, from the first batch
        assert second.view().script.control == f"watching only: the monitor with pid {os.getpid()} controls the run"
        second.apply(LoaderConfig(num_workers=1))
        wait_for(lambda: second.view().script.notice[1].startswith("refused: watching only"), 10)
    finally:
        second.close()


def test_training_goes_on_to_its_end_when_the_monitor_is_frozen_or_killed(runtime_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--record",
            str(record),
            "--",
            sys.executable,
            SCRIPT,
            "--seconds",
            "8",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: live_runs(remove_stale=False), 30)
    pid = live_runs()[0].pid
    code = (
        "import sys, time; from pathlib import Path; from loadertop.core.sessions.remote import RemoteSession;"
        f"s = RemoteSession(pid={pid}, socket_path=Path({str(live_runs()[0].socket_path)!r}), read_gpus=False);"
        "s.start(); time.sleep(60)"
    )
    monitors = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(2)]
    try:
        wait_for(lambda: len(psutil.Process(pid).net_connections("unix")) >= 3, 30)  # the listener and both monitors
        monitors[0].send_signal(signal.SIGSTOP)  # frozen: never reads again
        monitors[1].send_signal(signal.SIGKILL)
        assert run.wait(60) == 0
    finally:
        for monitor in monitors:
            monitor.kill()
            monitor.wait(10)
    err = run.stderr.read() if run.stderr else ""
    assert "long_loop: done" in err
    assert record.read_text().count("\n") > 50


def test_attach_with_nothing_running_or_a_wrong_pid_exits_2_in_one_line(runtime_dir: Path) -> None:
    for args, message in (
        (["attach"], "no loadertop run is running: start one with loadertop run -- python train.py"),
        (["attach", "12345678"], "no loadertop run with pid 12345678"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "loadertop", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert done.stderr == f"loadertop: error: {message}\n"
    listed = subprocess.run(
        [sys.executable, "-m", "loadertop", "attach", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (listed.returncode, listed.stdout) == (0, "")
    assert "no loadertop run is running" in listed.stderr


def test_the_log_panel_shows_a_scripts_output_as_text(runtime_dir: Path, tmp_path: Path) -> None:
    # Colours, a window title and a progress bar redrawn with \r: the panel shows the text, the last state.
    script = tmp_path / "noisy.py"
    script.write_text(
        "import sys\nprint('\\x1b[31mred\\x1b[0m and\\tplain', flush=True)\n"
        "print('\\x1b]0;a title\\x07after the title', flush=True)\n"
        "sys.stderr.write('10%\\r50%\\r100%\\n')\n"
    )
    child, log = spawn([sys.executable, str(script)])
    session = RemoteSession(child=child, log_path=log, read_gpus=False)
    session.start()
    try:
        wait_for(lambda: session.view().script.ended is not None, 30)
        session.close()
        assert session.view().script.log_tail == ("red and plain", "after the title", "100%")
        assert session.exit_code == 0 and session.view().status.state is TrainerState.FINISHED
    finally:
        if child.poll() is None:
            child.kill()


def test_a_builtin_run_is_served_like_a_script_and_attach_only_watches_it(runtime_dir: Path) -> None:
    # The built-in trainer publishes through the same protocol (one publisher, one loader): a monitor
    # that attaches sees its batches, its loss and its switch, and cannot take control from it.
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--workload",
            "tests.workloads:make",
            "--epochs",
            "200",
            "--switch",
            "30:2",
            "--sample-interval",
            "0.2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: any(r.pid == run.pid for r in live_runs()), 60)
        info = next(r for r in live_runs() if r.pid == run.pid)
        session = RemoteSession(pid=run.pid, socket_path=info.socket_path, read_gpus=False, sample_interval_s=0.2)
        session.start()
        wait_for(lambda: session.view().status.step >= 60, 60)
        view = session.view()
        assert steps(view) == list(range(1, len(steps(view)) + 1))
        assert all(math.isfinite(r.loss) for r in view.store.records)  # the trainer's own loss, per batch
        assert {s.num_workers for s in view.store.summaries} == {0, 2}
        assert [s.reason for s in view.store.starts if s.reason != "epoch"] == ["start", "restart"]
        assert view.script.control == f"watching only: loadertop (pid {run.pid}) trains this workload and keeps control"
        session.apply(LoaderConfig(num_workers=1))
        wait_for(lambda: "refused" in session.view().script.notice[1], 10)
        session.stop()  # leaving a built-in run only detaches: it is the other loadertop's
        session.close()
        assert session.detached and run.poll() is None
    finally:
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 130  # ^C's exit code, as before
    assert not [r for r in live_runs() if r.pid == run.pid]  # its socket went with it


def test_a_loss_logged_for_an_earlier_batch_is_given_to_that_batch() -> None:
    from loadertop.core.protocol.messages import Batch
    from loadertop.core.sessions.decoder import LoaderTrack

    track = LoaderTrack("train.py:9", started=0.0)

    def batch(step: int) -> Batch:
        return Batch(
            loader="train.py:9",
            step=step,
            epoch=1,
            batch=step,
            num_workers=0,
            samples=8,
            load_ms=1.0,
            step_ms=None if step == 1 else 2.0,
            switch_ms=0.0,
            time=100.0 + step,
        )

    for step in (1, 2, 3):
        track.batch(batch(step))
    track.log(2, {"loss": 0.5})  # batch 3 has arrived: batch 2's record is complete, its loss comes late
    track.log(3, {"loss": 0.25})  # the latest batch's, as a script's loadertop.log gives it
    track.end()
    assert [(r.step, r.loss) for r in track.store.snapshot().records][1:] == [(2, 0.5), (3, 0.25)]


def test_the_controlling_monitor_turns_autotune_on_and_off_and_a_watcher_is_refused(watch, runtime_dir: Path) -> None:
    session = watch("--seconds", "90")
    wait_for(lambda: session.view().status.step >= 5, 60)
    wait_for(lambda: session.view().autotune is not None, 10)  # the run says it can be tuned, and that it is off
    assert session.view().autotune.state == "off" and session.view().autotune.changes == ()
    session.set_autotune(True)
    wait_for(lambda: session.view().autotune.state != "off", 10)
    wait_for(lambda: session.view().autotune.changes, 60)  # its first change, with its reason and figures
    change = session.view().autotune.changes[0]
    assert change.from_workers == 0 and any(ch.isdigit() for ch in change.reason)
    assert session.view().script.notice[1].startswith("autotune: ")
    # A monitor attaching later learns the state and every change; it only watches, so it may not turn it off.
    run = live_runs()[0]
    second = RemoteSession(pid=run.pid, socket_path=run.socket_path, log_path=run.log_path, read_gpus=False)
    second.start()
    try:
        wait_for(lambda: second.view().autotune is not None and second.view().autotune.changes, 30)
        assert second.view().autotune.changes[0] == change and second.view().autotune.state != "off"
        second.set_autotune(False)
        wait_for(lambda: second.view().script.notice[1].startswith("refused: watching only"), 10)
        assert session.view().autotune.state != "off"
        session.set_autotune(False)  # the controller may
        wait_for(lambda: session.view().autotune.state == "off", 10)
        wait_for(lambda: second.view().autotune.state == "off", 10)
    finally:
        second.close()
