"""Autotune in users' own scripts, unmodified: ``loadertop run --autotune -- python train.py`` (and under torchrun),
and ``loadertop.DataLoader(..., num_workers="auto")`` with and without the launcher. The tuner changes the
training loader's workers, says why with figures, records each change, and the script trains on exactly the
batches a stock run does."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import psutil
import pytest

from loadertop.core.measure.system import usable_cores_exact
from tests.helpers import (
    assert_usage_error,
    eventually,
    launched,
    made_at,
    no_children_left,
    records,
    run,
    run_main,
    torchrun,
    verified_unless_slower,
)

SCRIPT = "tests/scripts/tune_loop.py"
LOADER = made_at(SCRIPT, "loader = DataLoader(")
AUTO_LOADER = made_at(SCRIPT, "loader = loadertop.DataLoader(")
FIGURES = re.compile(r"\d")


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What a stock run of tune_loop.py (torch's DataLoader, 0 workers, no loadertop) saw."""
    out = tmp_path_factory.mktemp("stock") / "plain.json"
    done = run([sys.executable, SCRIPT, str(out)])
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def tuned_events(rows: list[dict]) -> list[dict]:
    events = [r for r in rows if r.get("event") == "autotune"]
    assert events, rows[-5:]
    for event in events:  # each says why, with the figures it decided on
        assert FIGURES.search(event["reason"]) and event["change"] in ("jump", "step", "settle", "retune", "memory")
        assert isinstance(event["from"], int) and isinstance(event["to"], int)
    return events


def left_running(out: Path) -> list[psutil.Process]:
    """Processes of a finished script still alive (its workers share its command line, which names ``out``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(out) in (proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_autotune_tunes_a_scripts_training_loader_and_it_trains_on_a_stock_runs_batches(
    tmp_path: Path, stock: dict
) -> None:
    record = tmp_path / "run.jsonl"
    out = tmp_path / "watched.json"
    watched = launched("--autotune", "--record", str(record), command=[sys.executable, SCRIPT, str(out)])
    assert watched.returncode == 0, watched.stderr
    seen = json.loads(out.read_text())
    assert seen["seen"] == stock["seen"] and seen["weights"] == stock["weights"]  # every batch, in order, once
    rows = records(record)
    events = tuned_events(rows)
    assert {e["loader"] for e in events} == {LOADER}
    batches = [r for r in rows if "event" not in r]
    assert [r["step"] for r in batches] == list(range(1, len(stock["seen"]) + 1))
    counts = [r["num_workers"] for r in batches]
    assert counts[0] == 0 and len(set(counts)) > 1  # the tuner moved the workers, as the script itself saw
    assert len(set(seen["workers"])) > 1
    first = events[0]  # applied as it says: the batches after it come from its count
    assert first["from"] == 0 and first["to"] in counts[first["step"] :]
    assert (
        f"loadertop: autotune on (--autotune): the training loader's workers are tuned within {usable_cores_exact():g}"
    ) in watched.stderr
    assert f"loadertop: {LOADER}: autotune: {first['reason']}: 0 -> {first['to']} worker" in watched.stderr
    assert no_children_left() and not left_running(out)


@pytest.mark.slow
def test_num_workers_auto_is_tuned_by_the_launchers_tuner_without_autotune(tmp_path: Path, stock: dict) -> None:
    record = tmp_path / "run.jsonl"
    out = tmp_path / "auto.json"
    watched = launched("--record", str(record), command=[sys.executable, SCRIPT, str(out), "--auto"])
    assert watched.returncode == 0, watched.stderr
    seen = json.loads(out.read_text())
    assert seen["seen"] == stock["seen"] and seen["weights"] == stock["weights"]
    assert seen["workers"][0] == 0 and max(seen["workers"]) > 0  # from 0 workers, then tuned
    assert f"loadertop: autotune on ({AUTO_LOADER}: num_workers='auto')" in watched.stderr
    events = tuned_events(records(record))
    assert {e["loader"] for e in events} == {AUTO_LOADER}
    assert "loadertop: autotune: " not in watched.stderr  # the run's tuner, not a second one of the loader's own
    assert no_children_left() and not left_running(out)


@pytest.mark.slow
def test_num_workers_auto_without_the_launcher_tunes_itself_and_leaves_nothing_behind(
    tmp_path: Path, stock: dict
) -> None:
    out = tmp_path / "alone.json"
    done = run([sys.executable, SCRIPT, str(out), "--auto"])
    assert done.returncode == 0, done.stderr
    seen = json.loads(out.read_text())
    assert seen["seen"] == stock["seen"] and seen["weights"] == stock["weights"]
    assert seen["workers"][0] == 0 and max(seen["workers"]) > 0
    said = [line for line in done.stderr.splitlines() if line.startswith("loadertop:")]
    assert said[0].startswith(
        f"loadertop: autotune: {AUTO_LOADER}: num_workers='auto': from 0 workers, within {usable_cores_exact():g} cores"
    )
    changes = [line for line in said[1:] if re.search(r": \d+ -> \d+ workers?$", line)]
    assert changes and all(line.startswith(f"loadertop: autotune: {AUTO_LOADER}: ") for line in changes)
    assert all(FIGURES.search(line.split(": ", 3)[3].rsplit(": ", 1)[0]) for line in changes)  # reasons with figures
    assert done.stdout == "tune_loop: 160 batches\n"  # the script's output is its own
    assert eventually(lambda: not left_running(out), 5)


@pytest.fixture(scope="module")
def stock_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a stock torchrun of ddp_loop.py (4 epochs) wrote each rank's indices and weights."""
    out = tmp_path_factory.mktemp("stock_ranks") / "plain"
    done = run(torchrun(out, "--epochs", "4"))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_autotune_under_torchrun_shares_the_cores_among_the_ranks_and_every_shard_stays_exact(
    tmp_path: Path, stock_ranks: Path
) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched("--autotune", "--record", str(record), command=torchrun(tmp_path / "watched", "--epochs", "4"))
    assert watched.returncode == 0, watched.stderr
    cores = usable_cores_exact()
    for rank in (0, 1):
        before = json.loads(Path(f"{stock_ranks}.rank{rank}.json").read_text())
        after = json.loads((tmp_path / f"watched.rank{rank}.json").read_text())
        assert after["seen"] == before["seen"] and after["weights"] == before["weights"]
        # Each rank's tuner has its share of the node: half the cores.
        assert (
            f"loadertop: rank {rank}: autotune on (--autotune): the training loader's workers are tuned within "
            f"{cores / 2:g} core{'' if cores / 2 == 1 else 's'} (the node's {cores:g} shared by 2 ranks)"
        ) in watched.stderr
    rows = records(record)
    for rank in (0, 1):
        mine = [r for r in rows if r.get("rank") == rank and "event" not in r]
        assert [r["step"] for r in mine] == list(range(1, 49))
    events = [r for r in rows if r.get("event") == "autotune"]
    for event in events:  # changes, where the ranks had time for one, name their rank and say why
        assert event["rank"] in (0, 1) and FIGURES.search(event["reason"])
    assert no_children_left()


