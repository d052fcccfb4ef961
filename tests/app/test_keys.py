"""Each key drives the session as described, and the screen shows the pending and applied configuration."""

from __future__ import annotations

import dataclasses

import pytest
from textual.widgets import Checkbox, Input, Select

from loadertop import LoaderConfig, TrainerState
from loadertop.core.drive.sweep import SweepProgress
from loadertop.core.sessions.replay import ReplaySession
from loadertop.core.train.engine import TrainerError
from loadertop.tui.app import LoaderTopApp
from loadertop.tui.screens import ConfigForm, HelpScreen, SweepResult
from loadertop.tui.widgets import ComparisonTable, ErrorPanel, PendingBar, RunHeader, WorkersPanel
from tests.helpers import SIZE, screen_text


def applied(replay: ReplaySession) -> list[LoaderConfig]:
    return [arg for name, arg in replay.commands if name == "apply"]


async def test_the_app_starts_the_session_and_shows_the_running_configuration(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert replay.commands[0] == ("start", None)
        header = screen_text(app, RunHeader)
        assert "2 workers, batch 32" in header and "RUNNING" in header and "step 300" in header
        assert "next: 2 workers, batch 32" in screen_text(app, PendingBar)
        assert "nothing to change" in screen_text(app, PendingBar)


async def test_plus_minus_and_digits_change_only_the_pending_count(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("plus", "plus")
        assert app.pending == LoaderConfig(num_workers=4)
        assert "hot-restart 2 → 4 workers" in screen_text(app, PendingBar)
        await pilot.press("minus")
        assert app.pending.num_workers == 3
        await pilot.press("7")
        assert app.pending.num_workers == 7
        await pilot.press("0", "minus")  # never below 0
        assert app.pending.num_workers == 0
        assert "hot-restart 2 → 0 workers" in screen_text(app, PendingBar)
        assert applied(replay) == []  # nothing restarts before r
        assert "2 workers, batch 32" in screen_text(app, RunHeader)


async def test_r_applies_the_pending_configuration_and_the_header_follows(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "r")
        assert applied(replay) == [LoaderConfig(num_workers=4)]
        await pilot.pause()
        assert "4 workers, batch 32" in screen_text(app, RunHeader)
        assert "nothing to change" in screen_text(app, PendingBar)
        await pilot.press("r")  # nothing pending: no restart
        assert applied(replay) == [LoaderConfig(num_workers=4)]


async def test_rapid_presses_send_only_what_r_applies_and_the_last_wins(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"13579", "r", *"086", "r", "plus", "r")
        assert [c.num_workers for c in applied(replay)] == [9, 6, 7]
        assert replay.view().status.config.num_workers == 7


async def test_p_pauses_and_resumes(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await pilot.pause()
        assert replay.commands[-1] == ("pause", None)
        assert "PAUSED" in screen_text(app, RunHeader)
        await pilot.press("p")
        await pilot.pause()
        assert replay.commands[-1] == ("resume", None)
        assert "RUNNING" in screen_text(app, RunHeader)


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_q_and_ctrl_c_stop_training_and_exit(replay: ReplaySession, key: str) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        await pilot.pause()
    assert ("stop", None) in replay.commands
    assert app.return_code == 0


async def test_help_lists_every_key_and_closes(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for key in ("+ / -", "0 … 9", "r", "c", "p", "?", "q, Ctrl+C"):
            assert key in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_the_settings_form_edits_the_pending_configuration(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "c")
        await pilot.pause()
        form = app.screen
        assert isinstance(form, ConfigForm)
        form.query_one("#batch-size", Input).value = "64"
        form.query_one("#prefetch", Input).value = "4"
        form.query_one("#persistent", Checkbox).value = True
        form.query_one("#start-method", Select).value = "spawn"
        form.query_one("#timeout", Input).value = "30"
        await pilot.click("#save")
        await pilot.pause()
        assert not isinstance(app.screen, ConfigForm)
        expected = LoaderConfig(
            num_workers=3,
            batch_size=64,
            persistent_workers=True,
            prefetch_factor=4,
            start_method="spawn",
            timeout_s=30.0,
        )
        assert app.pending == expected
        bar = screen_text(app, PendingBar)
        assert "2 → 3 workers, batch 32 → 64" in bar and "persistent on" in bar and "prefetch 4" in bar
        assert "start spawn" in bar and "timeout 30 s" in bar
        assert applied(replay) == []
        await pilot.press("r")
        assert applied(replay) == [expected]


async def test_the_settings_form_refuses_bad_values_in_words_and_escape_cancels(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.pause()
        form = app.screen
        form.query_one("#batch-size", Input).value = "0"
        await pilot.click("#save")
        await pilot.pause()
        assert isinstance(app.screen, ConfigForm)
        assert "batch size must be >= 1, got 0" in str(form.query_one("#form-error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ConfigForm)
        assert app.pending == LoaderConfig(num_workers=2)


async def test_an_error_is_shown_with_its_message_and_r_tries_again(replay: ReplaySession) -> None:
    view = replay.view()
    error = TrainerError("dataset", "ValueError: broken sample 37", 37, 300, "Traceback …")
    replay.set_view(
        dataclasses.replace(view, status=dataclasses.replace(view.status, state=TrainerState.ERROR, error=error))
    )
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.query_one(ErrorPanel)
        assert panel.has_class("-shown") and panel.display
        text = str(panel.render())
        assert "the dataset raised at step 301 (sample index 37): ValueError: broken sample 37" in text
        assert "retry with 2 workers" in screen_text(app, PendingBar)
        await pilot.press("r")  # same settings: after an error r still tries again
        await pilot.pause()
        assert applied(replay) == [LoaderConfig(num_workers=2)]
        assert not panel.has_class("-shown")


async def test_a_finished_run_keeps_its_results_and_r_trains_again(replay: ReplaySession) -> None:
    view = replay.view()
    replay.set_view(dataclasses.replace(view, status=dataclasses.replace(view.status, state=TrainerState.FINISHED)))
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")  # nothing to pause
        assert ("pause", None) not in replay.commands
        assert "FINISHED" in screen_text(app, RunHeader)
        assert "train again with 2 workers" in screen_text(app, PendingBar)
        await pilot.press("1", "r")
        assert applied(replay) == [LoaderConfig(num_workers=1)]


async def test_panels_keep_updating_behind_the_help_screen(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        view = replay.view()
        replay.set_view(dataclasses.replace(view, status=dataclasses.replace(view.status, step=777)))
        app.refresh_view()  # the timer's call, while the help screen is the active one
        await pilot.press("escape")
        await pilot.pause()
        assert "step 777" in str(app.query_one(RunHeader).render())


async def test_s_sweeps_esc_cancels_and_the_end_offers_the_recommended_count(replay: ReplaySession) -> None:
    view = replay.view()
    replay.set_view(dataclasses.replace(view, status=dataclasses.replace(view.status, config=LoaderConfig(0))))
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await pilot.pause()
        assert replay.commands[-1] == ("start_sweep", (0, 1, 2, 4))
        assert "sweep 1/4: 0 workers, 0/100 batches" in screen_text(app, PendingBar)
        await pilot.press("escape")
        assert replay.commands[-1] == ("cancel_sweep", None)
        await pilot.press("s")  # a new sweep after the cancelled one
        sweep = replay.view().sweep
        assert sweep is not None and sweep.state == "running"
        replay.set_view(dataclasses.replace(replay.view(), sweep=dataclasses.replace(sweep, index=4, state="done")))
        app.refresh_view()
        await pilot.pause()
        assert isinstance(app.screen, SweepResult)
        advice_text = str(app.screen.query_one("#sweep-advice").render())
        assert (
            "Recommended: 4 workers: the fastest measured (336 ± 75 samples/s); but the measurement cannot yet "
            "tell whether 2 workers (304 ± 28 samples/s)" in " ".join(advice_text.split())
        )
        assert app.pending == LoaderConfig(num_workers=4)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, SweepResult)
        assert applied(replay) == [LoaderConfig(num_workers=4)]


async def test_the_pending_bar_says_when_a_sweep_measures_undecided_counts_longer(replay: ReplaySession) -> None:
    view = replay.view()
    # Planned 0, 1, 2, 4; the measurements could not tell 2 from 4, so both are measured again.
    extending = SweepProgress((0, 1, 2, 4, 2, 4), 100, 4, 37, "running", planned=4)
    replay.set_view(dataclasses.replace(view, sweep=extending))
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "sweep measuring longer 1/2: 2 workers, 37/100 batches" in screen_text(app, PendingBar)
        planned = SweepProgress((0, 1, 2, 4), 100, 1, 5, "running", planned=4)  # before: the plain count
        replay.set_view(dataclasses.replace(view, sweep=planned))
        app.refresh_view()
        await pilot.pause()
        assert "sweep 2/4: 1 worker, 5/100 batches" in screen_text(app, PendingBar)


async def test_the_table_marks_the_fastest_and_the_recommended_rows(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        lines = str(app.query_one(ComparisonTable).render()).splitlines()
        rows = {line[3:].split()[0]: line[:3] for line in lines[1:5]}
        assert rows == {"0": "   ", "1": "   ", "2": "  ▶", "4": "★◆ "}
        assert any(line.startswith("◆ 4 workers: the fastest measured (336 ± 75 samples/s)") for line in lines)
        assert lines[3].split()[6:9] == ["304", "±28", "200"]  # samples/s ± two standard errors, start-up ms
        assert "6.58 ms" in lines[3]  # CPU per delivered sample, accounted


async def test_workers_that_exited_stay_dimmed_with_their_lifetime_until_replaced(replay: ReplaySession) -> None:
    view = replay.view()
    # Between two epochs: the last sample still shows the old workers, which the trainer has shut down.
    old = tuple(
        dataclasses.replace(p, pid=w.pid) if p.role == "worker" else p
        for p, w in zip(view.system.processes, (None, *view.status.exited_workers), strict=True)
    )
    between = dataclasses.replace(
        view,
        status=dataclasses.replace(view.status, worker_pids=()),
        system=dataclasses.replace(view.system, processes=old),
    )
    replay.set_view(between)
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app, WorkersPanel)
        assert "w0     12644 exited after 3.30 s" in text and "w1     12645 exited after 3.30 s" in text
        assert "new workers for the next epoch; 24 started" in text
        replay.set_view(view)  # the new workers are sampled: live rows again
        app.refresh_view()
        await pilot.pause()
        text = screen_text(app, WorkersPanel)
        assert "exited" not in text and "w0     12652" in text and "2 workers, tree CPU" in text


async def test_a_tiny_terminal_shows_a_notice_and_resizing_back_restores_the_layout(replay: ReplaySession) -> None:
    app = LoaderTopApp(replay)
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        assert app.query_one("#too-small").display and not app.query_one("#main").display
        await pilot.press("4")  # keys still work while the notice shows
        await pilot.resize_terminal(120, 36)
        await pilot.pause()
        assert app.query_one("#main").display and not app.query_one("#too-small").display
        assert "hot-restart 2 → 4 workers" in screen_text(app, PendingBar)
        assert "step 300" in screen_text(app, RunHeader)
        await pilot.resize_terminal(30, 8)
        await pilot.pause()
        assert app.query_one("#too-small").display


async def test_a_nan_loss_is_flagged_in_the_header(replay: ReplaySession) -> None:
    view = replay.view()
    status = dataclasses.replace(view.status, nonfinite_steps=3, first_nonfinite_step=298)
    replay.set_view(dataclasses.replace(view, status=status))
    app = LoaderTopApp(replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "⚠ loss NaN/inf from step 298 (3 batches)" in screen_text(app, RunHeader)
