"""System sampling with real worker processes; the no-GPU path; per-configuration cost."""

from __future__ import annotations

import builtins
import math
import os
import sys
import time

import psutil
import pytest

from loadertop import LoaderConfig, Trainer, TrainerState
from loadertop.core.measure.gpu_idle import GpuSamples, UtilSample
from loadertop.core.measure.system import NvmlReader, SystemSampler
from tests import workloads
from tests.helpers import FakeNvml, eventually, wait_for


def test_the_sampler_follows_the_workers_across_a_restart() -> None:
    trainer = Trainer(
        workloads.make(size=4000, sleep_s=0.001),
        LoaderConfig(num_workers=2, batch_size=8, persistent_workers=True),
        epochs=10,
        device="cpu",
    )
    sampler = SystemSampler(worker_pids=trainer.worker_pids, read_gpus=False)
    trainer.start()
    try:
        wait_for(lambda: trainer.state is TrainerState.RUNNING and len(trainer.worker_pids()) == 2)
        time.sleep(0.2)
        snapshot = sampler.sample()
        workers = snapshot.workers
        assert [w.worker_id for w in workers] == [0, 1]
        assert all(w.rss_bytes > 0 for w in workers)
        old_pids = {w.pid for w in workers}
        assert old_pids == set(trainer.worker_pids())
        assert snapshot.processes[0].role == "main" and snapshot.processes[0].pid == psutil.Process().pid
        assert snapshot.tree_rss_bytes >= sum(p.rss_bytes for p in snapshot.processes)

        trainer.restart(trainer.config.with_workers(1))
        wait_for(lambda: trainer.config.num_workers == 1 and trainer.state is TrainerState.RUNNING)
        snapshot = sampler.sample()
        assert len(snapshot.workers) == 1
        [worker] = snapshot.workers
        assert worker.worker_id == 0 and worker.pid not in old_pids and worker.rss_bytes > 0
        # Nothing stale kept (other helpers may be cached) once the old workers are reaped: after an overlapped
        # switch that happens in a thread just after the handover.
        wait_for(lambda: sampler.sample() is not None and not set(sampler._procs) & old_pids)
    finally:
        assert trainer.close(15)
    snapshot = sampler.sample()
    assert snapshot.workers == ()


def test_one_entry_per_logical_core_and_memory_and_shm() -> None:
    sampler = SystemSampler(read_gpus=False)
    time.sleep(0.1)
    snapshot = sampler.sample()
    assert len(snapshot.cpu_percent_per_core) == psutil.cpu_count(logical=True)
    assert all(0.0 <= c <= 100.0 for c in snapshot.cpu_percent_per_core)
    assert snapshot.memory_total_bytes > snapshot.memory_available_bytes > 0
    assert len(snapshot.load_average) == 3
    if psutil.LINUX:
        assert snapshot.shm_total_bytes is not None and snapshot.shm_total_bytes > 0


