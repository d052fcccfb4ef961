"""The sweep finds a known optimum on calibrated workloads; its files carry every field; bad input exits 2."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadertop import LoaderConfig, Trainer
from loadertop.core.drive.sweep import Sweep
from loadertop.core.measure.procs import child_processes
from loadertop.core.policy.report import ROW_FIELDS
from tests import workloads
from tests.conftest import ROOT
from tests.helpers import assert_usage_error, others_cpu, run_main, sweep


@pytest.mark.slow
def test_io_bound_loading_recommends_the_fewest_workers_that_keep_up_with_the_step() -> None:
    # A batch of 8 takes 32 ms to load (sleeps, no CPU), the step 20 ms: 1 worker leaves the step waiting,
    # 2 workers make a batch every 16 ms and keep up, 4 cannot do better.
    rows, advice, out = sweep(workloads.io_bound(), (0, 1, 2, 4), batches=30)
    assert [r.num_workers for r in rows] == [0, 1, 2, 4]
    # 30 steady batches each, and 30 more each time a count was measured longer to settle the noise.
    assert all(r.batches == 30 * (1 + out.count(f"[longer] {r.config.describe()}:")) for r in rows), out
    speed = {r.num_workers: r.samples_per_s for r in rows}
    # 1.6x and 1.6x on a quiet machine; 1.66 and 1.23 measured with other work beside it.
    assert speed[1] > 1.2 * speed[0] and speed[2] > 1.15 * speed[1]
    # 2 workers keep up and 4 cannot do better: the advice is 2, unless noise made 4 measure faster and the
    # sweep says it cannot tell the two apart (then it names the fastest and says to measure longer).
    two = next(r for r in rows if r.num_workers == 2)
    if advice.recommended_num_workers == 4:
        assert two.key in advice.undecided and "cannot yet tell whether 2 workers" in out, out
    else:
        assert advice.recommended_num_workers == 2, out
        assert "recommended: 2 workers" in out


@pytest.fixture
def cores() -> Iterator[Callable[[int], None]]:
    """Pin this process (and the workers it forks) to the first N usable cores."""
    original = os.sched_getaffinity(0)

    def pin(n: int) -> None:
        os.sched_setaffinity(0, sorted(original)[:n])

    yield pin
    os.sched_setaffinity(0, original)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_cpu_bound_loading_on_one_core_recommends_no_workers(cores: Callable[[int], None]) -> None:
    # 40 ms of CPU per batch and one core: a worker can only take the core from the training thread.
    cores(1)
    _rows, advice, out = sweep(workloads.cpu_bound(cpu_s=0.010), (0, 1, 2), batches=20, batch_size=4)
    assert advice.recommended_num_workers == 0, out
    assert f"2 workers on 1 usable core (1 of {os.cpu_count()} cores: CPU affinity):" in out
    assert f"  limits: 1 of {os.cpu_count()} cores: CPU affinity | memory " in out


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores and CPU affinity"
)
def test_cpu_bound_loading_scales_to_the_core_count_then_stops(cores: Callable[[int], None]) -> None:
    cores(2)
    with others_cpu() as others:
        rows, advice, out = sweep(workloads.cpu_bound(cpu_s=0.010), (1, 2, 4), batches=30, batch_size=4)
    assert advice.recommended_num_workers in (2, 4)
    assert "4 workers on 2 usable cores" in out
    if others.cores > 0.3:
        pytest.skip(f"other processes used {others.cores:.1f} cores during the sweep: scaling needs idle cores")
    speed = {r.num_workers: r.samples_per_s for r in rows}
    cpu = {r.num_workers: r.cpu_percent for r in rows}
    assert speed[2] > 1.6 * speed[1], out  # a second core nearly doubles loading
    # Past the cores there is no new CPU: four workers do not load more per CPU-second than two.
    assert speed[4] / cpu[4] < 1.1 * speed[2] / cpu[2], out
    if cpu[2] >= 150:  # two workers had the two cores (another busy process lets four take more of them)
        # More workers then only win back the share the training process took (here up to ~8%, which can
        # tip the 5% rule toward 4; 17% once on a busy CI machine, within the two rows' own error bars):
        # four workers are not measurably more than 15% faster than two.
        sem = {r.num_workers: r.samples_per_s_sem for r in rows}
        assert speed[4] - 1.15 * speed[2] < 2 * math.hypot(sem[4], sem[2]), out


def test_a_sweep_switches_only_after_its_steady_batches_and_cancel_keeps_the_run_going() -> None:
    trainer = Trainer(workloads.make(size=400), LoaderConfig(batch_size=4), epochs=1000, device="cpu")
    s = Sweep(trainer, (0, 2), 5)
    trainer.on_record = s.on_record
    s.begin()
    try:
        deadline_step = 200
        while s.progress().state == "running" and trainer.status().step < deadline_step:
            trainer.join(0.05)
        assert s.progress().state == "done"
        records = trainer.store.snapshot().records
        w0 = [r for r in records if r.num_workers == 0]
        w2 = [r for r in records if r.num_workers == 2]
        assert len(w0) == 6 and w0[0].warmup and not any(r.warmup for r in w0[1:])  # 1 warm-up + 5 steady
        assert len(w2) >= 7 and [r.warmup for r in w2[:3]] == [True, True, False]
    finally:
        trainer.close()
    cancelled = Sweep(Trainer(workloads.make(size=40), LoaderConfig(), device="cpu"), (0, 1), 5)
    cancelled.cancel()  # before it begins: nothing to cancel
    assert cancelled.progress().state == "idle"


def test_sweep_files_have_every_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    paths = {kind: tmp_path / f"sweep.{kind}" for kind in ("json", "csv", "md")}
    code, out, err = run_main(
        [
            "sweep",
            "--workload",
            "tests.workloads:sleepy",
            "--batch-size",
            "10",
            "--workers",
            "0,2",
            "--batches",
            "12",
            "--sample-interval",
            "0.2",
            "--json",
            str(paths["json"]),
            "--csv",
            str(paths["csv"]),
            "--markdown",
            str(paths["md"]),
        ],
        capsys,
    )
    assert code == 0, err
    assert "[1/2] 0 workers, batch 10" in out and "[2/2] 2 workers, batch 10" in out
    document = json.loads(paths["json"].read_text())
    assert [row["num_workers"] for row in document["rows"]] == [0, 2]
    for row in document["rows"]:
        assert set(ROW_FIELDS) <= set(row)
        # A count measured again because the first 12 batches could not tell it apart adds 12 more each time.
        again = document["measured_longer"].count(row["num_workers"])
        assert row["batches"] == 12 * (1 + again) and row["samples_per_s"] > 0 and row["startup_ms"] > 0
        assert row["cpu_s"] > 0 and row["wall_s"] > 0 and row["cpu_s_per_sample"] > 0
    assert document["rows"][1]["cpu_percent"] is not None and document["rows"][1]["rss_mb"] > 0
    # Each row carries where its samples' time went (timed in its fetches: the sleep is the dataset's own).
    for row in document["rows"]:
        stages = row["stages"]
        assert stages["num_workers"] == row["num_workers"] and stages["samples"] >= row["batches"] * 10
        assert [s["name"] for s in stages["stages"]] == ["__getitem__ (rest)", "collate"] and stages["verdict"]
    assert "where a sample's time goes" in out
    assert document["recommended_num_workers"] == 2 and document["complete"] is True
    assert document["cpu_accounting"] == "accounted" and document["cpu_s_before_first_config"] > 0
    assert document["machine"]["usable_cores"] >= 1 and document["batches_per_count"] == 12
    table = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert [r["num_workers"] for r in table] == ["0", "2"] and table[1]["recommended"] == "1"
    markdown = paths["md"].read_text()
    assert markdown.startswith("| workers | batches | load ms |")
    assert "| **2** (fastest, recommended) |" in markdown and "Recommended: 2 workers" in markdown
    assert not child_processes()


def test_json_to_stdout_leaves_stdout_clean(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run_main(
        ["sweep", "--workload", "tests.workloads:sleepy", "--workers", "0,1", "--batches", "10", "--json", "-"], capsys
    )
    assert code == 0
    assert [row["num_workers"] for row in json.loads(out)["rows"]] == [0, 1]
    assert "recommended:" in err


BAD_SWEEPS = [
    (["--workers", "1,1"], "lists a count twice"),
    (["--workers", "a,b"], "must be worker counts separated by commas"),
    (["--workers", "0,-1"], "needs one or more counts >= 0"),
    (["--batches", "0"], "--batches must be >= 1, got 0"),
    (["--json", "/nonexistent-dir/x.json"], "cannot write --json /nonexistent-dir/x.json"),
    (["--json", "-", "--csv", "-"], "only one of --json, --csv and --markdown can write to stdout"),
    (["--prefetch-factor", "0"], "--prefetch-factor must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SWEEPS, ids=[" ".join(a) for a, _ in BAD_SWEEPS])
def test_bad_sweep_arguments_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(run_main(["sweep", "--workload", "tests.workloads:sleepy", *args], capsys), message)
