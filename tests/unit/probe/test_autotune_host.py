"""The one host of autotune: off the loop, turned on with a new round and off with the count kept, every change told
to each listener in turn, its thread told once; and on a drop-in loader (``LoaderTuning``), batches paired into
observations."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from loadertop.core.policy.autotune import AutoTuner, Budget, Change, Observation, Reading
from loadertop.core.probe.autotune_host import AutotuneHost
from loadertop.core.probe.loader import LoaderBatch
from loadertop.core.probe.tuning import LoaderTuning
from loadertop.core.protocol.messages import TunerState


def fed_host(**options: Any) -> tuple[AutotuneHost, list[int], dict[str, float]]:
    """A host on a 2-core budget whose readings come from ``clock``, turned on."""
    applied: list[int] = []
    clock = {"t": 0.0, "cpu": 0.0}
    host = AutotuneHost(
        AutoTuner(Budget(cores=2, max_workers=8)),
        apply=applied.append,
        read=lambda: Reading(clock["t"], clock["cpu"]),
        enabled=True,
        **options,
    )
    return host, applied, clock


def feed_until_it_jumps(host: AutotuneHost, clock: dict[str, float]) -> None:
    """Batches at 0 workers that wait 20 ms for 4 ms of step, read every 10 batches: enough for the model's jump."""
    for i in range(60):
        clock["t"] += 0.024
        clock["cpu"] += 0.006
        host.put(Observation(0, 8, 0.020 + (i % 3) * 1e-4, 0.004, clock["t"]))
        if i % 10 == 9:
            host.tick()


def test_the_host_feeds_the_tuner_off_the_loop_applies_its_changes_and_tells_each_listener_in_turn() -> None:
    heard: list[tuple[str, Change]] = []
    host, applied, clock = fed_host(
        on_change=[lambda c: heard.append(("first", c)), lambda c: heard.append(("second", c))]
    )
    feed_until_it_jumps(host, clock)
    [jump] = host.tuner.changes
    assert jump.kind == "jump" and jump.from_workers == 0 and applied == [jump.to_workers]
    assert heard == [("first", jump), ("second", jump)]
    assert not math.isnan(jump.ceiling)
    host.set_enabled(False)
    host.put(Observation(0, 8, 0.020, 0.004, clock["t"] + 1))
    clock["t"] += 2
    host.tick()
    assert len(heard) == 2 and applied == [jump.to_workers]  # off: nothing more


def test_off_the_status_says_off_and_on_again_a_new_round_starts_at_once() -> None:
    host, _, clock = fed_host()
    feed_until_it_jumps(host, clock)
    to = host.tuner.changes[0].to_workers
    assert (host.status().state, host.status().workers) == (TunerState.SWITCHING, to)
    host.set_enabled(False)
    assert (host.status().state, host.status().workers) == (TunerState.OFF, to)  # the count stays
    host.set_enabled(True)
    status = host.status()
    assert (status.state, status.workers) == (TunerState.MEASURING, None)  # from the running count's next batches
    assert status.changes == tuple(host.tuner.changes)  # the changes so far are kept


def test_a_batch_delivered_after_the_reading_waits_for_the_next_one() -> None:
    seen: list[Observation] = []
    host, _, clock = fed_host()
    observe = host.tuner.observe
    host.tuner.observe = lambda obs: seen.append(obs) or observe(obs)  # type: ignore[method-assign]
    clock["t"] = 10.0
    early, late = Observation(0, 8, 0.02, 0.004, 9.0), Observation(0, 8, 0.02, 0.004, 11.0)
    host.put(early)
    host.put(late)
    host.tick()
    assert seen == [early]
    clock["t"] = 12.0
    host.tick()
    assert seen == [early, late]


def test_the_host_thread_starts_once_and_is_told_to_be_left_out() -> None:
    told: list[int] = []
    host = AutotuneHost(
        AutoTuner(Budget(cores=2)), apply=lambda n: None, read=lambda: Reading(time.time(), 0.0), on_thread=told.append
    )
    assert not host.started and host.thread_id is None
    host.start()
    host.start()
    try:
        [thread] = [t for t in threading.enumerate() if t.native_id == host.thread_id]
        assert thread.name == "loadertop-autotune" and thread.daemon
        assert told == [host.thread_id]
    finally:
        host.stop()
    thread.join(2.0)
    assert not thread.is_alive()


