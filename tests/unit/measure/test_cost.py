"""Per-configuration cost by accounting: short-lived workers, killed workers, vanished pids, the OS's own total."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loadertop import LoaderConfig, Trainer
from loadertop.core.drive.sweep import Sweep
from loadertop.core.measure import cost
from loadertop.core.measure.cost import TreeCpuClock
from loadertop.core.measure.procs import child_processes
from loadertop.core.sessions.session import Session
from tests import workloads
from tests.conftest import ROOT
from tests.helpers import wait_for

BURN_S = 0.002  # CPU-seconds of pure-Python work per sample (tests.workloads.BurnDataset)


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.slow
def test_short_lived_workers_are_accounted_in_full() -> None:
    # 32 samples, batch 8: an epoch is 4 batches (~70 ms of loading), far shorter than the 1 s sampling
    # interval, and workers are not persistent: each epoch's workers live and die between two samples.
    trainer = Trainer(
        workloads.cpu_bound(size=32, cpu_s=BURN_S),
        LoaderConfig(num_workers=0, batch_size=8),
        epochs=10_000,
        device="cpu",
    )
    sweep = Sweep(trainer, (0, 1, 2), 40, extra_rounds=0, on_done=trainer.stop)
    session = Session(trainer, sample_interval_s=1.0, on_record=sweep.on_record, read_gpus=False)
    session.sampler.start()
    sweep.begin()
    assert trainer.join(120)
    session.close()
    rows = {s.num_workers: s for s in sweep.rows(trainer.store.summaries())}
    status = trainer.status()
    assert status.worker_spawns >= 10 * 1 + 10 * 2  # ten or more epochs each: re-spawned every epoch
    for s in rows.values():
        delivered = round(s.cpu_s / s.cpu_s_per_sample)
        assert delivered == s.samples + s.warmup_batches * 8  # every sample delivered, warm-up included
        assert s.cpu_s >= BURN_S * delivered  # at least the known loading work of what it delivered
        assert s.wall_s > 0 and s.rss_mb > 0
    # Where the work happened (not how many cores it got: that depends on what else the machine runs).
    assert rows[0].worker_cpu_share < 0.05 and rows[2].worker_cpu_share > 0.5


def test_a_five_batch_configuration_has_cpu_and_memory_without_any_sampler() -> None:
    trainer = Trainer(
        workloads.cpu_bound(size=200), LoaderConfig(num_workers=1, batch_size=4), max_batches=5, device="cpu"
    )
    trainer.start()
    assert trainer.join(60)
    (summary,) = trainer.store.summaries()
    assert summary.cpu_s >= BURN_S * 5 * 4 and summary.rss_mb > 0 and summary.wall_s > 0
    assert not math.isnan(summary.cpu_percent) and summary.worker_cpu_share > 0


def test_a_pause_costs_the_configuration_nothing() -> None:
    trainer = Trainer(workloads.make(size=400, sleep_s=0.002), LoaderConfig(num_workers=0, batch_size=4), device="cpu")
    trainer.start()
    wait_for(lambda: trainer.status().step >= 5)
    trainer.pause()
    wait_for(lambda: trainer.state.value == "paused")
    paused = trainer.store.summaries()[0].wall_s
    _burn(0.3)  # CPU spent in this process while paused: no configuration's
    time.sleep(0.5)
    assert trainer.store.summaries()[0].wall_s == paused
    trainer.resume()
    wait_for(lambda: trainer.status().step >= 15)
    assert trainer.close()
    (summary,) = trainer.store.summaries()
    assert summary.wall_s < trainer.status().elapsed_s - 0.5


@pytest.mark.slow
def test_a_killed_worker_keeps_its_cpu_up_to_its_death() -> None:
    trainer = Trainer(
        workloads.cpu_bound(size=4000, cpu_s=0.005), LoaderConfig(num_workers=1, batch_size=4), device="cpu"
    )
    trainer.start()
    wait_for(lambda: trainer.status().step >= 10)
    (pid,) = trainer.worker_pids()
    worker = psutil.Process(pid)
    before = sum(worker.cpu_times()[:2])
    os.kill(pid, signal.SIGKILL)
    assert trainer.join(30)
    assert trainer.error is not None and trainer.error.kind == "worker"
    (summary,) = trainer.store.summaries()
    assert summary.cpu_s * summary.worker_cpu_share >= before > 0.05
    assert not child_processes()


def test_a_pid_that_vanishes_between_listing_and_reading_is_skipped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = psutil.Process(child.pid)
    child.wait()
    clock = TreeCpuClock()
    clock._proc.children = lambda recursive=False: [gone]  # listed, then gone before it is read
    reading = clock.read()
    assert reading.children_s >= 0 and reading.rss_bytes > 0


def test_without_reaped_children_times_the_clock_keeps_what_it_last_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows reports no children_user/children_system: a child's CPU after the last reading is lost,
    # what was read before it exited stays counted, and the mode says "sampled".
    monkeypatch.setattr(cost, "_has_children_times", lambda proc: False)
    clock = TreeCpuClock()
    assert clock.mode == "sampled"
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        wait_for(lambda: sum(psutil.Process(child.pid).cpu_times()[:2]) >= 0.3)
        seen = clock.read().children_s
        assert seen >= 0.3
    finally:
        child.kill()
        child.wait()
    assert clock.read().children_s == seen


@pytest.mark.slow
def test_accounted_cpu_of_a_whole_run_agrees_with_the_operating_system(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadertop",
            "sweep",
            "--workload",
            "tests.workloads:cpu_bound",
            "--workers",
            "0,1,2",
            "--batches",
            "60",
            "--batch-size",
            "8",
            "--json",
            str(tmp_path / "s.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "s.json").read_text())
    os_total = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    accounted = sum(row["cpu_s"] for row in document["rows"])
    # Everything the tree spent after its start-up (imports, model) was credited to one configuration.
    measured = os_total - document["cpu_s_before_first_config"]
    assert abs(accounted / measured - 1) <= 0.10, (accounted, measured, os_total)
    assert document["cpu_accounting"] == "accounted"
