"""The monitor on a user's script (a recorded one): what the keys do and what the panels say."""

from __future__ import annotations

import dataclasses

from loadertop import LoaderConfig, TrainerState
from loadertop.core.protocol.status import TrainerError
from loadertop.core.sessions.replay import ReplaySession
from loadertop.tui.app import LoaderTopApp
from loadertop.tui.screens import HelpScreen
from loadertop.tui.widgets import LogPanel, LossChart, PendingBar, RanksPanel, RunHeader
from tests.helpers import SIZE
from tests.helpers import screen_text as text_of


async def test_the_script_its_loader_and_its_output_are_shown(script_replay: ReplaySession) -> None:
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        header = text_of(app, RunHeader)
        assert "1 worker, batch 16 │ RUNNING │ pid " in header and "python tests/scripts/long_loop.py" in header
        assert "epoch 19 " in header and "/0" not in header  # a script's epochs have no known total
        assert "long_loop.py:48 (training): 1 worker" in text_of(app, PendingBar)
        log = text_of(app, LogPanel)
        assert "long_loop: epoch 18 val loss" in log
        assert app.query_one(LogPanel).border_title == "the script's output (/run/user/1000/loadertop/run-4711.log)"
        assert app.screen.has_class("-script")


async def test_digits_and_r_switch_the_shown_loader_and_pause_sweep_and_settings_do_nothing(
    script_replay: ReplaySession,
) -> None:
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        assert "r: switch 1 → 3 workers" in text_of(app, PendingBar)
        await pilot.press("p", "s", "c")
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause()
    names = [name for name, _ in script_replay.commands]
    assert "pause" not in names and "start_sweep" not in names
    assert [arg for name, arg in script_replay.commands if name == "apply"] == [LoaderConfig(3, 16)]


async def test_l_shows_the_next_loader_and_d_detaches(script_replay: ReplaySession) -> None:
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        await pilot.pause()
        assert ("select_next_loader", "long_loop.py:49") in script_replay.commands
        await pilot.press("d")
        await pilot.pause()
    assert ("detach", None) in script_replay.commands
    assert ("stop", None) not in script_replay.commands


async def test_d_on_the_built_in_workload_only_explains(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d", "l")
        await pilot.pause()
        assert app.is_running
    assert not [c for c in replay.commands if c[0] in ("detach", "select_next_loader")]


async def test_a_script_that_failed_shows_why_and_keeps_its_history(script_replay: ReplaySession) -> None:
    view = script_replay.view()
    error = TrainerError("script", "RuntimeError: long_loop: failing on purpose after 600 batches", None, 600, "")
    script_replay.set_view(
        dataclasses.replace(
            view,
            status=dataclasses.replace(view.status, state=TrainerState.ERROR, error=error),
            script=dataclasses.replace(view.script, ended="the script exited with code 1"),
        )
    )
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "the script exited with code 1: the history stays; q quits" in text_of(app, PendingBar)
        assert "── the script exited with code 1" in text_of(app, LogPanel)
        assert "failing on purpose" in str(app.query_one("#error").render())


async def test_without_loadertop_log_the_loss_panel_says_which_line_to_add(script_replay: ReplaySession) -> None:
    view = script_replay.view()
    records = tuple(dataclasses.replace(r, loss=float("nan")) for r in view.store.records)
    script_replay.set_view(dataclasses.replace(view, store=dataclasses.replace(view.store, records=records)))
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "loadertop.log(loss=loss)" in text_of(app, LossChart)


async def test_help_lists_the_script_keys_and_the_log_file(script_replay: ReplaySession) -> None:
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        assert "detach: quit and leave the script running" in text
        assert "/run/user/1000/loadertop/run-4711.log" in text


class RankedReplay:
    """A recorded script seen as rank 0 of a two-rank torchrun job in which rank 1 straggles."""

    def __init__(self, replay: ReplaySession) -> None:
        self.replay = replay
        self.calls: list[tuple[str, object]] = []
        self.selected = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.replay, name)

    def view(self):
        from loadertop.core.sessions.ranks import find_straggler
        from loadertop.core.sessions.view import RankInfo

        view = self.replay.view()
        ranks = (RankInfo(0, 0, 2, 4711, 1, 3.2, 27.9, 540.0, 1200), RankInfo(1, 1, 2, 4712, 1, 24.8, 6.1, 538.0, 1201))
        script = dataclasses.replace(
            view.script, ranks=ranks, selected_rank=self.selected, straggler=find_straggler(ranks)
        )
        return dataclasses.replace(view, script=script)

    def select_next_rank(self) -> int:
        self.selected = 1 - self.selected
        self.calls.append(("select_next_rank", self.selected))
        return self.selected

    def apply_all(self, config: LoaderConfig) -> None:
        self.calls.append(("apply_all", config))


async def test_a_torchrun_job_shows_its_ranks_names_the_straggler_and_k_and_a_act_on_ranks(
    script_replay: ReplaySession,
) -> None:
    session = RankedReplay(script_replay)
    app = LoaderTopApp(session)  # type: ignore[arg-type]
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        panel = text_of(app, RanksPanel)
        assert app.screen.has_class("-ranks")
        assert "▶     0      0     4711        1     3.2     27.9" in panel
        assert " !    1      1     4712        1    24.8      6.1" in panel
        assert "input straggler: rank 1, score 0.69" in panel  # 21.6 ms of a 31.1 ms iteration
        assert "rank 1 waits 24.8 ms per batch for data, the others 3.2 ms" in panel
        await pilot.press("k")
        await pilot.pause()
        assert "▶!    1      1     4712" in text_of(app, RanksPanel)
        await pilot.press("2", "A")
        await pilot.pause()
    assert session.calls == [("select_next_rank", 1), ("apply_all", LoaderConfig(2, 16))]


async def test_k_and_a_do_nothing_for_a_single_process(script_replay: ReplaySession) -> None:
    app = LoaderTopApp(script_replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("k", "A")
        await pilot.pause()
        assert not app.screen.has_class("-ranks")
    assert not [name for name, _ in script_replay.commands if name in ("select_next_rank", "apply_all")]
