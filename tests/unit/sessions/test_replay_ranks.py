"""A torchrun job's recording: every rank's view saved, read back and replayed (k and A act on the ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.replay import ReplaySession, load_other_ranks, load_view, save_view
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
RECORDED = DATA / "ranks_session.json"


def workers_by_rank(session: ReplaySession) -> dict[int, int]:
    script = session.view().script
    assert script is not None
    return {row.rank: row.num_workers for row in script.ranks}


def test_the_recording_holds_every_ranks_view_with_the_straggler() -> None:
    shown, others = load_view(RECORDED), load_other_ranks(RECORDED)
    assert shown.script is not None and shown.script.selected_rank == 0
    assert [view.script.selected_rank for view in others if view.script is not None] == [1]
    for view in (shown, *others):  # each as the monitor showed it: both ranks side by side, rank 1 the straggler
        assert view.script is not None and [row.rank for row in view.script.ranks] == [0, 1]
        assert view.script.straggler is not None and view.script.straggler.rank == 1
    # Each view is its own rank's: its process and its batches.
    assert shown.script.pid == shown.script.ranks[0].pid and others[0].script.pid == others[0].script.ranks[1].pid


def test_a_ranks_recording_round_trips(tmp_path: Path) -> None:
    shown, others = load_view(RECORDED), load_other_ranks(RECORDED)
    path = tmp_path / "ranks.json"
    save_view(shown, path, other_ranks=others)
    assert repr(load_view(path)) == repr(shown) and repr(load_other_ranks(path)) == repr(others)  # NaN-safe
    save_view(shown, path)
    assert load_other_ranks(path) == ()


def test_k_goes_through_the_recorded_ranks_and_a_switch_shows_in_every_ranks_panel() -> None:
    replay = ReplaySession.from_file(RECORDED)
    assert workers_by_rank(replay) == {0: 0, 1: 0}
    assert replay.select_next_rank() == 1
    assert replay.view() == load_other_ranks(RECORDED)[0]
    replay.apply(LoaderConfig(num_workers=2))  # rank 1 alone
    assert replay.view().status.config.num_workers == 2 and workers_by_rank(replay) == {0: 0, 1: 2}
    assert replay.select_next_rank() == 0
    assert replay.view().status.config.num_workers == 0 and workers_by_rank(replay) == {0: 0, 1: 2}
    replay.apply_all(LoaderConfig(num_workers=1))
    assert workers_by_rank(replay) == {0: 1, 1: 1}
    assert replay.select_next_rank() == 1 and replay.view().status.config.num_workers == 1
    assert replay.commands == [
        ("select_next_rank", 1),
        ("apply", LoaderConfig(2)),
        ("select_next_rank", 0),
        ("apply_all", LoaderConfig(1)),
        ("select_next_rank", 1),
    ]


def test_one_process_has_no_ranks_to_go_through_or_switch() -> None:
    replay = ReplaySession(load_view(DATA / "script_session.json"))
    assert replay.select_next_rank() is None
    with pytest.raises(RuntimeError, match="no ranks"):
        replay.apply_all(LoaderConfig(num_workers=2))
    assert replay.commands == []