def test_without_nvml_the_snapshot_says_so_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pynvml(name: str, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    reader = NvmlReader()
    assert reader.status == "no NVIDIA GPU: the NVML library (nvidia-ml-py) is not installed"
    assert reader.read() == ()
    reader.close()


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> FakeNvml:
    pytest.importorskip("pynvml", reason="the fake hands out nvidia-ml-py's own sample structs")
    fake = FakeNvml(**kwargs)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_utilisation_samples_are_read_since_the_newest_seen_on_unix_time(monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = int(time.time()) - 10  # whole seconds: every figure below is exact
    us = 1_000_000
    buffer = [(t0 * us, 10), (t0 * us + us // 2, 60), ((t0 + 1) * us, 0)]
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),), samples=buffer)
    reader = NvmlReader()
    try:
        assert reader.status == "1 NVIDIA GPU"
        # The whole buffer first: its oldest sample only opens the next period.
        assert reader.utilization_samples(0) == GpuSamples(
            0, (UtilSample(t0, t0 + 0.5, 60.0), UtilSample(t0 + 0.5, t0 + 1.0, 0.0)), None
        )
        assert reader.utilization_samples(0) == GpuSamples(0, (), None)  # NVML's Not Found: nothing new
        fake.samples.append(((t0 + 2) * us, 100))  # two seconds later: the period is capped at one
        assert reader.utilization_samples(0) == GpuSamples(0, (UtilSample(t0 + 1.0, t0 + 2.0, 100.0),), None)
        assert fake.asked == [0, (t0 + 1) * us, (t0 + 1) * us]
        [gpu] = reader.read()
        assert gpu.used_by_tree and gpu.utilization_percent == 37.0
        assert reader.utilization_samples(5).note == "no NVIDIA GPU"  # an index NVML does not have
    finally:
        reader.close()
    assert fake.shut_down and reader.utilization_samples(0) == GpuSamples(None, (), "no NVIDIA GPU")


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (FakeNvml.NVML_ERROR_NOT_SUPPORTED, "GPU 0 keeps no utilisation samples (NVML: Not Supported)"),
        (FakeNvml.NVML_ERROR_FUNCTION_NOT_FOUND, "GPU 0: this NVIDIA driver has no nvmlDeviceGetSamples"),
    ],
    ids=["not supported", "function not found"],
)
def test_a_gpu_without_utilisation_samples_says_so_once_and_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, error: int, note: str
) -> None:
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),))
    fake.samples_error = error
    reader = NvmlReader()
    try:
        assert reader.utilization_samples(0) == reader.utilization_samples(0) == GpuSamples(0, (), note)
        assert len(fake.asked) == 1
        [gpu] = reader.read()  # the rest of the GPU's figures as before
        assert gpu.name == "Fake GPU" and gpu.utilization_percent == 37.0
    finally:
        reader.close()


def test_another_nvml_error_is_said_and_the_next_read_tries_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),))
    fake.samples_error = FakeNvml.NVML_ERROR_UNKNOWN
    reader = NvmlReader()
    try:
        assert reader.utilization_samples(0) == GpuSamples(
            0, (), "GPU 0's utilisation samples could not be read: NVML error: NVML error 999"
        )
        fake.samples_error = None
        assert reader.utilization_samples(0) == GpuSamples(0, (), None) and len(fake.asked) == 2
    finally:
        reader.close()


def test_new_samples_on_a_clock_not_known_give_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),), samples=[(1000, 50), (2000, 50)])  # 1 ms after some epoch
    reader = NvmlReader()
    try:
        assert reader.utilization_samples(0) == GpuSamples(0, (), None)  # the buffer's newest may just be old
        fake.samples.append((3000, 50))  # new since the last read, and still on no clock known
        assert reader.utilization_samples(0) == GpuSamples(
            0, (), "GPU 0's sample times are on a clock loadertop does not know"
        )
        assert fake.asked == [0, 2000]
    finally:
        reader.close()


def test_an_old_buffer_waits_for_new_samples_to_anchor_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = int(time.time()) - 3600  # the driver's newest sample an hour old: an idle GPU's
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),), samples=[(t0 * 1_000_000, 0)])
    reader = NvmlReader()
    try:
        assert reader.utilization_samples(0) == GpuSamples(0, (), None)
        now = int(time.time())
        fake.samples += [(now * 1_000_000, 30)]
        assert reader.utilization_samples(0) == GpuSamples(0, (UtilSample(now - 1.0, now, 30.0),), None)
    finally:
        reader.close()


def test_the_sampler_reads_the_samples_of_the_gpu_the_training_process_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    now_us = int(time.time() * 1_000_000)
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),), samples=[(now_us - 200_000, 50), (now_us - 100_000, 50)])
    sampler = SystemSampler()
    try:
        snapshot = sampler.sample()
        assert snapshot.gpu_status == "1 NVIDIA GPU" and snapshot.gpus[0].used_by_tree
        assert snapshot.gpu_samples is not None and snapshot.gpu_samples.gpu == 0
        assert [s.percent for s in snapshot.gpu_samples.samples] == [50.0]
        fake.pids = (os.getpid() + 1_000_000,)  # another process's GPU: not the training's
        snapshot = sampler.sample()
        assert snapshot.gpu_samples == GpuSamples(None, (), "the training process holds no context on a GPU NVML sees")
    finally:
        sampler.stop()


