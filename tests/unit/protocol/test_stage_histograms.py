"""A stage's histogram (``StageTime.hist``): its octaves, the bounds read from it, the slow-calls line and the wire."""

from __future__ import annotations

import pytest

from loadertop.core.protocol.messages import MessageError, StagesUpdate, server_message
from loadertop.core.protocol.stages import (
    COLLATE,
    HIST_BUCKETS,
    REST,
    StageFigures,
    StageTime,
    bucket_of,
    bucket_top_ms,
    describe_tails,
)


def hist(**counts: int) -> tuple[int, ...]:
    """A histogram with ``counts`` in the buckets named ``b<k>``."""
    found = [0] * HIST_BUCKETS
    for name, count in counts.items():
        found[int(name[1:])] = count
    return tuple(found)


def test_a_call_falls_in_the_octave_of_its_microseconds() -> None:
    # Bucket 0: under 1 us; bucket k: 2^(k-1) to 2^k us; the last: 2^22 us (4.2 s) and over.
    assert [bucket_of(s) for s in (0.0, 0.9e-6, 1e-6, 1.99e-6, 2e-6, 1023e-6, 1024e-6)] == [0, 0, 1, 1, 2, 10, 11]
    assert bucket_of(2**22 / 1e6) == bucket_of(3600.0) == HIST_BUCKETS - 1
    assert bucket_of(-1.0) == 0  # a clock that stepped back: the first bucket, not an index error
    assert bucket_top_ms(11) == 2.048 and bucket_top_ms(HIST_BUCKETS - 1) == float("inf")
    for seconds in (3e-6, 0.0031, 0.045, 1.5):  # every call is under its bucket's top and at or over the one before
        bucket = bucket_of(seconds)
        assert bucket_top_ms(bucket - 1) <= 1000 * seconds < bucket_top_ms(bucket)


def figures_with(*stages: StageTime, samples: int = 100) -> StageFigures:
    return StageFigures(2, samples, samples, stages)


def test_the_share_of_calls_is_bounded_by_the_top_of_the_bucket_it_reaches() -> None:
    read = StageTime("read", 100, 0.1, 100, 0.1, 0.01, hist(b10=97, b16=3))
    figures = figures_with(read)
    assert figures.at_most_ms(read, 0.5) == 1.024
    assert figures.at_most_ms(read, 0.97) == 1.024
    assert figures.at_most_ms(read, 0.99) == 65.536
    assert figures.at_most_ms(StageTime("old", 1, 0.1, 1, 0.1, 0.0), 0.99) is None  # a recording before histograms


def test_slow_calls_are_named_where_they_stand_out_from_the_stage_mean() -> None:
    # 3 calls in 100 of 32.8 ms or more against a mean of 1.5 ms: named; a stage whose calls are alike: not.
    read = StageTime("read", 100, 0.15, 100, 0.15, 0.01, hist(b10=97, b16=3))
    collate = StageTime(COLLATE, 100, 0.05, 100, 0.05, 0.05, hist(b9=60, b10=40))
    assert describe_tails(figures_with(read, collate)) == "slow calls: read 1% of calls 32.8 ms or more (mean 1.50 ms)"
    assert describe_tails(figures_with(collate)) is None
    # A cheap stage's calls that waited a millisecond for a core now and then (a worker descheduled on a busy
    # machine): 4 times its mean, but less than a sample's 5 ms: not named.
    normalize = StageTime("Normalize", 100, 0.015, 100, 0.015, 0.013, hist(b8=97, b11=3))
    elastic = StageTime("ElasticTransform", 100, 0.485, 100, 0.485, 0.48, hist(b13=100))
    assert describe_tails(figures_with(normalize, elastic)) is None
    assert describe_tails(dataclass_off(figures_with(read))) is None


def dataclass_off(figures: StageFigures) -> StageFigures:
    return StageFigures(figures.num_workers, figures.samples, figures.batches, figures.stages, "turned off")


def test_the_samples_histogram_is_left_out_where_stages_ran_inside_them() -> None:
    # The samples' histogram is the whole __getitem__'s: where a transform ran inside it, it is not the rest's.
    samples = StageTime(REST, 100, 0.15, 100, 0.15, 0.15, hist(b10=97, b16=3))
    crop = StageTime("RandomResizedCrop", 100, 0.05, 100, 0.05, 0.05, hist(b9=100))
    assert describe_tails(figures_with(crop, samples)) is None
    assert describe_tails(figures_with(samples)) == (
        "slow calls: __getitem__ (rest) 1% of calls 32.8 ms or more (mean 1.50 ms)"
    )


def test_histograms_travel_in_the_wire_and_an_older_one_reads_as_none() -> None:
    read = StageTime("read", 100, 0.15, 100, 0.15, 0.01, hist(b10=97, b16=3))
    figures = StageFigures(2, 100, 25, (read,), None, 100, 4_000, 9_000)
    assert StageFigures.from_wire(figures.to_wire()) == figures
    message = StagesUpdate(loader="train", figures=(figures,))
    assert server_message(message.to_wire()) == message  # the bytes read too
    older = figures.to_wire()
    for stage in older["stages"]:  # type: ignore[attr-defined]
        del stage["hist"]
    assert StageFigures.from_wire(older).stages[0].hist == ()
    assert server_message({"type": "stages", "loader": "train", "figures": [older]}).figures[0].stages[0].hist == ()


@pytest.mark.parametrize(
    ("counts", "error"),
    [
        ([1, -1], "figures[0].stages[0].hist must be at most 24 integers >= 0, got [1, -1]"),
        ([1] * 25, "figures[0].stages[0].hist must be at most 24 integers >= 0, got " + repr([1] * 25)),
        ("many", "figures[0].stages[0].hist must be a list of integers, got 'many'"),
    ],
)
def test_a_malformed_histogram_is_refused_naming_its_place(counts: object, error: str) -> None:
    wire = StageFigures(2, 1, 1, (StageTime("read", 1, 0.1, 1, 0.1, 0.0, hist(b1=1)),)).to_wire()
    wire["stages"][0]["hist"] = counts  # type: ignore[index]
    with pytest.raises(MessageError) as raised:
        server_message({"type": "stages", "loader": "train", "figures": [wire]})
    assert str(raised.value) == error
