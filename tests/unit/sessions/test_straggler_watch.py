"""Headless torchrun: the input straggler named in a line, with hysteresis, in the end summary and in --record."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from loadertop.core.protocol.records import RECORD_SCHEMA
from loadertop.core.sessions.ranks import find_straggler
from loadertop.core.sessions.replay import load_view
from loadertop.core.sessions.straggler_watch import NOBODY, StragglerChange, StragglerHold, StragglerWatch
from loadertop.core.sessions.view import RankInfo, ScriptView, Straggler
from tests.conftest import ROOT

RECORDED = ROOT / "tests" / "data" / "ranks_session.json"
ONE = Straggler(1, 0.7, "rank 1 is slow")
ZERO = Straggler(0, 0.4, "rank 0 is slow")


def rank(number: int, load_ms: float, step_ms: float, step: int = 100, ended: str | None = None) -> RankInfo:
    return RankInfo(number, number, 2, 100 + number, 0, load_ms, step_ms, 100.0, step, ended=ended)


def script_of(*ranks: RankInfo) -> ScriptView:
    """A job's view as RanksSession makes it: its ranks and the rule's verdict on them."""
    recorded = load_view(RECORDED).script
    assert recorded is not None
    return replace(recorded, ranks=ranks, straggler=find_straggler(ranks))


SLOW_1 = (rank(0, 5.0, 25.5, 120), rank(1, 26.5, 4.1, 119))
EVEN = (rank(0, 5.0, 6.0, 130), rank(1, 5.2, 6.1, 129))


def test_a_verdict_is_taken_once_it_held_for_three_looks_in_a_row_and_one_noisy_look_changes_nothing() -> None:
    hold = StragglerHold(hold_looks=3)
    verdicts = [ONE, ONE, None, ONE, ONE, ONE, None, ONE, None, None, None, ZERO, ZERO, ZERO]
    changed = [hold.look(found, now=float(t)) for t, found in enumerate(verdicts)]
    assert [t for t, c in enumerate(changed) if c] == [5, 10, 13]  # rank 1, none, rank 0
    assert hold.named == ZERO and hold.looks == 14
    assert hold.named_s == {1: 5.0, 0: 0.0} and hold.watched_s == 13.0  # rank 1 stood named from look 5 to 10


def test_while_the_same_rank_stays_named_its_latest_score_and_evidence_are_kept() -> None:
    hold = StragglerHold(hold_looks=2)
    later = Straggler(1, 0.5, "rank 1 is slower now")
    assert [hold.look(s, now=t) for t, s in enumerate([ONE, ONE, later])] == [False, True, False]
    assert hold.named == later and hold.latest == {1: later}


def test_the_end_summary_names_the_rank_named_longest_with_its_latest_score_and_says_how_long() -> None:
    hold = StragglerHold(hold_looks=1)
    for t, found in enumerate([ONE, ONE, ONE, ONE, ZERO, ZERO, None]):
        hold.look(found, now=2.0 * t)
    assert hold.summary() == (
        "input straggler over the run: rank 1, score 0.70: rank 1 is slow "
        "(named for 8 s of the 12 s watched; none at the end)"
    )
    hold.look(ZERO, now=14.0)
    assert hold.summary().endswith("(named for 8 s of the 14 s watched; rank 0 at the end)")
    never = StragglerHold(hold_looks=3)
    assert never.summary() is None  # never looked: a job of one rank says nothing
    never.look(None, now=0.0)
    assert never.summary() == (
        "input straggler: none named: the ranks were compared at 1 look only (3 in a row name one)"
    )
    never.look(None, now=5.0)
    never.look(None, now=7.0)
    assert never.summary() == (
        "input straggler: none over the run (7 s watched: no rank's wait for data held the others back)"
    )


def test_the_lines_and_the_record_events_of_a_change() -> None:
    named = StragglerChange(ONE, None, 61, 1700000000.1234567)
    assert named.line() == "input straggler: rank 1, score 0.70: rank 1 is slow"
    assert named.event() == {
        "event": "straggler",
        "rank": 1,
        "score": 0.7,
        "evidence": "rank 1 is slow",
        "was": None,
        "step": 61,
        "time": 1700000000.123457,
    }
    other = StragglerChange(ZERO, ONE, 80, 1.0)
    assert other.line() == "input straggler: rank 0, score 0.40 (was rank 1): rank 0 is slow"
    cleared = StragglerChange(None, ONE, 90, 2.0)
    assert cleared.line() == f"input straggler: none any more (was rank 1): {NOBODY}"
    assert cleared.event() == {
        "event": "straggler",
        "rank": None,
        "score": None,
        "evidence": NOBODY,
        "was": 1,
        "step": 90,
        "time": 2.0,
    }


def test_the_recorded_job_names_rank_1_after_three_looks_and_clears_it_in_the_lines_and_the_record(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    record = tmp_path / "run.jsonl"
    record.write_text('{"rank": 0, "step": 1}\n')  # the ranks' own lines are kept: the events are appended
    watch = StragglerWatch(record=str(record), say=said.append)
    recorded = load_view(RECORDED).script
    assert recorded is not None and recorded.straggler is not None
    assert [watch.look(recorded, now=10.0 + t) is not None for t in range(4)] == [False, False, True, False]
    assert said == [f"input straggler: rank 1, score 0.70: {recorded.straggler.evidence}"]
    for t in range(3):
        watch.look(script_of(*EVEN), now=14.0 + t)
    assert said[1:] == [f"input straggler: none any more (was rank 1): {NOBODY}"]
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert events[0] == {"rank": 0, "step": 1}
    assert events[1:] == [
        {
            "schema": RECORD_SCHEMA,
            "event": "straggler",
            "rank": 1,
            "score": round(recorded.straggler.score, 4),
            "evidence": recorded.straggler.evidence,
            "was": None,
            "step": 481,
            "time": 12.0,
        },
        {
            "schema": RECORD_SCHEMA,
            "event": "straggler",
            "rank": None,
            "score": None,
            "evidence": NOBODY,
            "was": 1,
            "step": 129,
            "time": 16.0,
        },
    ]
    watch.finish()
    assert said[-1] == (
        f"input straggler over the run: rank 1, score 0.70: {recorded.straggler.evidence} "
        "(named for 4 s of the 6 s watched; none at the end)"
    )


def test_a_job_of_one_rank_or_ranks_not_measured_yet_name_nobody_and_say_nothing() -> None:
    said: list[str] = []
    watch = StragglerWatch(say=said.append, hold_looks=1)
    for t in range(3):
        watch.look(script_of(rank(0, 5.0, 25.0)), now=float(t))
        watch.look(script_of(rank(0, 5.0, 25.0), rank(1, float("nan"), float("nan"))), now=float(t))
    watch.finish()
    assert said == [] and watch.hold.looks == 0


def test_once_a_rank_has_ended_the_verdict_stands_and_the_summary_says_it() -> None:
    said: list[str] = []
    watch = StragglerWatch(say=said.append, hold_looks=2)
    for t in range(3):
        watch.look(script_of(*SLOW_1), now=float(t))
    crashed = (SLOW_1[0], replace(SLOW_1[1], ended="failed first: RuntimeError: rank 1 fails at batch 250"))
    for t in range(3, 8):  # the others' figures no longer compare: nothing more is said
        watch.look(script_of(*crashed), now=float(t))
        watch.look(script_of(*EVEN), now=float(t))
    assert watch.frozen and len(said) == 1 and said[0].startswith("input straggler: rank 1, score 0.70: ")
    watch.finish()
    assert said[1].startswith("input straggler over the run: rank 1, score 0.70: ")
    assert said[1].endswith("(named for 1 s of the 2 s watched)")


def test_a_rank_of_this_node_that_is_not_watched_does_not_stop_the_looks() -> None:
    unwatched = replace(
        rank(2, float("nan"), float("nan")), ended="not watched: its DataLoaders are not loadertop's", watched=False
    )
    watch = StragglerWatch(say=[].append, hold_looks=1)
    assert watch.look(script_of(*SLOW_1, unwatched), now=0.0) is not None and not watch.frozen


class _Failing:
    """A session whose view fails: the watch says so once and stops, the job runs on."""

    def __init__(self) -> None:
        self.closed = False

    def start(self) -> None:
        pass

    def view(self) -> object:
        raise RuntimeError("socket gone")

    def close(self, timeout_s: float = 10.0) -> list[int]:
        self.closed = True
        return []


def test_a_watch_whose_session_fails_says_so_in_one_line_and_the_launcher_goes_on() -> None:
    said: list[str] = []
    session = _Failing()
    watch = StragglerWatch(say=said.append, look_s=0.01, session_for=lambda pid: session)
    watch.start(12345)
    watch._thread.join(5.0)
    assert said == ["input straggler: not watched any more (RuntimeError: socket gone)"]
    watch.finish()
    assert session.closed and said == ["input straggler: not watched any more (RuntimeError: socket gone)"]
