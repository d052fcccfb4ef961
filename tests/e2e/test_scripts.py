"""Users' own scripts, unmodified, under ``loadertop run --headless -- COMMAND``: same batches, same randomness."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_usage_error, batch_records, launched, no_children_left, records, run, run_main

SCRIPT = "tests/scripts/plain_loop.py"


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "distributed", "buckets"])
def test_switches_mid_epoch_leave_the_scripts_batches_and_randomness_as_they_were(sampler: str, tmp_path: Path) -> None:
    # The same script, once with plain python and once under the launcher switching 0 -> 2 -> 1
    # workers in the middle of the first epoch: AdamW, a step LR schedule, bfloat16 autocast,
    # clipping, accumulation, a validation loader, dropout, shuffling from the global RNG.
    plain = run([sys.executable, SCRIPT, str(tmp_path / "plain.json"), "--sampler", sampler])
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "3:2",
        "--switch",
        "9:1",
        "--record",
        str(record),
        command=[sys.executable, SCRIPT, str(tmp_path / "watched.json"), "--sampler", sampler],
    )
    assert watched.returncode == 0, watched.stderr
    seen_plain = json.loads((tmp_path / "plain.json").read_text())
    seen_watched = json.loads((tmp_path / "watched.json").read_text())
    assert seen_watched["train"] == seen_plain["train"] and seen_watched["val"] == seen_plain["val"]
    assert seen_watched["later_draws"] == seen_plain["later_draws"]  # the script's own randomness after
    assert seen_watched["weights"] == seen_plain["weights"]  # and so the very same training
    # The script's output passes through unchanged; loadertop's lines go to stderr, prefixed.
    assert watched.stdout == plain.stdout and "loadertop:" not in watched.stdout
    assert "loadertop: DataLoader plain_loop.py:" in watched.stderr
    assert "switching 0 -> 2 workers after batch 3" in watched.stderr
    assert "2 -> 1 worker after batch 9" in watched.stderr
    train = [r for r in batch_records(record) if r["loader"] == batch_records(record)[0]["loader"]]
    # Overlapped switches: the old workers deliver what they were given, then the new ones go on, in order.
    ran = [r["num_workers"] for r in train]
    assert [n for i, n in enumerate(ran) if i == 0 or ran[i - 1] != n] == [0, 2, 1]
    assert ran.index(2) >= 3 and ran.index(1) >= 9 and ran[:3] == [0, 0, 0]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert len(train) == len(seen_plain["train"]) and all(r["load_ms"] >= 0 for r in train)
    assert no_children_left()


@pytest.mark.slow
def test_a_persistent_loader_switched_to_no_workers_and_back_trains_as_the_plain_run(tmp_path: Path) -> None:
    # persistent_workers=True with 1 worker draws its workers' base seed once; the 0-worker iterator made each
    # epoch after --switch 12:0 (the first epoch's last batch) must not draw it again, nor the worker restarted.
    script = "tests/scripts/persistent_loop.py"
    plain = run([sys.executable, script, str(tmp_path / "plain.json")])
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "12:0",
        "--switch",
        "30:1",
        "--record",
        str(record),
        command=[sys.executable, script, str(tmp_path / "watched.json")],
    )
    assert watched.returncode == 0, watched.stderr
    assert json.loads((tmp_path / "watched.json").read_text()) == json.loads((tmp_path / "plain.json").read_text())
    assert watched.stdout == plain.stdout  # every epoch's validation loss, the second's included
    train = [r["num_workers"] for r in batch_records(record) if r["loader"] == batch_records(record)[0]["loader"]]
    assert train[:12] == [1] * 12 and train[12:24] == [0] * 12  # the switch at the epoch's end applies at the next
    assert [n for i, n in enumerate(train) if i == 0 or train[i - 1] != n] == [1, 0, 1] and len(train) == 36
    assert no_children_left()


@pytest.mark.slow
def test_switch_names_any_loader_and_a_name_that_never_appears_is_reported(tmp_path: Path) -> None:
    plain = run([sys.executable, SCRIPT, str(tmp_path / "plain.json")])
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "plain_loop.py:74@1:2",
        "--switch",
        "nope.py:1@1:1",
        "--record",
        str(record),
        command=[sys.executable, SCRIPT, str(tmp_path / "watched.json")],
    )
    assert watched.returncode == 0, watched.stderr
    assert json.loads((tmp_path / "watched.json").read_text()) == json.loads((tmp_path / "plain.json").read_text())
    val = [r["num_workers"] for r in batch_records(record) if r["loader"] == "plain_loop.py:74"]
    train = {r["num_workers"] for r in batch_records(record) if r["loader"] == "plain_loop.py:73"}
    assert val == [0, 2, 2, 2] and train == {0}  # the validation loader's, from its 2nd batch; training untouched
    assert (
        "loadertop: --switch nope.py:1@1:1: the script created no DataLoader named 'nope.py:1' "
        "(its loaders: plain_loop.py:73, plain_loop.py:74)"
    ) in watched.stderr
    assert plain.stdout == watched.stdout


@pytest.mark.slow
def test_workers_sets_every_loader_and_the_exit_code_is_the_scripts(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--workers", "2", "--record", str(record), command=[sys.executable, SCRIPT, str(tmp_path / "out.json")]
    )
    assert watched.returncode == 0, watched.stderr
    by_loader: dict[str, set[int]] = {}
    for r in batch_records(record):
        by_loader.setdefault(r["loader"], set()).add(r["num_workers"])
    assert list(by_loader.values()) == [{2}, {2}]  # training and validation loaders alike
    failed = launched(command=[sys.executable, "-c", "import torch; raise ValueError('boom')"])
    assert failed.returncode == 1 and "ValueError: boom" in failed.stderr
    assert launched(command=[sys.executable, "-c", "import sys; sys.exit(3)"]).returncode == 3


@pytest.mark.slow
def test_loadertop_log_records_the_loss_of_each_training_batch_without_changing_the_run(tmp_path: Path) -> None:
    plain = run([sys.executable, SCRIPT, str(tmp_path / "plain.json"), "--log"])  # a no-op without the launcher
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "5:2",
        "--record",
        str(record),
        command=[sys.executable, SCRIPT, str(tmp_path / "watched.json"), "--log"],
    )
    assert watched.returncode == 0, watched.stderr
    assert json.loads((tmp_path / "watched.json").read_text()) == json.loads((tmp_path / "plain.json").read_text())
    lines = records(record)
    logged = [r for r in lines if r.get("event") == "log"]
    batches = [r for r in lines if "event" not in r and r["loader"] == lines[0]["loader"]]
    assert [r["step"] for r in logged] == [r["step"] for r in batches] == list(range(1, 25))
    assert all(0 < r["loss"] < 5 for r in logged) and {r["lr"] for r in logged} >= {0.01, 0.005}
    assert re.search(r"loadertop: plain_loop.py:\d+ epoch 1: 12 batches, .*, loss \d\.\d{4}\n", watched.stderr)


HELPER = """\
import torch
from torch.utils.data import DataLoader

