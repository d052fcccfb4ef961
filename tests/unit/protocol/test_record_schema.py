"""``--record`` writes one schema for every run (``record.schema.json``): real records follow it, old ones read."""

from __future__ import annotations

import fnmatch
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadertop.core.policy.advice import recent_stats
from loadertop.core.policy.autotune import Change
from loadertop.core.protocol.records import (
    RECORD_SCHEMA,
    SCHEMA_PATH,
    RecordError,
    read_record,
    read_records,
    record_line,
)
from loadertop.core.sessions.replay import ReplaySession
from loadertop.core.sessions.straggler_watch import StragglerChange
from loadertop.core.sessions.view import Straggler
from tests.conftest import ROOT
from tests.helpers import assert_records_follow_the_schema, record_schema_errors

DATA = ROOT / "tests" / "data"
BATCH_FIELDS = ("schema", "step", "epoch", "batch", "num_workers", "samples", "load_ms", "step_ms", "time")


def batches(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "event" not in line]


def as_version_1(line: dict[str, Any]) -> dict[str, Any]:
    """A line as loadertop wrote it before schema 2: no ``schema``, a built-in batch's ``step_ms`` as ``compute_ms``."""
    builtin_batch = "event" not in line and "config" in line
    return {
        ("compute_ms" if builtin_batch and key == "step_ms" else key): value
        for key, value in line.items()
        if key != "schema"
    }


@pytest.fixture(scope="module")
def builtin_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real headless run of a --workload factory (the built-in trainer), 20 batches, memory sampled often."""
    record = tmp_path_factory.mktemp("builtin") / "run.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--workload",
            "tests.workloads:sleepy",
            "--workers",
            "1",
            "--batch-size",
            "10",
            "--max-batches",
            "20",
            "--sample-interval",
            "0.1",
            "--record",
            str(record),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return record


@pytest.fixture(scope="module")
def script_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real script under the launcher, switched mid-epoch, with ``loadertop.log`` lines."""
    folder = tmp_path_factory.mktemp("script")
    record = folder / "run.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--switch",
            "5:2",
            "--record",
            str(record),
            "--",
            sys.executable,
            "tests/scripts/plain_loop.py",
            str(folder / "out.json"),
            "--log",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return record


def test_the_schema_is_a_valid_json_schema_shipped_with_the_package() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["properties"]["schema"] == {"const": RECORD_SCHEMA, "description": "The version of this schema."}
    assert record_schema_errors({"schema": RECORD_SCHEMA, "event": "log", "loader": "x", "step": 1}) == []
    package_data = re.search(
        r"\[tool\.setuptools\.package-data\]\nloadertop = (\[.*\])\n", (ROOT / "pyproject.toml").read_text()
    )  # tomllib is Python 3.11's
    assert package_data is not None
    shipped = json.loads(package_data.group(1))
    inside = SCHEMA_PATH.relative_to(ROOT / "loadertop").as_posix()
    assert any(fnmatch.fnmatch(inside, pattern) for pattern in shipped), f"{inside} is not in package-data"


def test_loadertop_never_imports_jsonschema() -> None:
    sources = [p for p in (ROOT / "loadertop").rglob("*.py") if "jsonschema" in p.read_text(encoding="utf-8")]
    assert sources == []


def test_a_built_in_run_records_schema_2_with_the_monitors_names(builtin_record: Path) -> None:
    lines = assert_records_follow_the_schema(builtin_record)
    assert all(line["schema"] == RECORD_SCHEMA for line in lines)
    rows = batches(lines)
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert all(set(BATCH_FIELDS) <= set(r) and "compute_ms" not in r for r in rows)
    assert all(r["step_ms"] > 0 and r["load_ms"] >= 0 and r["config"] == "w1 b10" for r in rows)
    memory = [line for line in lines if line.get("event") == "memory"]
    assert memory and all(m["num_workers"] == 1 for m in memory)  # the events follow it too
    # Where the samples' time went, at the run's end: its worker's fetches, 200 samples and more (prefetched).
    [stages] = [line for line in lines if line.get("event") == "stages"]
    assert stages["num_workers"] == 1 and stages["samples"] >= 200 and stages["off"] is None
    assert [s["name"] for s in stages["stages"]] == ["__getitem__ (rest)", "collate"]
    assert stages["verdict"]
    # And the table's row of each configuration: its CPU and memory, as loadertop report draws them.
    [summary] = [line for line in lines if line.get("event") == "summary"]
    assert (summary["num_workers"], summary["config"], summary["batches"]) == (1, "w1 b10", 19)
    assert summary["cpu_percent"] > 0 and summary["samples_per_s"] > 0
    [model] = [line for line in lines if line.get("event") == "model"]  # the curve through the measured count
    assert model["predicted"]["1"] is not None and set(model["predicted"]) >= {"0", "1", "2"}


def test_a_script_under_the_launcher_records_the_same_schema(script_record: Path) -> None:
    lines = assert_records_follow_the_schema(script_record)
    assert all(line["schema"] == RECORD_SCHEMA for line in lines)
    rows = batches(lines)
    assert rows and all(set(BATCH_FIELDS) <= set(r) and "compute_ms" not in r for r in rows)
    train = [r for r in rows if r["loader"] == rows[0]["loader"]]
    assert [r["step"] for r in train] == list(range(1, 25))
    # The loop's own work is known from an epoch's second batch on: the first's step_ms is null.
    assert [r["batch"] for r in train if r["step_ms"] is None] == [1, 1]
    assert {r["num_workers"] for r in train} == {0, 2}
    logged = [line for line in lines if line.get("event") == "log"]
    assert [line["step"] for line in logged] == list(range(1, 25))
    staged = [line for line in lines if line.get("event") == "stages" and line["loader"] == train[0]["loader"]]
    assert sorted(line["num_workers"] for line in staged) == [0, 2]  # per worker count, as the batches ran
    assert all(line["samples"] > 0 and line["stages"][-1]["name"] == "collate" for line in staged)


