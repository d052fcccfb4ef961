"""Verdicts, the fastest configuration, recent-batch statistics; recorded sessions round-trip."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import pytest

from loadertop import LoaderConfig, Trainer
from loadertop.core.measure.store import throughput_sem
from loadertop.core.policy.advice import (
    INPUT_BOUND_SHARE,
    MachineFacts,
    advise,
    default_counts,
    fastest,
    recent_stats,
    recommend,
    verdict,
)
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.sessions.replay import ReplaySession, load_view, save_view
from loadertop.core.sessions.session import Session
from tests import workloads
from tests.helpers import summary


def record(step: int, key: str, load_ms: float, compute_ms: float, warmup: bool = False) -> BatchRecord:
    return BatchRecord(
        step, 1, step, key, int(key[1]), 32, 32, load_ms / 1000, compute_ms / 1000, 1.0, None, 0.0, 0.0, warmup
    )


def test_verdict_threshold_and_words() -> None:
    assert verdict(math.nan, 10) is None and verdict(0, 0) is None
    edge = verdict(INPUT_BOUND_SHARE * 100, (1 - INPUT_BOUND_SHARE) * 100)
    assert edge is not None and not edge.input_bound  # "more than" the share
    bound = verdict(30, 10)
    assert bound is not None and bound.input_bound and bound.load_share == pytest.approx(0.75)
    assert bound.sentence() == "input-bound: the step waits for data 75% of the time"
    assert verdict(1, 99).label == "compute-bound"


def test_recent_stats_cover_only_the_running_configuration_since_it_started_without_warmup() -> None:
    records = [record(s, "w0 b32", 50, 10) for s in range(1, 11)]
    records += [record(11, "w2 b32", 99, 99, warmup=True), record(12, "w2 b32", 99, 99, warmup=True)]
    records += [record(s, "w2 b32", 5 + s % 2, 10) for s in range(13, 23)]
    stats = recent_stats(records, "w2 b32", window=50)
    assert stats.batches == 10
    assert stats.load_ms_mean == pytest.approx(5.5) and stats.compute_ms_mean == pytest.approx(10)
    assert stats.samples_per_s == pytest.approx(320 / 0.155)
    assert recent_stats(records, "w2 b32", window=4).batches == 4
    assert math.isnan(recent_stats(records, "w4 b32").load_ms_mean)  # not running: nothing recent


def test_fastest_and_a_recorded_session_round_trip(tmp_path: Path) -> None:
    trainer = Trainer(workloads.make(size=64), LoaderConfig(batch_size=8), epochs=3, device="cpu")
    session = Session(
        trainer,
        sample_interval_s=0.1,
        on_record=lambda r: trainer.restart(LoaderConfig(num_workers=1, batch_size=8)) if r.step == 8 else None,
    )
    session.start()
    assert trainer.join(60)
    view = session.view()
    session.close()
    assert view.system is not None and len(view.store.summaries) == 2
    assert view.advice is not None and view.advice.fastest is not None
    best = fastest(view.store.summaries)
    assert best is not None and best.samples_per_s == max(s.samples_per_s for s in view.store.summaries)

    path = tmp_path / "session.json"
    save_view(view, path)
    loaded = load_view(path)
    assert loaded.status == view.status and loaded.store.records == view.store.records
    assert loaded.store.starts == view.store.starts and loaded.system == view.system
    for a, b in zip(loaded.store.summaries, view.store.summaries, strict=True):  # NaN-safe comparison
        assert dataclasses.astuple(a).__repr__() == dataclasses.astuple(b).__repr__()

    replay = ReplaySession(loaded)
    replay.apply(LoaderConfig(num_workers=3))
    assert replay.view().status.config.num_workers == 3 and replay.commands == [("apply", LoaderConfig(3))]


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a loadertop session recording"):
        load_view(path)


MACHINE = MachineFacts(usable_cores=4, memory_total_bytes=8 * 1024**3)


def test_the_recommendation_is_the_fewest_workers_within_5_percent_of_the_fastest() -> None:
    rows = [summary(0, 300), summary(2, 790), summary(4, 800), summary(8, 795)]
    advice = recommend(rows)
    assert advice.fastest is rows[2] and advice.recommended is rows[1] and advice.decided
    assert advice.reason == (
        "2 workers: 790 ± 8 samples/s is within 1% of the fastest (4 workers, 800 ± 8 "
        "samples/s); fewer workers cost less CPU and memory"
    )
    two_slower = recommend([summary(2, 700), summary(4, 800)])
    assert two_slower.recommended_num_workers == 4 and two_slower.decided  # 12.5% slower
    assert two_slower.reason == "4 workers: the fastest measured (800 ± 8 samples/s)"
    too_few = recommend([summary(2, 900, batches=9), summary(4, 800)])
    assert too_few.fastest is not None and too_few.fastest.num_workers == 4  # 9 batches cannot be judged
    assert recommend([]).recommended is None


@pytest.mark.parametrize(("slower", "faster"), [((2, 479), (4, 765)), ((4, 1399), (8, 2039))])
def test_noise_never_passes_a_materially_slower_count_off_as_good_enough(slower, faster) -> None:
    # The two sweeps of issue 12: the old rule called these 37% and 31% gaps "within the measurement noise".
    for sem in (0.005, 0.15):  # a clean measurement, and one whose batches scatter widely
        rows = [summary(slower[0], slower[1], sem=sem * slower[1]), summary(faster[0], faster[1], sem=sem * faster[1])]
        assert recommend(rows).recommended_num_workers == faster[0]


def test_a_measurement_that_cannot_tell_says_so_with_the_figures() -> None:
    # 3% slower, but each throughput is uncertain by 4%: it may be within 5% of the fastest, or not.
    rows = [summary(0, 300), summary(2, 776, sem=31.0), summary(4, 800, sem=32.0)]
    advice = recommend(rows)
    assert advice.recommended_num_workers == 2  # as measured, within 5%
    assert advice.undecided == ("w2 b32", "w4 b32") and not advice.decided
    assert advice.reason.endswith(
        "; but the measurement cannot yet tell whether 2 workers (776 ± 62 samples/s) is "
        "within 5% of 4 workers: measure longer (more batches) to be sure"
    )
    # 10% slower and as uncertain: not recommended, but still undecided (it might be within 5%).
    doubtful = recommend([summary(2, 720, sem=40.0), summary(4, 800, sem=40.0)])
    assert doubtful.recommended_num_workers == 4 and doubtful.undecided == ("w2 b32", "w4 b32")
    # Too few blocks to estimate the error: undecided, not silently trusted.
    unknown = recommend([summary(2, 600, sem=math.nan), summary(4, 800)])
    assert unknown.recommended_num_workers == 4 and unknown.undecided == ("w2 b32", "w4 b32")
    # A count far from the line is decided even with a wide error.
    assert recommend([summary(0, 300, sem=30.0), summary(4, 800)]).decided


def test_throughput_error_counts_epoch_refills_as_their_own_stratum() -> None:
    # Steady batches of 10 ms with a little jitter, a 200 ms refill at each epoch start (every 20 batches).
    iters = [0.010 + 0.0002 * ((i * 7) % 5 - 2) for i in range(60)]
    refill = [int(i % 20 == 0) for i in range(60)]
    for i in range(0, 60, 20):
        iters[i] = 0.200
    sem = throughput_sem(iters, refill, samples=60 * 8, block=5)
    speed = 60 * 8 / sum(iters)
    # The refills do not pass for noise (per-batch scatter would make it ~45%), and where the
    # epoch starts fall is uncertain by about a quarter of one refill's extra time.
    naive = speed * statistics.stdev(iters) / math.sqrt(60) / statistics.fmean(iters)
    assert 0.02 * speed < sem < naive / 2
    assert math.isnan(throughput_sem(iters[:12], refill[:12], samples=96, block=5))  # 2 blocks: cannot tell
    flat = throughput_sem([0.01] * 30, [0] * 30, samples=240, block=5)
    assert flat == 0.0


def test_warnings_name_cores_memory_shm_input_bound_and_the_start_method() -> None:
    # Summed RSS (9,000 MB) would count the main process's pages once per worker: PSS is what the tree holds.
    rows = [
        dataclasses.replace(summary(0, 300, rss_mb=700), pss_mb=700, pss_mb_peak=710),
        dataclasses.replace(
            summary(8, 800, rss_mb=9000, load_ms=30.0, compute_ms=20.0),
            pss_mb=4900,
            pss_mb_peak=5000,
            worker_uss_mb=538,
            worker_uss_growth_mb_per_min=5.0,
        ),
    ]
    machine = MachineFacts(
        usable_cores=4, memory_total_bytes=8 * 1024**3, shm_used_bytes=90, shm_total_bytes=100, start_method="spawn"
    )
    warnings = advise(rows, machine).warnings
    assert any(w.startswith("8 workers on 4 usable cores") for w in warnings)
    assert (
        "memory: 8 workers peaked at 5,000 MB of PSS, 61% of RAM; each worker holds 538 MB of its own (USS)" in warnings
    )
    # 8 workers x 5 MB a minute for an hour: 2,400 MB, past 10% of 8 GiB.
    assert any(
        w.startswith(
            "memory: each worker's own memory (USS) grows 5.0 MB a minute at 8 workers: workers "
            "copy the pages of the dataset they touch"
        )
        for w in warnings
    )
    slow = [rows[0], dataclasses.replace(rows[1], worker_uss_growth_mb_per_min=1.0)]  # 480 MB an hour: under 10%
    assert not any("grows" in w for w in advise(slow, machine).warnings)
    assert any(w.startswith("/dev/shm is 90% full") for w in warnings)
    assert any(
        w.startswith("still input-bound at the fastest count (8 workers: the step waits for data 60%") for w in warnings
    )
    assert any("workers start with 'spawn'" in w for w in warnings)
    calm = advise([summary(0, 300), summary(2, 800, load_ms=1.0)], MACHINE)
    assert calm.warnings == () and calm.recommended_num_workers == 2


def test_memory_that_fell_back_to_rss_is_said_to_be_an_upper_bound() -> None:
    note = (
        "PSS/USS of pid 7 unreadable: /proc/7/smaps_rollup is not readable (another user's process, or a "
        "hardened kernel)"
    )
    rows = [
        summary(0, 300),
        dataclasses.replace(
            summary(2, 800, load_ms=1.0), pss_mb=900, pss_mb_peak=950, memory_source="rss", memory_note=note
        ),
    ]
    assert advise(rows, MACHINE).warnings == (
        f"memory: {note}: those figures are RSS, upper bounds (a page shared with the main process counts once "
        "per worker)",
    )


def test_default_counts_double_up_to_twice_the_cores() -> None:
    assert default_counts(1) == (0, 1, 2)
    assert default_counts(2) == (0, 1, 2, 4)
    assert default_counts(6) == (0, 1, 2, 4, 8, 12)
    assert default_counts(16) == (0, 1, 2, 4, 8, 16, 32)


def test_ranks_sharing_a_node_are_advised_on_their_share_of_its_cores_and_what_they_measured() -> None:
    # Two ranks on 4 cores: 2 cores a rank. This rank's best count costs 3 ms of CPU a sample (its tree,
    # workers included) at 700 samples/s: 2.1 cores a rank, 4.2 for both, past 90% of the node.
    rows = [
        dataclasses.replace(summary(0, 400.0), cpu_s_per_sample=0.002),
        dataclasses.replace(summary(3, 700.0), cpu_s_per_sample=0.003),
    ]
    shared = dataclasses.replace(MACHINE, ranks_on_node=2)
    warnings = advise(rows, shared).warnings
    assert (
        "3 workers per rank x 2 ranks on 4 usable cores (2.0 a rank): workers past a rank's share compete "
        "with the other ranks for CPU"
    ) in warnings
    assert (
        "the 2 ranks on this node need about 4.2 of its 4 cores at 3 workers (3.00 ms of CPU a sample, "
        "700 samples/s a rank): the node's CPU is the limit, more workers cannot make a rank faster"
    ) in warnings
    alone = advise(rows, MACHINE).warnings  # one process on the same 4 cores: neither applies
    assert not any("rank" in w for w in alone)
