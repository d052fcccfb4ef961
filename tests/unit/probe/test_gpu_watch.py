"""A launched script's GPU idle figures, made in its publisher's writer thread: from a fake NVML reader's samples
and recorded batches, exact; without a GPU it turns itself off."""

from __future__ import annotations

import json
import os
from pathlib import Path

from loadertop.core.measure.gpu_idle import GpuSamples, UtilSample
from loadertop.core.probe.gpu_watch import GpuWatch
from loadertop.core.probe.loader_reports import LoaderBatch
from loadertop.core.probe.publisher import Publisher
from loadertop.core.protocol.gpu_idle import GpuIdle
from loadertop.core.protocol.messages import Hello
from tests.helpers import record_schema_errors

HALF_BUSY = GpuSamples(0, (UtilSample(1001.0, 1002.0, 50.0),))
BATCHES = [(1000.5, 0.5, None), (1001.0, 0.25, 0.25), (1001.5, 0.25, 0.25), (1002.0, 0.25, 0.25)]
"""(handed to the loop at, load s, the loop's step on the batch before): the first two are the start's warm-up."""


class FakeReader:
    """``NvmlReader``'s part the watch uses: this process on GPU 0, each read the next of ``reads``."""

    def __init__(self, reads: list[GpuSamples], *, available: bool = True, gpu: int | None = 0) -> None:
        self.reads = reads
        self.available = available
        self.gpu = gpu
        self.asked = 0
        self.closed = False

    def gpu_of(self, pids: set[int]) -> int | None:
        assert pids == {os.getpid()}
        return self.gpu

    def utilization_samples(self, index: int) -> GpuSamples:
        self.asked += 1
        return self.reads.pop(0) if self.reads else GpuSamples(index, ())

    def close(self) -> None:
        self.closed = True


def test_each_loaders_steady_batches_get_the_idle_time_of_their_windows() -> None:
    reader = FakeReader([GpuSamples(0, ()), HALF_BUSY])
    watch = GpuWatch(lambda: reader)
    for at, load_s, step_s in BATCHES:
        watch.batch("train.py:9", 2, load_s, step_s, at)
    watch.tick(now=0.0)  # nothing yet
    watch.tick(now=0.5)  # within the second: NVML not asked
    assert reader.asked == 1 and watch.figures() == {}
    watch.tick(now=0.6, force=True)
    # 1001.0-1001.5 (its wait the last quarter) and 1001.5-1002.0 (the same), all half busy
    assert watch.figures() == {"train.py:9": (GpuIdle(2, 1.0, 0.5, 0.5, 0.25, gpu=0, wall_s=1.0),)}
    watch.stop()
    assert reader.closed
    watch.batch("train.py:9", 2, 0.25, 0.25, 1003.0)
    assert watch.books["train.py:9"].pending() == 0  # stopped: nothing kept


def test_without_a_gpu_it_turns_off_and_on_another_gpu_it_says_so() -> None:
    absent = FakeReader([], available=False)
    watch = GpuWatch(lambda: absent)
    watch.batch("a", 0, 0.1, 0.1, 1000.0)
    watch.batch("a", 0, 0.1, 0.1, 1000.5)
    watch.tick(now=0.0)
    assert absent.closed and absent.asked == 0 and watch.books["a"].pending() == 0
    watch.batch("a", 0, 0.1, 0.1, 1001.0)
    assert watch.books["a"].pending() == 0
    elsewhere = GpuWatch(lambda: FakeReader([], gpu=None))
    elsewhere.tick(now=0.0)
    assert elsewhere.note == "this process holds no context on a GPU NVML sees"


def test_a_launched_scripts_end_lines_and_record_have_each_loaders_gpu_idle_time(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    said: list[str] = []
    publisher = Publisher(
        hello=Hello(os.getpid(), ("train.py",), started=0.0), record=str(record), serve=False, say=said.append
    )
    publisher.gpu = GpuWatch(lambda: FakeReader([GpuSamples(0, ()), HALF_BUSY]))
    for step, (at, load_s, step_s) in enumerate(BATCHES, 1):
        publisher._put(("batch", (step, LoaderBatch("train.py:9", 1, step, 2, 8, load_s, step_s, at))))
    publisher.close()
    assert "train.py:9 with 2 workers: GPU 0 idle 50% of the time, 25% while waiting for data" in said
    [event] = [line for line in map(json.loads, record.read_text().splitlines()) if line.get("event") == "gpu_idle"]
    assert record_schema_errors(event) == []
    assert event["loader"] == "train.py:9" and GpuIdle.from_wire(event) == GpuIdle(2, 1.0, 0.5, 0.5, 0.25, wall_s=1.0)


def test_the_publisher_watches_no_gpu_unless_asked() -> None:
    publisher = Publisher(hello=Hello(os.getpid(), ("t",), started=0.0), serve=False)
    try:
        assert publisher.gpu is None
    finally:
        publisher.close()