def make(size):
    return DataLoader(list(range(size)), batch_size=2)

train, val = make(8), make(4)
seen = [batch.tolist() for batch in train] + [batch.tolist() for batch in val]
print(seen)
"""


def test_loaders_made_at_one_line_get_names_of_their_own(tmp_path: Path) -> None:
    # A helper that makes every loader: one creation site, two loaders, two names (and two counts).
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    record = tmp_path / "run.jsonl"
    watched = launched("--switch", "helper.py:5#2@1:1", "--record", str(record), command=[sys.executable, str(script)])
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == "[[0, 1], [2, 3], [4, 5], [6, 7], [0, 1], [2, 3]]\n"
    rows = batch_records(record)
    assert [(r["loader"], r["step"], r["num_workers"]) for r in rows] == [
        ("helper.py:5", 1, 0),
        ("helper.py:5", 2, 0),
        ("helper.py:5", 3, 0),
        ("helper.py:5", 4, 0),
        ("helper.py:5#2", 1, 0),
        ("helper.py:5#2", 2, 1),
    ]


def test_a_process_that_never_imports_torch_is_left_alone() -> None:
    done = launched(command=[sys.executable, "-c", "import sys; print('torch' in sys.modules)"])
    assert done.returncode == 0 and done.stdout == "False\n" and done.stderr == ""


BAD_LAUNCHES = [
    (["run", "--headless", "--"], "give the command to run"),
    (["run", "--headless", "--", "no-such-command-xyz"], "cannot run 'no-such-command-xyz': not found on PATH"),
    (["run", "--headless", "--", "./missing/script.sh"], "cannot run './missing/script.sh': no such file"),
    (
        ["run", "--", sys.executable, SCRIPT],
        ("the monitor needs a terminal (stdin and stderr); without one use: loadertop run --headless -- COMMAND"),
    ),
    (
        ["run", "--headless", "--batch-size", "4", "--", sys.executable, SCRIPT],
        "--batch-size applies to the built-in workload",
    ),
    (["run", "--headless", "--record", "-", "--", sys.executable, SCRIPT], "--record needs a file with a script"),
    (
        ["run", "--headless", "--switch", "3:1", "--switch", "3:2", "--", sys.executable, SCRIPT],
        "each STEP may be given once",
    ),
    (["run", "--headless", "--switch", "@3:1", "--", sys.executable, SCRIPT], "must be [rankR:][LOADER@]STEP:WORKERS"),
    (["sweep", "--", sys.executable, SCRIPT], "a command after '--' goes with loadertop run"),
]


@pytest.mark.parametrize(("args", "message"), BAD_LAUNCHES, ids=[" ".join(a[:4]) for a, _ in BAD_LAUNCHES])
def test_bad_launches_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_main(args, capsys), message)


FAKE_FRAMEWORK = """\
import torch
import pytorch_lightning  # a version whose Trainer loadertop cannot hook into
from torch.utils.data import DataLoader

print([batch.tolist() for batch in DataLoader(list(range(4)), batch_size=2)])
"""


def test_a_framework_loadertop_cannot_hook_into_is_said_in_one_line_and_the_loaders_still_watched(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pytorch_lightning"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '0.0.1'\n")  # no Trainer
    script = tmp_path / "fit.py"
    script.write_text(FAKE_FRAMEWORK)
    record = tmp_path / "run.jsonl"
    watched = launched("--record", str(record), command=[sys.executable, str(script)])
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == "[[0, 1], [2, 3]]\n"
    [line] = [line for line in watched.stderr.splitlines() if "callback" in line]  # one line, naming the version
    assert line.startswith("loadertop: cannot add loadertop's callback to pytorch_lightning 0.0.1 (AttributeError: ")
    assert "has no attribute 'Trainer'" in line
    assert line.endswith("its DataLoaders are still watched and switched, but not told apart nor given its loss")
    assert [r["step"] for r in batch_records(record)] == [1, 2]
