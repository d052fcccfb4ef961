"""GPU idle figures of a built-in run (a fake NVML whose GPU is busy a known 25% of each sample period) and of a
script's loader (recorded batch messages and samples), and the end summary's lines."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadertop.cli.headless import run_headless
from loadertop.core.measure.gpu_idle import GpuSamples, UtilSample
from loadertop.core.policy.report import format_gpu_idle
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.gpu_idle import GpuIdle
from loadertop.core.protocol.messages import Batch, LoaderUpdate
from loadertop.core.sessions.remote import RemoteSession
from loadertop.core.sessions.replay import load_view, save_view
from loadertop.core.sessions.session import Session
from loadertop.core.train.engine import Trainer
from tests import workloads
from tests.helpers import FakeNvml, record_schema_errors, sweep, wait_for

STEP_US = 100_000


class LiveNvml(FakeNvml):
    """A GPU whose driver keeps a sample every 100 ms from the start, each 25% busy."""

    def __init__(self) -> None:
        super().__init__(pids=(os.getpid(),))
        self.t0_us = int(time.time() * 1e6)

    def nvmlDeviceGetSamples(self, handle: str, kind: int, timestamp: int) -> tuple[int, list[Any]]:
        now = int(time.time() * 1e6)
        self.samples = [(t, 25) for t in range(self.t0_us, now, STEP_US)]
        return super().nvmlDeviceGetSamples(handle, kind, timestamp)


def test_a_built_in_run_sums_its_gpus_idle_time_per_worker_count_into_the_view_and_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("pynvml", reason="the fake hands out nvidia-ml-py's own sample structs")
    monkeypatch.setitem(sys.modules, "pynvml", LiveNvml())
    trainer = Trainer(
        workloads.make(size=160, sleep_s=0.002), LoaderConfig(num_workers=0, batch_size=8), epochs=1, device="cpu"
    )
    kept = []
    record = io.StringIO()
    session = Session(trainer, sample_interval_s=0.05, record_file=record, on_record=kept.append)
    session.start()
    try:
        assert trainer.join(60.0)
        wait_for(lambda: session.gpu_idle.pending() == 0, timeout=10.0)  # samples reach the last batch
        view = session.view()
    finally:
        session.close()
    steady = [r for r in kept if not r.warmup]
    [idle] = view.gpu_idle
    assert view.gpu_idle_note is None and idle.num_workers == 0 and idle.gpu == 0
    # Samples every 100 ms cover every batch: the whole of each iteration, the whole of each wait (to the
    # precision of UNIX seconds as floats, ~0.2 µs a batch).
    assert math.isclose(idle.covered_s, sum(r.iter_s for r in steady), abs_tol=1e-5)
    assert math.isclose(idle.waiting_s, sum(r.load_s for r in steady), abs_tol=1e-5)
    assert math.isclose(idle.wall_s, idle.covered_s, abs_tol=1e-6)
    assert math.isclose(idle.idle_share or 0, 0.75) and math.isclose(idle.idle_waiting_s, 0.75 * idle.waiting_s)
    [event] = [line for line in map(json.loads, record.getvalue().splitlines()) if line.get("event") == "gpu_idle"]
    assert record_schema_errors(event) == []
    assert GpuIdle.from_wire(event).num_workers == 0 and event["idle_share"] == 0.75


def test_a_headless_run_ends_with_its_gpus_idle_time_its_last_batches_included(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: Path
) -> None:
    pytest.importorskip("pynvml", reason="the fake hands out nvidia-ml-py's own sample structs")
    monkeypatch.setitem(sys.modules, "pynvml", LiveNvml())
    trainer = Trainer(
        workloads.make(size=160, sleep_s=0.002), LoaderConfig(num_workers=0, batch_size=8), epochs=1, device="cpu"
    )
    out, err = io.StringIO(), io.StringIO()
    # One system sample at the start, none after: the figure comes from the samples read as the run closes.
    code = run_headless(trainer, out=out, err=err, sample_interval_s=60.0, progress_interval_s=60.0)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    heading = lines.index("GPU idle (NVML's utilisation samples over the batches' wall time):")
    assert re.fullmatch(r"  0 workers: GPU 0 idle 75% of the time, \d+% while waiting for data", lines[heading + 1])


def test_a_sweep_ends_with_the_gpus_idle_time_at_each_count(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pynvml", reason="the fake hands out nvidia-ml-py's own sample structs")
    monkeypatch.setitem(sys.modules, "pynvml", LiveNvml())
    *_, printed = sweep(workloads.make(size=4000, sleep_s=0.001), (0, 1), batches=12)
    lines = printed.splitlines()
    heading = lines.index("GPU idle (NVML's utilisation samples over the batches' wall time):")
    for count, line in zip(("0 workers", "1 worker"), lines[heading + 1 : heading + 3], strict=True):
        assert re.fullmatch(rf"  {count}: GPU 0 idle 75% of the time, \d+% while waiting for data", line), line


def test_the_end_summary_has_a_line_per_count_or_why_there_is_none() -> None:
    figures = [GpuIdle(0, 10.0, 4.1, 5.0, 3.8), GpuIdle(2, 8.0, 0.8, 0.4, 0.24), GpuIdle(4, 0.0, 0.0, 0.0, 0.0)]
    assert format_gpu_idle(figures) == [
        "GPU idle (NVML's utilisation samples over the batches' wall time):",
        "  0 workers: GPU 0 idle 41% of the time, 38% while waiting for data",
        "  2 workers: GPU 0 idle 10% of the time, 3% while waiting for data",
    ]
    note = "GPU 0 keeps no utilisation samples (NVML: Not Supported)"
    assert format_gpu_idle([], note) == [f"GPU idle: not measured: {note}"]
    assert format_gpu_idle([]) == []  # no GPU: nothing said here (the machine line says it)


def test_without_a_gpu_the_session_has_no_figures_and_nothing_piles_up() -> None:
    trainer = Trainer(workloads.make(size=64), LoaderConfig(num_workers=0, batch_size=8), epochs=1, device="cpu")
    record = io.StringIO()
    session = Session(trainer, read_gpus=False, sample_interval_s=0.05, record_file=record)
    session.start()
    try:
        assert trainer.join(60.0)
        view = session.view()
    finally:
        session.close()
    assert view.gpu_idle == () and view.gpu_idle_note is None and session.gpu_idle.pending() == 0
    assert '"gpu_idle"' not in record.getvalue()


def test_a_scripts_loader_gets_the_idle_time_of_its_own_waits_from_the_samples_the_monitor_reads() -> None:
    session = RemoteSession(pid=os.getpid(), socket_path=Path("/nonexistent"), read_gpus=False)
    # A script's batch: handed to the loop at ``time`` after ``load_ms`` in next(); its step comes with the next.
    batches = [(1000.5, 500.0, None), (1001.0, 250.0, 250.0), (1001.5, 250.0, 250.0), (1002.0, 250.0, 250.0)]
    batches.append((1002.5, 250.0, 250.0))
    session._wire.feed(
        [
            LoaderUpdate(name="train.py:9", num_workers=2, training=True).to_wire(),
            *(
                Batch("train.py:9", step, 1, step, 2, 8, load_ms, step_ms, at).to_wire()
                for step, (at, load_ms, step_ms) in enumerate(batches, 1)
            ),
        ]
    )
    session._sample_gpu(GpuSamples(0, (UtilSample(1001.0, 1002.0, 50.0), UtilSample(1002.0, 1003.0, 0.0))))
    # The first two batches are the start's warm-up; the third and fourth are whole (the fifth's step is not in):
    # 1001.25-1001.75 half busy, its wait 1001.25-1001.5; 1001.75-1002.25 half then not busy, its wait the first half.
    view = session.view()
    assert view.gpu_idle == (GpuIdle(2, covered_s=1.0, idle_s=0.625, waiting_s=0.5, idle_waiting_s=0.25, wall_s=1.0),)
    assert view.gpu_idle_note is None
    session._sample_gpu(GpuSamples(0, (), "GPU 0 keeps no utilisation samples (NVML: Not Supported)"))
    assert session.view().gpu_idle_note == "GPU 0 keeps no utilisation samples (NVML: Not Supported)"
    session._sample_gpu(None)  # no GPU: the figures made stay, no batch is kept any more
    assert session.view().gpu_idle_note is None and session._wire.tracks["train.py:9"].gpu_idle.pending() == 0


def test_a_saved_view_keeps_its_gpu_idle_figures_and_samples(tmp_path: Path) -> None:
    recorded = load_view(Path(__file__).resolve().parents[2] / "data" / "session.json")
    assert recorded.gpu_idle == () and recorded.gpu_idle_note is None  # a recording from before: nothing
    assert recorded.system is not None and recorded.system.gpu_samples is None
    read = GpuSamples(0, (UtilSample(1010.0, 1010.5, 40.0),), None)
    view = dataclasses.replace(
        recorded,
        system=dataclasses.replace(recorded.system, gpu_samples=read),
        gpu_idle=(GpuIdle(2, 10.0, 4.1, 5.0, 3.8, gpu=1, wall_s=10.0),),
        gpu_idle_note="a note",
    )
    save_view(view, tmp_path / "view.json")
    loaded = load_view(tmp_path / "view.json")  # (the summaries' NaN memory figures compare unequal: these fields only)
    assert (loaded.gpu_idle, loaded.gpu_idle_note) == (view.gpu_idle, "a note")
    assert loaded.system is not None and loaded.system.gpu_samples == read
