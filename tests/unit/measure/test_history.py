"""The run history: what a run writes is read back by signature; another loader or machine is not reused; two
runs writing at once lose nothing; a corrupt or newer store is moved aside with one line; an unwritable one says
so once and the run goes on."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
from pathlib import Path

from loadertop.core.measure.history import SCHEMA_VERSION, History, LoaderSignature, MachineSignature

MACHINE = MachineSignature(2.0, "host", 24 * 2**30, "host", (), "fork", "2.14.1", "vm")
LOADER = LoaderSignature("train.py", "train.py:40", "mymod.Images", 1000, 32)
ROWS = [
    {"num_workers": 0, "samples_per_s": 120.5, "batches": 30},
    {"num_workers": 4, "samples_per_s": 410.0, "batches": 30},
]


def test_a_settle_and_the_rows_are_read_back_for_the_same_loader_on_the_same_machine(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3")
    run = history.begin_run("train.py", "script", MACHINE)
    assert run == 1
    history.settled(run, LOADER, MACHINE, 4, 405.0)
    history.finished(run, [(LOADER, ROWS, [{"num_workers": 4, "samples": 10}])], MACHINE)
    found = history.remembered(LOADER, MACHINE)
    assert found is not None and (found.workers, found.samples_per_s, found.run_id) == (4, 405.0, 1)
    [past] = history.loader_runs()
    assert (past.name, past.settled_workers, past.rows, past.best) == ("train.py:40", 4, ROWS, (4, 410.0))
    assert (
        past.machine["cores"] == 2.0 and past.ended is not None and past.stages == [{"num_workers": 4, "samples": 10}]
    )
    assert history.problem is None


def test_another_dataset_length_batch_size_or_machine_is_not_reused(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3")
    history.settled(history.begin_run("train.py", "script", MACHINE), LOADER, MACHINE, 4, 405.0)
    assert history.remembered(dataclasses.replace(LOADER, length=999), MACHINE) is None
    assert history.remembered(dataclasses.replace(LOADER, batch_size=64), MACHINE) is None
    assert history.remembered(LOADER, dataclasses.replace(MACHINE, cores=1.5, cores_source="cgroup v2 quota")) is None
    assert history.remembered(LOADER, dataclasses.replace(MACHINE, gpus=("NVIDIA H100",))) is None
    # The latest settle wins.
    later = history.begin_run("train.py", "script", MACHINE)
    history.settled(later, LOADER, MACHINE, 6, 430.0)
    found = history.remembered(LOADER, MACHINE)
    assert found is not None and (found.workers, found.run_id) == (6, later)


def _write_many(path: str, writer: int, count: int) -> None:
    history = History(Path(path))
    for i in range(count):
        run = history.begin_run(f"run-{writer}", "script", MACHINE)
        history.settled(run, dataclasses.replace(LOADER, name=f"loader-{writer}-{i}"), MACHINE, i % 5, 100.0 + i)
    assert history.problem is None, history.problem


def test_two_runs_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), w, 40)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
    assert [p.exitcode for p in writers] == [0, 0, 0]
    runs = History(path).loader_runs(limit=1000)
    assert sorted(r.name for r in runs) == sorted(f"loader-{w}-{i}" for w in range(3) for i in range(40))


def test_a_corrupt_store_is_moved_aside_with_one_line_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not a database, it is a truncated file" * 20)
    lines: list[str] = []
    history = History(path, on_problem=lines.append)
    run = history.begin_run("train.py", "script", MACHINE)
    assert run == 1 and len(lines) == 1
    assert lines[0].startswith(f"the run history {path} was not a loadertop store or corrupt")
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(".aside")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    history.settled(run, LOADER, MACHINE, 2, 100.0)
    assert history.remembered(LOADER, MACHINE) is not None


def test_a_store_of_a_newer_loadertop_is_moved_aside_not_read(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    old = History(path)
    old.settled(old.begin_run("train.py", "script", MACHINE), LOADER, MACHINE, 4, 405.0)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    lines: list[str] = []
    history = History(path, on_problem=lines.append)
    assert history.remembered(LOADER, MACHINE) is None  # nothing read from a schema it does not know
    assert len(lines) == 1 and f"written by a newer loadertop (schema {SCHEMA_VERSION + 1}" in lines[0]
    assert history.begin_run("train.py", "script", MACHINE) == 1  # a new store


def test_a_store_that_cannot_be_written_says_so_once_and_nothing_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    lines: list[str] = []
    history = History(blocker / "loadertop" / "h.sqlite3", on_problem=lines.append)
    run = history.begin_run("train.py", "script", MACHINE)
    history.settled(run, LOADER, MACHINE, 4, 405.0)
    history.finished(run, [(LOADER, ROWS, [])], MACHINE)
    assert run is None and history.remembered(LOADER, MACHINE) is None and history.loader_runs() == []
    assert len(lines) == 1 and lines[0].startswith("nothing was remembered: ")
    assert history.problem == lines[0]


def test_a_missing_store_is_not_made_by_reading_it(tmp_path: Path) -> None:
    history = History(tmp_path / "none" / "h.sqlite3")
    assert history.loader_runs() == [] and history.remembered(LOADER, MACHINE) is None
    assert not (tmp_path / "none").exists()
