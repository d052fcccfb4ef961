"""Autotune in the monitor: the a key, the header's state, and the panel of the predicted curve and the changes."""

from __future__ import annotations

import dataclasses
import math

from textual.app import Notify
from textual.message import Message

from loadertop import LoaderConfig
from loadertop.core.policy.autotune import Change, TunerStatus
from loadertop.core.sessions.replay import ReplaySession
from loadertop.core.sessions.session import SessionView
from loadertop.tui.app import LoaderTopApp
from loadertop.tui.widgets import AutotunePanel, RunHeader
from loadertop.tui.widgets.autotune import change_rows, curve_rows, pick_counts
from loadertop.tui.widgets.header import autotune_text

SIZE = (120, 36)


def text_of(app: LoaderTopApp, widget_type: type) -> str:
    return str(app.query_one(widget_type).render())


def toasts(seen: list[Message]) -> list[str]:
    return [str(m.notification.message) for m in seen if isinstance(m, Notify)]


def tuner_calls(replay: ReplaySession) -> list[object]:
    return [arg for name, arg in replay.commands if name == "set_autotune"]


async def test_a_turns_autotune_on_and_off_and_the_header_says_where_it_stands(replay: ReplaySession) -> None:
    seen: list[Message] = []
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.pause()
        panel = app.query_one(AutotunePanel)
        assert "autotune" not in text_of(app, RunHeader)
        assert not panel.has_class("-shown")  # recorded before the advice had a curve: the table keeps the row
        await pilot.press("a")
        await pilot.pause()
        assert tuner_calls(replay) == [True]
        assert "RUNNING │ autotune: measuring 2 workers │" in text_of(app, RunHeader)
        assert panel.has_class("-shown") and panel.display
        assert "autotune on: measuring 2 workers first" in text_of(app, AutotunePanel)
        await pilot.press("a")
        await pilot.pause()
        assert tuner_calls(replay) == [True, False]
        assert "autotune" not in text_of(app, RunHeader)
        assert not panel.has_class("-shown")
    said = toasts(seen)
    assert "autotune on: measuring 2 workers, then the model's pick; each change and why beside the table" in said
    assert "autotune off: the count stays at 2" in said