def test_budgets_without_autotune_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    done = run_main(["run", "--headless", "--cpu-budget", "1", "--", sys.executable, SCRIPT, "out.json"], capsys)
    assert_usage_error(done, "--cpu-budget and --memory-budget are the autotuner's budgets: add --autotune")


@pytest.mark.slow
def test_a_scripts_second_autotuned_run_starts_where_the_first_settled_and_both_are_remembered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: dict[str, list[dict]] = {}

    def tuned(name: str, *extra: str) -> list[dict]:
        record = tmp_path / f"{name}.jsonl"
        out = tmp_path / f"{name}.json"
        done = launched(
            "--autotune", *extra, "--record", str(record), command=[sys.executable, SCRIPT, str(out), "--epochs", "6"]
        )
        assert done.returncode == 0, done.stderr
        lines[name] = records(record)
        return tuned_events(lines[name])

    first = tuned("first")
    settles = [e for e in first if e["change"] == "settle"]
    assert settles, first
    count = settles[0]["to"]
    second = tuned("second")
    assert (second[0]["change"], second[0]["from"], second[0]["to"]) == ("jump", 0, count)
    assert second[0]["reason"].startswith(f"starting at {count} workers: settled there on ")
    verified_unless_slower(lines["second"], second[0], second[1], count)
    # Fewer batches where they are exact: the first run measured 0 workers before it jumped, the second jumped at once.
    first_jump = next(e for e in first if e["change"] == "jump")
    assert first_jump["from"] == 0 and second[0]["step"] < first_jump["step"]

    code, out, err = run_main(["history", "--json"], capsys)
    assert code == 0, err
    remembered = json.loads(out)
    assert [r["loader"] for r in remembered] == [LOADER, LOADER]
    latest = [[e["to"] for e in events if e["change"] == "settle"][-1] for events in (second, first)]  # newest first
    assert [r["settled_workers"] for r in remembered] == latest  # each run's latest settle (it may tune again)
    assert remembered[0]["program"] == str(Path(SCRIPT).resolve()) and remembered[0]["kind"] == "script"
    # The rows at the end: every count the run trained at, with its batches.
    for run_seen in remembered:
        assert sum(row["batches"] for row in run_seen["rows"]) == 6 * 640 // 8
        assert {row["num_workers"] for row in run_seen["rows"]} >= {0, count}

    forgot = tuned("forgot", "--forget")
    assert not forgot[0]["reason"].startswith("starting at")
