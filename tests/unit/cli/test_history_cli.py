"""The run history from the command line: a second autotuned run of the same workload starts where the first
settled and settles in fewer batches; ``loadertop history`` lists both; --forget searches again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import assert_usage_error, run_main, verified_unless_slower

WORKLOAD = "loadertop.core.train.calibrated:storage_bound"


def autotuned(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, *extra: str) -> list[dict[str, object]]:
    """The record of an autotuned headless run (its lines)."""
    record = tmp_path / f"{name}.jsonl"
    args = ["run", "--headless", "--autotune", "--max-batches", "240", "--workload", WORKLOAD, "--record", str(record)]
    code, _out, err = run_main([*args, *extra], capsys)
    assert code == 0, err
    return [json.loads(line) for line in record.read_text().splitlines()]


def changes(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line.get("event") == "autotune"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("LOADERTOP_HOME", str(path))
    return path


@pytest.mark.slow
def test_a_second_run_starts_where_the_first_settled_and_settles_in_fewer_batches(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = changes(first_lines := autotuned(tmp_path, capsys, "first"))
    settles = [c for c in first if c["change"] == "settle"]
    assert settles, first
    count = settles[0]["to"]
    second = changes(second_lines := autotuned(tmp_path, capsys, "second"))
    start = second[0]
    assert (start["change"], start["from"], start["to"]) == ("jump", 0, count)
    assert str(start["reason"]).startswith(f"starting at {count} workers: settled there on ")
    verified_unless_slower(second_lines, start, second[1], int(count))  # type: ignore[call-overload]
    # Fewer batches, counted where they are exact: the first run measured 0 workers before it jumped (20 steady
    # batches at the least), the second jumped at its first batch and measured one count only. (How many batches
    # each took to settle in all, over repeats: benchmarks/history.py.)
    first_jump = next(c for c in first if c["change"] == "jump")
    assert first_jump["from"] == 0 and int(first_jump["step"]) >= 20  # type: ignore[call-overload]
    assert int(start["step"]) < int(first_jump["step"])

    code, out, err = run_main(["history"], capsys)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [row[2] for row in rows] == ["2", "1"]  # the runs, newest first
    # Each run's latest settle (a run may tune again later), newest first.
    latest = [[c["to"] for c in changes(lines) if c["change"] == "settle"][-1] for lines in (second_lines, first_lines)]
    assert all(row[3] == "train" and row[-1] == WORKLOAD for row in rows)
    assert [int(row[-2]) for row in rows] == latest
    code, out, _ = run_main(["history", "--json"], capsys)
    runs = json.loads(out)
    assert [r["settled_workers"] for r in runs] == latest and all(r["rows"] for r in runs)
    assert runs[0]["signature"] == {
        "program": WORKLOAD,
        "name": "train",
        "dataset": "loadertop.core.train.calibrated.CostDataset",
        "length": 100_000,
        "batch_size": 32,
    }

    forgot = changes(autotuned(tmp_path, capsys, "forgot", "--forget"))
    assert not str(forgot[0]["reason"]).startswith("starting at")


def test_history_with_nothing_remembered_and_an_unknown_loader(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["history"], capsys)
    assert code == 0 and out.startswith("no runs remembered yet in ")
    from loadertop.core.measure.history import History, LoaderSignature, MachineSignature

    machine = MachineSignature(2.0, "host", 2**30, "host", (), "fork", "2.14.1", os.uname().nodename)
    history = History()
    history.settled(
        history.begin_run("x.py", "script", machine), LoaderSignature("x.py", "x.py:3", "D", 8, 2), machine, 1, 9.0
    )
    assert_usage_error(
        run_main(["history", "--loader", "nope"], capsys), "--loader nope: no run has a loader of that name"
    )
    code, out, _ = run_main(["history", "--loader", "x.py:3"], capsys)
    assert code == 0 and "x.py:3" in out


def test_a_run_whose_history_cannot_be_written_goes_on_and_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # the history's folder cannot be made (as on a read-only disk)
    monkeypatch.setenv("LOADERTOP_HOME", str(blocker / "loadertop"))
    code, out, err = run_main(["run", "--headless", "--max-batches", "20", "--autotune"], capsys)
    assert code == 0, err
    said = [line for line in err.splitlines() if "nothing was remembered" in line]
    assert len(said) == 1 and said[0].startswith(f"loadertop: nothing was remembered: {blocker}"), err
    assert "epoch 1" in out or "batches" in out  # the run itself went on as ever
