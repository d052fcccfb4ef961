"""Faults with real processes: a killed worker, a NaN loss, a stop during a stuck batch, a killed run's record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadertop import LoaderConfig, Trainer, TrainerState
from loadertop.core.measure.procs import child_processes
from loadertop.core.sessions.session import Session
from loadertop.core.train.diagnosis import WorkerDied, worker_death
from tests import workloads
from tests.conftest import ROOT
from tests.helpers import no_children_left, run_main, wait_for


def test_a_killed_worker_is_reported_within_seconds_with_its_pid_and_signal_and_restart_works() -> None:
    trainer = Trainer(
        workloads.make(size=4000, sleep_s=0.002), LoaderConfig(num_workers=2, batch_size=8), epochs=1, device="cpu"
    )
    trainer.start()
    wait_for(lambda: len(trainer.worker_pids()) == 2 and trainer.status().step >= 5)
    victim = trainer.worker_pids()[1]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert trainer.join(10)
    assert time.monotonic() - killed_at < 3.0
    error = trainer.error
    assert trainer.state is TrainerState.ERROR and error is not None and error.kind == "worker"
    assert error.message.startswith(
        f"DataLoader worker 1 (pid {victim}) was killed by SIGKILL: likely the kernel's out-of-memory killer"
    )
    assert no_children_left()
    done = trainer.status().step
    trainer.restart(LoaderConfig(num_workers=1, batch_size=8))  # try again: the run goes on
    wait_for(lambda: trainer.status().step > done + 5)
    assert trainer.close(10) and no_children_left()


class _FakeProcess:
    def __init__(self, pid: int, dies_at: float | None, exitcode: int = -signal.SIGKILL) -> None:
        self.pid, self._dies_at, self._exitcode = pid, dies_at, exitcode

    def is_alive(self) -> bool:
        return self._dies_at is None or time.monotonic() < self._dies_at

    @property
    def exitcode(self) -> int | None:
        return None if self.is_alive() else self._exitcode


class _FakeIterator:
    def __init__(self, *workers: _FakeProcess) -> None:
        self._workers = list(workers)


def test_a_transfer_cut_by_a_dying_worker_is_reported_as_theworker_death() -> None:
    # Killed while handing a batch over, a worker shows up in the main process as a
    # ConnectionResetError before its exit is reaped; the death is what the user must see.
    soon = time.monotonic() + 0.2
    died = worker_death(
        _FakeIterator(_FakeProcess(11, None), _FakeProcess(12, soon)),
        ConnectionResetError(104, "Connection reset by peer"),
    )
    assert died is not None and str(died).startswith("DataLoader worker 1 (pid 12) was killed by SIGKILL")
    # PyTorch's own message counts even when the exit is not seen in time.
    exited = RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly")
    assert str(worker_death(_FakeIterator(_FakeProcess(12, None)), exited, grace_s=0.05)) == (
        "a DataLoader worker exited unexpectedly"
    )


def test_errors_while_every_worker_lives_stay_what_they_are_and_are_not_waited_on() -> None:
    alive = _FakeIterator(_FakeProcess(11, None), _FakeProcess(12, None))
    started = time.monotonic()
    assert worker_death(alive, ValueError("bad collate")) is None
    assert worker_death(_FakeIterator(), ConnectionResetError(104, "reset")) is None  # 0 workers
    assert time.monotonic() - started < 0.1
    assert worker_death(alive, EOFError(), grace_s=0.1) is None


def test_signals_name_their_likely_cause() -> None:
    assert "/dev/shm is full" in str(WorkerDied([(0, 11, -signal.SIGBUS)]))
    assert "crash in native code" in str(WorkerDied([(1, 12, -signal.SIGSEGV)]))
    assert str(WorkerDied([(2, 13, 3)])) == "DataLoader worker 2 (pid 13) exited with code 3"


def test_a_nan_loss_stops_the_run_naming_the_step_or_goes_on_when_asked() -> None:
    trainer = Trainer(workloads.nan_at(5), LoaderConfig(batch_size=8), epochs=1, device="cpu")
    trainer.start()
    assert trainer.join(30)
    error = trainer.error
    assert error is not None and error.kind == "nan" and error.step + 1 == 5
    assert error.message.startswith("the loss is nan at step 5: training diverged")
    assert trainer.status().first_nonfinite_step == 5

    going = Trainer(workloads.nan_at(5), LoaderConfig(batch_size=8), epochs=1, device="cpu", on_nan="continue")
    going.start()
    assert going.join(30) and going.state is TrainerState.FINISHED
    status = going.status()
    assert status.first_nonfinite_step == 5 and status.nonfinite_steps == 50 - 4


def test_headless_says_where_the_loss_went_bad(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run_main(["run", "--headless", "--workload", "tests.workloads:nan_at"], capsys)
    assert code == 1
    assert "warning: the loss is nan at step 5 (stopping)" in out
    assert "loadertop: run failed at step 5: the loss is nan at step 5" in err


@pytest.mark.parametrize("num_workers", [0, 2])
def test_closing_during_a_stuck_batch_takes_under_three_seconds(num_workers: int) -> None:
    trainer = Trainer(workloads.stalling(), LoaderConfig(num_workers=num_workers, batch_size=8), epochs=1, device="cpu")
    session = Session(trainer, sample_interval_s=0.5)
    session.start()
    wait_for(lambda: stalled(trainer), timeout=60)  # the batch holding sample 150 (60 s) is being made
    started = time.monotonic()
    session.close()
    took = time.monotonic() - started
    assert took < 3.0, took
    if num_workers:  # with 0 workers the stuck __getitem__ runs in the (daemon) training thread itself
        assert trainer.state.is_done and no_children_left(1.0)


def stalled(trainer: Trainer, quiet_s: float = 1.0) -> bool:
    """True once no batch has completed for ``quiet_s``."""
    step = trainer.status().step
    time.sleep(quiet_s)
    return step > 0 and trainer.status().step == step


def test_a_killed_run_keeps_every_batch_but_the_last_in_its_record(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--workload",
            "tests.workloads:sleepy",
            "--workers",
            "1",
            "--batch-size",
            "4",
            "--epochs",
            "50",
            "--record",
            str(record),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = record.read_text()
    lines = text.splitlines()
    complete = [json.loads(line) for line in lines[:-1]]
    batches = [r for r in complete if "event" not in r]  # between them, a memory line a system sample
    assert [r["step"] for r in batches] == list(range(1, len(batches) + 1))
    if text.endswith("\n") and "event" not in (last := json.loads(lines[-1])):  # the last line was complete too
        assert last["step"] == len(batches) + 1
    time.sleep(2)  # orphaned workers notice their parent is gone
    assert not [p for p in child_processes() if "loadertop" in " ".join(p.cmdline())]


def test_ten_hot_restarts_leave_children_fds_shm_and_memory_at_their_baseline() -> None:
    from loadertop.core.drive.soak import soak
    from loadertop.core.train.calibrated import make_sleep_workload

    trainer = Trainer(
        make_sleep_workload(size=100_000, sleep_ms=0.5), LoaderConfig(batch_size=8), epochs=1, device="cpu"
    )
    trainer.start()
    try:
        base, final = soak(trainer, 10)
    finally:
        assert trainer.close(10)
    assert final.children == base.children == 0
    assert final.fds <= base.fds and final.shm_entries <= base.shm_entries
    assert final.rss_mb < 1.10 * base.rss_mb
    assert no_children_left()
