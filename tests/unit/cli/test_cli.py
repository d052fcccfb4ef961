"""The command line: bad input gets one line and exit 2; runs end with nothing left behind."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers import assert_usage_error, run_main, wait_for

BAD_INPUT = [
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--workers", "abc"], "--workers must be an integer >= 0, got 'abc'"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--epochs", "x"], "--epochs must be an integer >= 1"),
    (["--prefetch-factor", "2"], "--prefetch-factor needs --workers 1 or more"),
    (["--persistent-workers"], "--persistent-workers needs --workers 1 or more"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'"),
    (
        ["--switch", "ten:2"],
        (
            "must be [rankR:][LOADER@]STEP:WORKERS (e.g. 100:2, or rank1:100:2 for rank 1 of a "
            "torchrun job), got 'ten:2'"
        ),
    ),
    (["--switch", "rank1:ten:2"], "must be [rankR:][LOADER@]STEP:WORKERS"),
    (["--switch", "rank-1:10:2"], "got 'rank-1:10:2'"),
    (["--switch", "rank:10:2"], "got 'rank:10:2'"),
    (["--switch", "rank1:10:2"], "--switch rankR:STEP:WORKERS names a rank of a torchrun job; the built-in workload"),
    (["--switch", "train.py:4@10:2"], "--switch LOADER@STEP:WORKERS names a script's DataLoader"),
    (["--switch", "10:-2"], "needs STEP >= 1 and WORKERS >= 0"),
    (["--workload", "nocolon"], "--workload must look like MODULE:CALLABLE"),
    (
        ["--workload", "no_such_module_xyz:make"],
        "cannot import workload module 'no_such_module_xyz': ModuleNotFoundError",
    ),
    (["--workload", "tests.workloads:missing"], "module 'tests.workloads' has no attribute 'missing'"),
    (["--workload", "tests.workloads:NOT_CALLABLE"], "is a int, not a callable that returns a Workload"),
    (
        ["--workload", "tests.workloads:raises"],
        "workload factory tests.workloads:raises raised RuntimeError: cannot build the model",
    ),
    (["--workload", "tests.workloads:wrong_type"], "returned dict, expected loadertop.Workload"),
    (["--workload", "tests.workloads:sleepy", "--io-latency-ms", "3"], "--io-latency-ms applies to the built-in"),
    (["--workload", "tests.workloads:sleepy", "--data", "/tmp"], "takes no data_dir parameter to receive it"),
    (["--workload", "tests.workloads:sleepy", "--dataset", "mnist"], "choose --workload or --dataset, not both"),
    (["--dataset", "imagenet"], "unknown --dataset 'imagenet': choose one of cifar10, cifar100, mnist"),
    (
        ["--dataset", "cifar10", "--data", "/nonexistent-dir"],
        "CIFAR10 not found under /nonexistent-dir (looked for /nonexistent-dir/cifar-10-batches-py)",
    ),
    (["--start-method", "spawn"], "--start-method needs --workers 1 or more"),
    (["--start-method", "thread"], "invalid choice: 'thread'"),
    (["--timeout", "5"], "--timeout needs --workers 1 or more"),
    (["--timeout", "-1", "--workers", "1"], "--timeout: must be a number >= 0, got '-1'"),
    (
        ["--workload", "tests.workloads:unpicklable", "--workers", "1", "--start-method", "spawn"],
        "the dataset cannot be sent to 'spawn' workers, which need a pickled copy",
    ),
    (["--record", "/nonexistent-dir/x.jsonl"], "cannot write --record /nonexistent-dir/x.jsonl"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_gets_one_clear_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert_usage_error(run_main(["run", "--headless", "--max-batches", "1", *args], capsys), message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["run", "--headless", "--device", "cuda"], capsys)
    assert code == 2
    assert err.strip() == "loadertop: error: --device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto"


def test_a_finished_run_records_every_batch_and_leaves_no_process(tagged_run, tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    run = tagged_run(
        [
            "run",
            "--headless",
            "--workload",
            "tests.workloads:sleepy",
            "--workers",
            "2",
            "--batch-size",
            "10",
            "--epochs",
            "2",
            "--switch",
            "5:1",
            "--switch",
            "25:0",
            "--record",
            str(record),
        ]
    )
    out, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 0, err
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    rows = [r for r in lines if "event" not in r]
    assert [r["step"] for r in rows] == list(range(1, 41))
    memory = [r for r in lines if r.get("event") == "memory"]  # one a system sample: the tree's PSS, workers' USS
    assert memory and all(m["pss_mb"] > 0 and m["memory_source"] in ("smaps_rollup", "rss") for m in memory)
    # Overlapped switches: the old workers deliver what they were given, then the new ones go on, in order.
    ran = [r["num_workers"] for r in rows]
    assert [n for i, n in enumerate(ran) if i == 0 or ran[i - 1] != n] == [2, 1, 0]
    assert ran.index(1) >= 5 and ran.index(0) >= 25
    for key in ("schema", "step", "epoch", "num_workers", "load_ms", "step_ms", "loss", "accuracy", "time"):
        assert key in rows[0]
    assert "compute_ms" not in rows[0]  # the record schema's name is the monitor's: step_ms
    assert f"step {ran.index(1)}: hot restart to 1 worker" in out
    assert "epoch 2/2" in out
    table = out[out.index("workers  batches") :].splitlines()
    assert [line.split()[0].strip("*+") or line.split()[1] for line in table[1:4]] == ["2", "1", "0"]
    assert run.leftovers() == []


def test_a_failing_dataset_exits_1_with_the_sample_index(tagged_run) -> None:
    run = tagged_run(
        ["run", "--headless", "--workload", "tests.workloads:broken", "--workers", "2", "--batch-size", "4"]
    )
    _, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 1
    assert "(sample index 37): ValueError: broken sample 37" in err
    assert run.leftovers() == []


def steady_batches(record: Path) -> int:
    """Batch lines of a --record file past their warm-up (the summary's rows count only those)."""
    if not record.exists():
        return 0
    lines = [json.loads(line) for line in record.read_text().splitlines() if line.endswith("}")]
    return sum(1 for line in lines if "step" in line and not line.get("warmup"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupted_run_stops_its_workers(tagged_run, tmp_path: Path, signum: int) -> None:
    record = tmp_path / "run.jsonl"
    run = tagged_run(
        [
            "run",
            "--headless",
            "--workload",
            "tests.workloads:sleepy",
            "--workers",
            "2",
            "--epochs",
            "100",
            "--record",
            str(record),
        ]
    )
    wait_for(lambda: steady_batches(record) >= 5)  # not the memory events written while it starts
    wait_for(lambda: len(run.leftovers()) >= 3)  # the run and its two workers (between epochs they re-spawn)
    run.proc.send_signal(signum)
    out, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 128 + signum, err
    assert "interrupted" in err
    # The summary table still prints, its row for the 2 workers with a verdict (which one is the machine's timing).
    assert "workers  batches" in out and ("input-bound" in out or "compute-bound" in out), out
    wait_for(lambda: run.leftovers() == [], timeout=5)


def test_shared_options_work_before_and_after_the_subcommand() -> None:
    from loadertop.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--workers", "2", "run", "--headless"]).workers == 2
    assert parser.parse_args(["run", "--workers", "3"]).workers == 3
    assert parser.parse_args(["run"]).workers == 0
    assert parser.parse_args(["--sample-interval", "0.5", "run"]).sample_interval == 0.5


def test_the_monitor_without_a_terminal_says_how_to_run_headless(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, out, err = run_main(["--workers", "1"], capsys)
    assert code == 2 and out == ""
    assert err.strip() == (
        "loadertop: error: the monitor needs a terminal (stdin and stderr); without one use: loadertop run --headless"
    )


def test_switch_belongs_to_headless_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["run", "--switch", "10:2"], capsys)
    assert code == 2
    assert "--switch needs --headless (in the monitor, press a digit and r)" in err


def test_switch_names_one_rank_of_a_torchrun_job_before_the_loader() -> None:
    from loadertop.cli import _switch

    assert _switch("200:2") == (None, None, 200, 2) and _switch("200:2").key == "200"
    assert _switch("rank1:200:2") == (1, None, 200, 2) and _switch("rank1:200:2").key == "rank1:200"
    named = _switch("rank12:train.py:48@200:0")
    assert named == (12, "train.py:48", 200, 0) and named.key == "rank12:train.py:48@200"
    # Only "rank<number>:" names a rank: a loader's name may begin with "rank".
    assert _switch("rankings.py:3@5:1") == (None, "rankings.py:3", 5, 1)


def test_a_bad_rank_switch_for_a_script_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(["run", "--headless", "--switch", "rank1:x:2", "--", "python", "train.py"], capsys)
    assert_usage_error(result, "argument --switch: must be [rankR:][LOADER@]STEP:WORKERS")
    result = run_main(
        ["run", "--headless", "--switch", "rank1:5:2", "--switch", "rank1:5:1", "--", "python", "train.py"], capsys
    )
    assert_usage_error(result, "--switch: each STEP may be given once (per loader and rank)")


def test_run_help_says_how_to_switch_one_rank(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["run", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "--switch [rankR:][LOADER@]STEP:WORKERS" in text
    assert "under torchrun every rank's, or with rankR: rank R's only (e.g. rank1:100:2)" in text