def test_autotune_and_straggler_events_as_the_runs_write_them_follow_the_schema(tmp_path: Path) -> None:
    change = Change("jump", 0, 3, "load 31 ms > step 18 ms", ((0, 100.0), (3, 290.5), (8, None)), math.inf)
    builtin = json.loads(record_line({**change.to_event(), "step": 40}))  # core.session's line
    script = json.loads(record_line({**change.to_event(), "rank": 1, "loader": "train.py:12", "step": 40}))
    assert record_schema_errors(builtin) == record_schema_errors(script) == []
    assert builtin["predicted"] == {"0": 100.0, "3": 290.5, "8": None} and builtin["ceiling"] is None
    named = StragglerChange(Straggler(1, 0.7, "rank 1 is slow"), None, 61, 1700000000.5)
    assert record_schema_errors(json.loads(record_line(named.event()))) == []
    assert record_schema_errors(json.loads(record_line(StragglerChange(None, named.straggler, 90, 2.0).event()))) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda line: line.pop("step_ms"), "'step_ms' is a required property"),
        (lambda line: line.pop("schema"), "'schema' is a required property"),
        (lambda line: line.update(schema=1), "2 was expected"),
        (lambda line: line.update(compute_ms=line["step_ms"]), "'compute_ms' was unexpected"),
        (lambda line: line.update(load_ms="fast"), "'fast' is not of type 'number'"),
        (lambda line: line.update(event="cpu"), "'cpu' is not one of"),
    ],
    ids=["no step_ms", "no schema", "schema 1", "compute_ms", "load_ms a string", "unknown event"],
)
def test_a_line_off_the_schema_fails_validation(builtin_record: Path, change: Any, message: str) -> None:
    line = batches(assert_records_follow_the_schema(builtin_record))[0]
    change(line)
    errors = record_schema_errors(line)
    assert errors and any(message in error for error in errors), errors


def test_a_memory_event_missing_a_field_fails_validation(builtin_record: Path) -> None:
    memory = next(line for line in assert_records_follow_the_schema(builtin_record) if line.get("event") == "memory")
    del memory["pss_mb"]
    assert record_schema_errors(memory) == ["(line): 'pss_mb' is a required property"]


def test_a_version_1_recording_reads_as_schema_2_with_the_same_figures(
    builtin_record: Path, script_record: Path, tmp_path: Path
) -> None:
    for record in (builtin_record, script_record):
        now = read_records(record)
        old = tmp_path / f"old-{record.parent.name}.jsonl"
        old.write_text("".join(json.dumps(as_version_1(line)) + "\n" for line in now))
        assert ("compute_ms" in old.read_text()) == (record is builtin_record)  # scripts always wrote step_ms
        assert read_records(old) == now
        assert all(record_schema_errors(line) == [] for line in read_records(old))


def test_a_recorded_session_from_before_still_replays_and_its_batches_record_as_schema_2(tmp_path: Path) -> None:
    raw = json.loads((DATA / "session.json").read_text())["view"]["store"]
    view = ReplaySession.from_file(DATA / "session.json").view()
    records = view.store.records
    assert [r.compute_s for r in records] == [r["compute_s"] for r in raw["records"]]
    assert [s.compute_ms_mean for s in view.store.summaries] == [s["compute_ms_mean"] for s in raw["summaries"]]
    key = records[-1].config_key  # the monitor's figures for the running configuration, from those batches
    steady = [r["compute_s"] * 1000 for r in raw["records"] if r["config_key"] == key and not r["warmup"]][-50:]
    assert recent_stats(records, key).compute_ms_mean == pytest.approx(sum(steady) / len(steady))
    # What the built-in run wrote for these batches before (compute_ms), read back, is what it writes now.
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(as_version_1(r.to_json())) + "\n" for r in records))
    assert "compute_ms" in old.read_text()
    lines = read_records(old)
    assert lines == [json.loads(record_line(r.to_json())) for r in records]
    assert [line["step_ms"] for line in lines] == [round(r.compute_s * 1000, 4) for r in records]
    assert all(record_schema_errors(line) == [] for line in lines)


def test_a_line_of_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"^a --record line of schema 3: this loadertop reads schemas 1 to 2$"):
        read_record({"schema": 3, "step": 1})
    record = tmp_path / "new.jsonl"
    record.write_text(record_line({"step": 1}) + json.dumps({"schema": 3, "step": 2}) + "\n")
    with pytest.raises(RecordError, match=r"new.jsonl:2: a --record line of schema 3: this loadertop reads "):
        read_records(record)


def test_a_last_line_cut_short_is_left_out_and_a_broken_line_elsewhere_is_named(tmp_path: Path) -> None:
    record = tmp_path / "killed.jsonl"
    record.write_text(record_line({"event": "log", "loader": "x", "step": 1}) + '{"schema": 2, "ste')
    assert read_records(record) == [{"schema": 2, "event": "log", "loader": "x", "step": 1}]
    record.write_text('{"schema": 2, "ste\n' + record_line({"event": "log", "loader": "x", "step": 1}))
    with pytest.raises(RecordError, match=r"killed.jsonl:1: not JSON"):
        read_records(record)