def test_the_gpu_a_process_holds_is_found_by_its_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(monkeypatch, pids=(os.getpid(),))
    reader = NvmlReader()
    try:
        assert reader.gpu_of({os.getpid()}) == 0
        fake.pids = ()
        assert reader.gpu_of({os.getpid()}) is None
    finally:
        reader.close()
    assert reader.gpu_of({os.getpid()}) is None  # closed: nothing asked


def test_without_a_gpu_the_snapshot_has_no_samples_and_no_note() -> None:
    sampler = SystemSampler(read_gpus=False)
    try:
        snapshot = sampler.sample()
        assert snapshot.gpu_samples is None and snapshot.gpus == ()
    finally:
        sampler.stop()


def test_the_gpu_status_here_is_words_or_real_gpus() -> None:
    sampler = SystemSampler()
    snapshot = sampler.sample()
    sampler.stop()
    if snapshot.gpus:
        assert snapshot.gpu_status.endswith(("NVIDIA GPU", "NVIDIA GPUs"))
    else:
        assert snapshot.gpu_status.startswith("no NVIDIA GPU: ")


@pytest.mark.gpu
def test_nvml_reads_every_gpu() -> None:
    reader = NvmlReader()
    if not reader.available:
        pytest.skip(reader.status)
    try:
        gpus = reader.read()
        assert gpus and all(g.name for g in gpus)
        assert all(g.memory_total_bytes and g.memory_total_bytes > 0 for g in gpus)
        assert all(g.utilization_percent is None or 0 <= g.utilization_percent <= 100 for g in gpus)
    finally:
        reader.close()


@pytest.mark.gpu
def test_a_real_gpus_utilisation_samples_are_on_unix_time_or_it_says_why() -> None:
    reader = NvmlReader()
    if not reader.available:
        pytest.skip(reader.status)
    try:
        reads: list[GpuSamples] = []

        def read() -> bool:
            reads.append(reader.utilization_samples(0))
            return bool(reads[-1].samples or reads[-1].note)

        if not eventually(read, timeout=5.0, poll_s=0.25):
            pytest.skip("the driver kept no utilisation samples for 5 s (some do not while the GPU is idle)")
        got = reads[-1]
        if got.note:
            assert got.note.startswith("GPU 0") and not got.samples  # not supported here: said, never a figure
            return
        now = time.time()
        assert all(now - 600 < s.start < s.end <= now + 1 and 0 <= s.percent <= 100 for s in got.samples)
        assert all(s.end - s.start <= 1.0 for s in got.samples)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(got.samples, got.samples[1:], strict=False))
    finally:
        reader.close()


def test_each_configuration_accumulates_its_cpu_and_peak_rss() -> None:
    switched = []

    def on_record(record) -> None:
        if record.step == 60 and not switched:
            switched.append(True)
            trainer.restart(trainer.config.with_workers(0))

    trainer = Trainer(
        workloads.make(size=120, sleep_s=0.004),
        LoaderConfig(num_workers=2, batch_size=4),
        epochs=4,
        device="cpu",
        on_record=on_record,
    )
    sampler = SystemSampler(
        interval_s=0.05, worker_pids=trainer.worker_pids, on_sample=lambda _s: trainer.sample_cost(), read_gpus=False
    )
    sampler.start()
    trainer.start()
    assert trainer.join(120)
    sampler.stop()
    two, zero = trainer.store.summaries()
    assert (two.num_workers, zero.num_workers) == (2, 0)
    for summary in (two, zero):
        assert not math.isnan(summary.cpu_percent) and summary.cpu_percent >= 0
        assert summary.rss_mb > 10
    assert two.rss_mb > zero.rss_mb  # two worker processes on top of the main one


def test_the_samplers_own_cost_is_measured() -> None:
    sampler = SystemSampler(interval_s=0.01, read_gpus=False)
    sampler.start()
    time.sleep(0.5)
    sampler.stop()
    snapshot = sampler.latest()
    assert snapshot is not None
    assert 0 < snapshot.sampler_cpu_fraction < 1


def test_a_busy_process_shows_its_cpu_on_the_first_sample() -> None:
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.8)
        sampler = SystemSampler(worker_pids=lambda: [busy.pid], read_gpus=False)
        [worker] = sampler.sample().workers
        assert worker.pid == busy.pid
        assert worker.cpu_percent > 30  # psutil's own first reading would be 0
    finally:
        busy.kill()
        busy.wait()
