"""The stage panel: what it says of recorded figures in each state, and how t shows and hides it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from textual.app import Notify
from textual.message import Message

from loadertop.core.policy.advice import MachineFacts
from loadertop.core.policy.stages import verdict
from loadertop.core.protocol.stages import HIST_BUCKETS, REST, TURNED_OFF, StageFigures, StageTime, bucket_of, ms
from loadertop.core.sessions.replay import ReplaySession
from loadertop.core.sessions.view import SessionView
from loadertop.tui.app import LoaderTopApp
from loadertop.tui.widgets.stages import bar_runs, stage_letters, stages_text

RECORDED = Path(__file__).resolve().parent.parent / "data" / "stages_builtin.json"
GIB = 1024**3


def recorded() -> tuple[StageFigures, ...]:
    """The built-in workload's figures at 0, 2 and 1 workers (a real run's ``--record``)."""
    return tuple(StageFigures.from_wire(wire) for wire in json.loads(RECORDED.read_text()))


def with_stages(view: SessionView, stages: tuple[StageFigures, ...] | None) -> SessionView:
    return dataclasses.replace(view, stages=stages, machine=MachineFacts(usable_cores=2.0, memory_total_bytes=GIB))


def lines(view: SessionView, width: int = 50, height: int = 13) -> list[str]:
    text = stages_text(view, width, height)
    rows = text.plain.split("\n")
    assert len(rows) <= height and all(len(row) <= width for row in rows)
    return rows


def test_the_running_counts_stages_slowest_first_a_bar_per_count_and_the_verdict(recorded_view: SessionView) -> None:
    figures = recorded()
    view = with_stages(recorded_view, figures)  # 2 workers run
    rows = lines(view, 60, 20)
    running = figures[1]
    assert running.num_workers == 2
    table = rows[1 : 1 + len(running.stages)]  # below the heading, every stage: there is room for all ten
    assert [row[2:].rsplit(maxsplit=4)[0] for row in table] == [s.name for s in running.slowest_first()]
    assert rows[1].split()[-4:] == ["5.35", "2.37", "2.98", "48%"]  # ElasticTransform: wall, CPU, waiting, share
    bars = [row for row in rows if "▕" in row]
    assert [row[:3] for row in bars] == [" 0w", " 1w", "▶2w"]
    assert bars[2].endswith("11.12 ms") and set(bars[0].split("▕")[1].split("▏")[0]) == {"g"}  # 0 workers: whole
    assert " ".join(row.strip() for row in rows[-3:]) == verdict(running, 2.0)


def test_few_rows_keep_the_verdict_and_the_slowest_stages(recorded_view: SessionView) -> None:
    rows = lines(with_stages(recorded_view, recorded()), 38, 6)
    assert rows[1].startswith("E ElasticTransfo") and rows[2].startswith("G GaussianBlur")
    assert rows[3].startswith("57% of each sample is waiting") and rows[-1].endswith("…")


def test_timing_off_no_samples_yet_and_a_session_that_does_not_say(recorded_view: SessionView) -> None:
    off = with_stages(recorded_view, (StageFigures(2, 0, 0, (), TURNED_OFF),))
    assert " ".join(row.strip() for row in lines(off)) == f"stage timing off: {TURNED_OFF}"
    assert lines(with_stages(recorded_view, ()))[0] == "no samples timed yet"
    switched = with_stages(recorded_view, (*recorded()[:1], StageFigures(2, 0, 0, ())))  # 2 workers just started
    rows = lines(switched)
    assert rows[0] == "2 workers: no samples timed yet" and rows[1].startswith(" 0w ▕ggg")
    assert lines(with_stages(recorded_view, None))[0].startswith("this session has no stage figures")


def test_each_stage_has_its_own_letter_and_the_runs_fill_the_bar() -> None:
    names = ["read", "decode", "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ColorJitter#2", REST]
    letters = stage_letters([*names, "collate"])
    assert letters == {
        "read": "r",
        "decode": "d",
        "RandomResizedCrop": "R",
        "RandomHorizontalFlip": "H",
        "ColorJitter": "C",
        "ColorJitter#2": "J",
        REST: "g",
        "collate": "c",
    }
    figures = StageFigures(
        1, 3, 1, tuple(StageTime(name, 3, 0.001 * (i + 1), 0, 0.0, 0.0) for i, name in enumerate(names))
    )
    for width in (8, 13, 40):
        runs = bar_runs(figures, width)
        assert sum(cells for _, cells in runs) == width
        assert [stage.name for stage, _ in runs] == [n for n in names if n in {s.name for s, _ in runs}]


async def test_t_hides_and_shows_the_panel_and_says_when_the_session_has_none(recorded_view: SessionView) -> None:
    app = LoaderTopApp(ReplaySession(with_stages(recorded_view, recorded())))
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.has_class("-stages") and app.query_one("#stages").display and app.query_one("#loss").display
        await pilot.press("t")
        assert not screen.has_class("-stages") and not app.query_one("#stages").display
        await pilot.press("t")
        assert screen.has_class("-stages") and not screen.has_class("-stages-in-place")
    app = LoaderTopApp(ReplaySession(with_stages(recorded_view, recorded())))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.screen.has_class("-stages")  # no room beside the charts
        await pilot.press("t")
        await pilot.pause()
        assert app.screen.has_class("-stages-in-place") and app.query_one("#stages").display
        assert not app.query_one("#loss").display
    seen: list[Message] = []
    app = LoaderTopApp(ReplaySession(recorded_view))  # a recording from before stage timing
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await pilot.pause()
        assert not app.screen.has_class("-stages")
        await pilot.press("t")
        await pilot.pause()
        assert not app.screen.has_class("-stages")
    said = [str(m.notification.message) for m in seen if isinstance(m, Notify)]
    assert "no stage figures in this session (a recording made before stage timing)" in said


def test_a_long_verdict_takes_the_rows_the_table_and_bars_leave(recorded_view: SessionView) -> None:
    whole = dataclasses.replace(recorded()[0], num_workers=2)  # a sample timed whole: the rest and the collate
    rows = lines(with_stages(recorded_view, (whole,)), 40, 9)
    assert [row.split()[1] for row in rows[1:3]] == ["__getitem__", "collate"] and rows[3].startswith("▶2w ▕")
    assert len(rows[4:]) == 4 and " ".join(row.strip() for row in rows[4:]) == verdict(whole, 2.0)  # more than 3


def test_the_bytes_a_sample_reads_and_a_workers_rate_have_a_line_above_the_verdict(
    recorded_view: SessionView,
) -> None:
    zero, two, one = recorded()
    # 2 workers' bytes as a real run of the built-in workload read them (``--record``'s stages event).
    two = dataclasses.replace(two, io_samples=two.samples, storage_bytes=0, read_bytes=2_450 * two.samples)
    rows = lines(with_stages(recorded_view, (zero, two, one)), 60, 20)
    verdict_at = len(rows) - 3
    assert rows[verdict_at - 1] == f"I/O 2.45 KB a sample (storage 0 B) · {2.45 / two.sample_ms:.3g} MB/s a worker"
    assert rows[verdict_at - 2].startswith("▶2w ▕")  # below the bars (the running count last, by workers)
    assert not any(row.startswith("I/O") for row in lines(with_stages(recorded_view, (zero, one)), 60, 20))


def test_a_stage_whose_calls_stall_now_and_then_has_a_line_above_the_verdict(recorded_view: SessionView) -> None:
    zero, two, one = recorded()
    # The recorded decode stage as a cold disk makes it: most calls as recorded, 2% of them 65 ms or more.
    decode = next(s for s in two.stages if s.name == "decode")
    counts = [0] * HIST_BUCKETS
    counts[bucket_of(decode.wall_s / decode.calls)] = 98
    counts[bucket_of(0.07)] = 2
    stalled = dataclasses.replace(
        two, stages=tuple(dataclasses.replace(s, hist=tuple(counts)) if s is decode else s for s in two.stages)
    )
    rows = lines(with_stages(recorded_view, (zero, stalled, one)), 100, 20)
    verdict_at = len(rows) - 2
    mean = 1000 * decode.wall_s / decode.calls
    assert rows[verdict_at - 1] == f"slow calls: decode 1% of calls 65.5 ms or more (mean {ms(mean)} ms)"
    assert rows[verdict_at - 2].startswith("▶2w ▕")
    assert not any(row.startswith("slow calls") for row in lines(with_stages(recorded_view, (zero, two, one)), 100, 20))