async def test_the_header_names_each_state_of_the_tuner(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        for state, workers, shown in (
            ("measuring", 3, "autotune: measuring 3 workers"),
            ("measuring", 1, "autotune: measuring 1 worker"),
            ("switching", 5, "autotune: switching to 5"),
            ("settled", 8, "autotune: settled at 8 workers"),
        ):
            replay.set_view(dataclasses.replace(replay.view(), autotune=TunerStatus(state, workers, (), (), math.inf)))
            app.refresh_view()
            await pilot.pause()
            assert shown in text_of(app, RunHeader)
    assert autotune_text(None) == "" and autotune_text(TunerStatus("off", 2, (), (), math.inf)) == ""


async def test_manual_keys_still_switch_while_autotune_is_on_and_the_tuner_starts_over_from_there(
    replay: ReplaySession,
) -> None:
    seen: list[Message] = []
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("a", "4", "r")
        await pilot.pause()
    assert [name for name, _ in replay.commands if name != "start"][:2] == ["set_autotune", "apply"]
    assert replay.view().status.config == LoaderConfig(num_workers=4)
    assert tuner_calls(replay) == [True]  # still on
    assert "hot-restart: 2 → 4 workers; autotune starts over from 4" in toasts(seen)


class WithoutAutotune:
    """A session from before autotune (a monitor of an older script, say): no ``set_autotune``."""

    def __init__(self, replay: ReplaySession) -> None:
        self.replay = replay

    def __getattr__(self, name: str) -> object:
        if name == "set_autotune":
            raise AttributeError(name)
        return getattr(self.replay, name)


async def test_a_session_that_cannot_tune_says_so_in_a_toast(replay: ReplaySession) -> None:
    seen: list[Message] = []
    app = LoaderTopApp(WithoutAutotune(replay))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert "autotune" not in text_of(app, RunHeader)
    assert any("cannot tune" in t for t in toasts(seen))


async def test_a_refusal_of_the_session_is_a_toast_with_its_message(replay: ReplaySession) -> None:
    def refuse(enabled: bool) -> None:
        raise RuntimeError("the script's loaders cannot be tuned: an IterableDataset tunes at epoch boundaries only")

    replay.set_autotune = refuse  # type: ignore[method-assign]
    seen: list[Message] = []
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert "autotune" not in text_of(app, RunHeader)
    assert "the script's loaders cannot be tuned: an IterableDataset tunes at epoch boundaries only" in toasts(seen)


async def test_help_names_the_a_key_and_says_the_manual_keys_still_work(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        text = " ".join(str(app.screen.query_one("#help-text").render()).split())
        assert "a autotune on / off" in text
        assert "a manual switch (r) makes the tuner start over from that count" in text


async def test_the_panel_shows_the_recorded_changes_newest_last_and_the_predicted_curve(
    autotune_replay: ReplaySession, autotune_view: SessionView
) -> None:
    tuner = autotune_view.autotune
    assert tuner is not None and tuner.state == "settled" and tuner.changes
    app = LoaderTopApp(autotune_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.query_one(AutotunePanel)
        assert panel.has_class("-shown")
        text = text_of(app, AutotunePanel)
        assert f"autotune: settled at {tuner.workers} workers" in text_of(app, RunHeader)
        lines = text.splitlines()
        assert lines[0].startswith("CPU ceiling ┊ ")
        last = tuner.changes[-1]
        assert last.reason.removeprefix("settled: ")[:20] in " ".join(text.split())
        assert lines[-1].strip() in " ".join(row.plain for row in change_rows(last, panel.content_size.width))
        running = autotune_view.status.config.num_workers
        assert any(line.lstrip().startswith(f"{running} ") and line.endswith("▶") for line in lines)
        assert len(lines) <= panel.content_size.height


async def test_the_panel_draws_the_advice_curve_when_autotune_is_off_and_hides_on_narrow_terminals(
    replay: ReplaySession,
) -> None:
    view = replay.view()
    assert view.advice is not None
    curve = ((0, 195.0), (1, 220.0), (2, 304.0), (3, 331.0), (4, 336.0))
    replay.set_view(dataclasses.replace(view, advice=dataclasses.replace(view.advice, predicted=curve, ceiling=380.0)))
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.query_one(AutotunePanel)
        assert panel.has_class("-shown")
        lines = text_of(app, AutotunePanel).splitlines()
        assert lines[0].startswith("CPU ceiling ┊ 380")
        assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2", "3", "4"]
        assert lines[3].rstrip().endswith("304 ▶") and lines[1].rstrip().endswith("195 ●")
        assert all("┊" in line for line in lines[1:])  # the ceiling, on the bars' scale
        assert "autotune" not in text_of(app, RunHeader)
        await pilot.resize_terminal(70, 24)
        await pilot.pause()
        app.refresh_view()
        await pilot.pause()
        assert not panel.display  # under 80 columns the table keeps the whole row


def test_pick_counts_keeps_the_running_tuned_best_and_measured_counts_first() -> None:
    curve = tuple((n, 100.0 * min(n, 6)) for n in range(17))
    assert pick_counts(curve, 20, [3]) == list(range(17))
    assert pick_counts(curve, 4, [3, 9], [0, 1]) == [0, 3, 6, 9]  # 6: the fewest predicted fastest
    assert pick_counts(curve, 6, [3], [0]) == [0, 1, 2, 3, 4, 6]  # then the nearest to 3, the lower first


def test_a_change_is_its_move_first_then_its_reason_wrapped() -> None:
    jump = Change("jump", 0, 3, "load 21.5 ms > step 7.1 ms and 1.9 cores idle; model: 3 workers ~1,118 samples/s")
    rows = [row.plain for row in change_rows(jump, 40)]
    assert rows[0].startswith("0 -> 3 workers: load 21.5 ms > step")
    assert all(len(row) <= 40 for row in rows) and all(row.startswith("  ") for row in rows[1:])
    settle = Change("settle", 5, 4, "settled: 4 workers at 873 samples/s (±11%)")
    assert change_rows(settle, 80)[0].plain == "5 -> 4 workers: 4 workers at 873 samples/s (±11%)"
    stays = Change("settle", 2, 2, "settled: 2 workers at 757 samples/s (±7%)")
    assert change_rows(stays, 80)[0].plain == "settled: 2 workers at 757 samples/s (±7%)"


def test_the_curve_marks_measured_running_and_the_ceiling_and_counts_past_the_memory_budget() -> None:
    curve = ((0, 250.0), (1, 500.0), (2, 900.0), (3, None), (4, math.nan))
    rows = [row.plain for row in curve_rows(curve, 1000.0, 30, 6, running=1, measured=frozenset({0, 1}), heading=True)]
    assert rows[0].startswith("CPU ceiling ┊ 1,000")
    assert rows[1].endswith("250 ●") and rows[2].endswith("500 ▶") and rows[3].endswith("900  ")
    assert rows[4].endswith("memory  ") and rows[5].endswith("?  ")
    assert all(len(row) == 30 for row in rows[1:])
    assert rows[3].index("┊") == 2 + 18  # 1,000 in the last cell of a 19-cell bar
    far = [row.plain for row in curve_rows(curve, 5000.0, 30, 5, running=1, measured=frozenset(), heading=False)]
    assert not any("┊" in row for row in far)  # a ceiling far above the curve: in the heading only
