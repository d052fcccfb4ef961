"""GPU idle time from constructed NVML samples and waits: every figure exact (quarters of a second are exact floats)."""

from __future__ import annotations

from loadertop.core.measure.gpu_idle import (
    BEFORE_SAMPLES,
    MAX_PERIOD_S,
    GpuIdleBook,
    IdleTotals,
    UtilSample,
    clock_offset_s,
    idle_over,
    samples_from_nvml,
)
from loadertop.core.protocol.gpu_idle import GpuIdle

S = 1_000_000  # µs a second
OFFSET = 1000.0  # NVML's clock + 1000 s = UNIX time in these tests
RAW = [(int(10.5 * S), 0), (11 * S, 50), (int(11.5 * S), 100), (12 * S, 20)]
"""Four samples half a second apart after one at 10 s: idle all, half, none, 80% of their periods."""


def periods() -> tuple[UtilSample, ...]:
    return samples_from_nvml(RAW, offset_s=OFFSET, previous_us=10 * S)


def test_a_sample_covers_the_time_since_the_one_before_in_unix_seconds() -> None:
    assert periods() == (
        UtilSample(1010.0, 1010.5, 0.0),
        UtilSample(1010.5, 1011.0, 50.0),
        UtilSample(1011.0, 1011.5, 100.0),
        UtilSample(1011.5, 1012.0, 20.0),
    )
    assert [s.idle_fraction for s in periods()] == [1.0, 0.5, 0.0, 0.8]


def test_the_first_sample_ever_only_opens_the_next_period_and_bad_values_are_dropped() -> None:
    raw = [(12 * S, 20), (10 * S, 70), (11 * S, 50), (11 * S, 50), (int(11.5 * S), 140)]  # unsorted, a twin, a 140%
    # 11.5 s (140%) is dropped but closes its period: 12 s covers only 11.5-12
    expected = (UtilSample(1010.0, 1011.0, 50.0), UtilSample(1011.5, 1012.0, 20.0))
    assert samples_from_nvml(raw, offset_s=OFFSET) == expected
    assert samples_from_nvml([(9 * S, 10)], offset_s=OFFSET, previous_us=10 * S) == ()  # not after the last read


def test_a_gap_longer_than_a_sample_period_is_left_uncovered() -> None:
    samples = samples_from_nvml([(12 * S, 0), (15 * S, 0)], offset_s=OFFSET, previous_us=11 * S)
    assert samples == (UtilSample(1011.0, 1012.0, 0.0), UtilSample(1015.0 - MAX_PERIOD_S, 1015.0, 0.0))
    totals = idle_over(samples, 1011.0, 1015.0)
    assert totals == IdleTotals(covered_s=2.0, idle_s=2.0)  # 1012-1014 is in neither the idle nor the whole


def test_idle_time_is_spread_evenly_over_a_period_and_attributed_to_the_waits_it_overlaps() -> None:
    waits = [(1010.25, 1010.75), (1011.25, 1011.5), (1020.0, 1021.0)]  # the last one outside the window
    totals = idle_over(periods(), 1010.25, 1011.75, waits)
    # covered: 1.5 s; idle: 0.25 x 1 + 0.5 x 0.5 + 0.5 x 0 + 0.25 x 0.8 = 0.7 s
    # waiting: 0.25 (period 1) + 0.25 (period 2) + 0.25 (period 3); idle then: 0.25 x 1 + 0.25 x 0.5 + 0.25 x 0
    assert totals == IdleTotals(covered_s=1.5, idle_s=0.7, waiting_s=0.75, idle_waiting_s=0.375)
    assert idle_over(periods(), 1013.0, 1014.0, [(1013.0, 1014.0)]) == IdleTotals()  # no sample: nothing


def test_nvml_timestamps_are_anchored_to_the_clock_they_lie_just_behind() -> None:
    unix, boot = 1_700_000_000.0, 5000.5
    clocks = [(unix, 0.0), (boot, unix - boot)]
    assert clock_offset_s(int(5000.25 * S), clocks) == unix - boot  # time since boot (some drivers)
    assert clock_offset_s(int((unix - 0.5) * S), clocks) == 0.0  # UNIX time (most)
    assert clock_offset_s(int(3000 * S), clocks) is None  # on no clock known: no figure, never a guess


def test_the_book_settles_each_batch_once_samples_reach_its_end_and_sums_per_worker_count() -> None:
    book = GpuIdleBook()
    book.add_batch(2, 1010.25, 1010.75, 1011.75)  # before the first read: kept
    book.add_samples([], gpu=1)
    assert book.pending() == 1
    book.add_batch(0, 1011.75, 1011.9, 1012.5)  # ends after the newest sample: pending
    book.add_samples(periods(), gpu=1)
    assert book.figures() == (GpuIdle(2, 1.5, 0.7, 0.5, 0.375, gpu=1, wall_s=1.5),)
    book.add_samples(samples_from_nvml([(int(12.5 * S), 60)], offset_s=OFFSET, previous_us=12 * S), gpu=1)
    [two, zero] = book.figures()
    assert two == GpuIdle(2, 1.5, 0.7, 0.5, 0.375, gpu=1, wall_s=1.5)
    # 1011.75-1012: 20% busy; 1012-1012.5: 60% busy; waiting 1011.75-1011.9 in the 20% period
    assert (zero.covered_s, zero.idle_s) == (0.75, 0.25 * 0.8 + 0.5 * 0.4)
    assert abs(zero.waiting_s - 0.15) < 1e-9 and abs(zero.idle_waiting_s - 0.15 * 0.8) < 1e-9
    assert two.line() == "GPU 1 idle 47% of the time, 25% while waiting for data"


def test_without_a_gpu_the_book_keeps_no_batch() -> None:
    book = GpuIdleBook()
    for i in range(BEFORE_SAMPLES + 5):  # before the sampler's first read: a bounded few
        book.add_batch(0, i, i + 0.5, i + 1.0)
    assert book.pending() == BEFORE_SAMPLES
    book.no_gpu()
    book.add_batch(0, 1.0, 1.5, 2.0)
    assert book.pending() == 0 and book.figures() == ()


def test_a_batch_the_samples_cover_in_part_says_how_much() -> None:
    book = GpuIdleBook()
    book.add_batch(1, 1009.0, 1010.0, 1012.0)  # 3 s; the samples cover 1010-1012 only
    book.add_samples(periods())
    [idle] = book.figures()
    assert (idle.covered_s, idle.wall_s, idle.waiting_s, idle.coverage) == (2.0, 3.0, 0.0, 2 / 3)
    assert idle.line() == "GPU 0 idle 57% of the time, 0% while waiting for data (samples cover 67% of it)"