class FakeLoader:
    """What ``LoaderTuning`` uses of a drop-in loader: its name, its status's worker pids, ``switch``, ``stages``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.switched: list[int] = []

    def switch(self, workers: int) -> None:
        self.switched.append(workers)

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(worker_pids=[])

    def stages(self) -> tuple[()]:
        return ()  # nothing fetched through it


def loader_tuning() -> tuple[LoaderTuning, list[Observation]]:
    clock = SimpleNamespace(read=lambda: SimpleNamespace(total_s=1.0, main_s=0.5))
    tuning = LoaderTuning(
        budget=Budget(cores=2), clock=clock, on_change=lambda change: None, interval_s=3600.0
    )  # its thread never ticks here: the test does
    seen: list[Observation] = []
    observe = tuning.tuner.observe
    tuning.tuner.observe = lambda obs: seen.append(obs) or observe(obs)  # type: ignore[method-assign]
    return tuning, seen


def test_a_loaders_batches_are_paired_with_the_next_ones_step_and_an_epochs_end_is_left_out() -> None:
    tuning, seen = loader_tuning()
    loader = FakeLoader("train")
    tuning.follow(loader)
    assert not tuning.started  # off: no thread yet
    tuning.feed(LoaderBatch("train", 1, 1, 0, 8, 0.010, None, 0.0))  # dropped: off
    tuning.set_enabled(True)
    try:
        assert tuning.started and tuning.loader is loader
        now = time.time() - 10
        batches = [
            LoaderBatch("train", 1, 1, 2, 8, 0.010, None, now, switch_s=0.002),
            LoaderBatch("train", 1, 2, 2, 8, 0.020, 0.005, now + 1),
            LoaderBatch("train", 2, 1, 2, 8, 0.030, None, now + 2),  # an epoch's first: its step holds the end
            LoaderBatch("train", 2, 2, 2, 8, 0.040, 0.006, now + 3),
        ]
        for batch in batches:
            tuning.feed(batch)
        tuning.tick()
        assert seen == [
            Observation(2, 8, 0.010 + 0.002, 0.005, now, refill=True),
            Observation(2, 8, 0.030, 0.006, now + 2, refill=True),
        ]
    finally:
        tuning.stop()


def test_following_another_loader_starts_a_new_round_without_the_first_ones_batches() -> None:
    tuning, seen = loader_tuning()
    first, second = FakeLoader("a"), FakeLoader("b")
    tuning.follow(first)
    tuning.set_enabled(True)
    try:
        now = time.time() - 10
        tuning.feed(LoaderBatch("a", 1, 5, 1, 8, 0.010, 0.004, now))
        tuning.feed(LoaderBatch("a", 1, 6, 1, 8, 0.010, 0.004, now + 1))  # pairs with the one before, once collected
        tuning.follow(second)
        tuning.feed(LoaderBatch("b", 1, 5, 3, 4, 0.020, 0.004, now + 2))
        tuning.feed(LoaderBatch("b", 1, 6, 3, 4, 0.020, 0.007, now + 3))
        tuning.tick()
        assert seen == [Observation(3, 4, 0.020, 0.007, now + 2)]
        assert tuning.status_message().loader == "b"
    finally:
        tuning.stop()


def test_a_reading_carries_the_running_counts_stage_wall_and_cpu_a_sample_without_the_loops_own_stages() -> None:
    from loadertop.core.measure.cost import TreeCpuClock
    from loadertop.core.probe.autotune_host import read_tree
    from loadertop.core.protocol.stages import COLLATE, PIN, REST, StageFigures, StageTime

    # 100 samples at 0 workers (not running) and at 0 workers read as the running count: the sample 4 ms of
    # wall (1 ms CPU), the collate 1 ms a sample (all CPU); pinning (the loop's, not a worker's) 2 ms.
    stages = (
        StageTime(REST, 100, 0.4, 10, 0.04, 0.01),
        StageTime(COLLATE, 10, 0.1, 10, 0.1, 0.1),
        StageTime(PIN, 10, 0.2, 10, 0.2, 0.2),
    )
    other = StageFigures(2, 100, 10, tuple(replace(s, wall_s=9.0) for s in stages))
    running = StageFigures(0, 100, 10, stages)
    reading = read_tree(TreeCpuClock(), [], stages=(other, running))
    assert reading.workers == 0
    assert reading.stage_wall_s_per_sample == 0.005
    assert reading.stage_cpu_s_per_sample == 0.002
    assert math.isnan(read_tree(TreeCpuClock(), [], stages=(other,)).stage_wall_s_per_sample)
