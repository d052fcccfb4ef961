"""Framework scripts, unmodified, under ``loadertop run --headless``: switched mid-epoch, the same run as without."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import launched, made_at, no_children_left, records, run, torchrun

lightning = pytest.importorskip("lightning", reason="the dev extra installs lightning")

FIT = "tests/scripts/fit_lightning.py"
TRAIN, VAL = made_at(FIT, "DataLoader(Numbers(160)"), made_at(FIT, "DataLoader(Numbers(48)")


LIGHTNING_RUNS = {
    "lightning, injected callback": [],
    "the script's own callback": ["--callback"],
    "pytorch_lightning": ["--namespace=pytorch_lightning"],  # import pytorch_lightning as L: the older package
    "manual optimization, the loss only logged": ["--manual"],  # training_step returns None
}


@pytest.mark.slow
@pytest.mark.parametrize("options", list(LIGHTNING_RUNS.values()), ids=list(LIGHTNING_RUNS))
def test_a_lightning_fit_is_switched_mid_epoch_and_trains_exactly_as_without(
    options: list[str], tmp_path: Path
) -> None:
    plain = run([sys.executable, FIT, str(tmp_path / "plain.json"), *options])
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "5:2",
        "--record",
        str(record),
        command=[sys.executable, FIT, str(tmp_path / "watched.json"), *options],
    )
    assert watched.returncode == 0, watched.stderr
    seen_plain = json.loads((tmp_path / "plain.json").read_text())
    seen = json.loads((tmp_path / "watched.json").read_text())
    assert seen["train"] == seen_plain["train"] and seen["val"] == seen_plain["val"]  # every sample, in order
    assert seen["weights"] == seen_plain["weights"] and seen["losses"] == seen_plain["losses"]
    assert seen["callbacks"].count("LoaderTopCallback") == 1  # injected once, or the script's own kept alone
    # loadertop imports neither Lightning package unless the script does (nor the other one when it does).
    assert (
        seen["imported"]
        == seen_plain["imported"]
        == (["pytorch_lightning"] if "--namespace=pytorch_lightning" in options else ["lightning"])
    )
    # The training loader is told apart from the validation loader Lightning asks for first (sanity check).
    assert f"loadertop: DataLoader {TRAIN} is the training loader" in watched.stderr
    assert f"{TRAIN}: switching 0 -> 2 workers after batch 5" in watched.stderr
    rows = records(record)
    train = [r for r in rows if r.get("loader") == TRAIN and "event" not in r]
    val = [r for r in rows if r.get("loader") == VAL and "event" not in r]
    # One switch, after the 5th batch (an overlapped switch hands over when the new workers are up).
    workers = [r["num_workers"] for r in train]
    switched = workers.index(2)
    assert 5 <= switched < 40 and workers == [0] * switched + [2] * (40 - switched)
    assert len(val) == len(seen_plain["val"]) and all(r["num_workers"] == 0 for r in val)
    # The loss curve: what training_step returned (or, returning nothing, logged), on each training batch, as the
    # script saw it; and what it logged with self.log, each batch's own values (the accuracy every other batch).
    logged = [r for r in rows if r.get("event") == "log"]
    assert [(r["loader"], r["step"]) for r in logged] == [(TRAIN, step) for step in range(1, 41)]
    assert [r["loss"] for r in logged] == seen_plain["losses"]
    assert [{k: v for k, v in r.items() if k.startswith("train_")} for r in logged] == seen_plain["logged"]
    # Where the training loader's samples' time went, per worker count it ran, timed inside its fetches.
    assert f"loadertop: {TRAIN} stages with 2 workers: per sample" in watched.stderr
    staged = {r["num_workers"] for r in rows if r.get("event") == "stages" and r["loader"] == TRAIN}
    assert staged == {0, 2}
    assert no_children_left()


HF = "tests/scripts/train_hf.py"


@pytest.mark.slow
def test_a_hugging_face_trainer_is_switched_inside_its_epoch_and_its_logged_loss_recorded(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the dev extra installs transformers")
    plain = run([sys.executable, HF, str(tmp_path / "plain.json")])
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch", "5:2", "--record", str(record), command=[sys.executable, HF, str(tmp_path / "watched.json")]
    )
    assert watched.returncode == 0, watched.stderr
    seen_plain = json.loads((tmp_path / "plain.json").read_text())
    seen = json.loads((tmp_path / "watched.json").read_text())
    assert seen["train"] == seen_plain["train"] and seen["losses"] == seen_plain["losses"]
    assert seen["weights"] == seen_plain["weights"]
    assert seen["callbacks"].count("LoaderTopTrainerCallback") == 1
    # The Trainer's DataLoader and the one accelerate makes around it are one loader, switched mid-epoch.
    train_name = re.search(r"loadertop: DataLoader (\S+): 0 workers, batch 8 \(training", watched.stderr).group(1)
    assert f"{train_name}: switching 0 -> 2 workers after batch 5" in watched.stderr
    rows = records(record)
    train = [r for r in rows if r.get("loader") == train_name and "event" not in r]
    workers = [r["num_workers"] for r in train]  # an overlapped switch: handed over a few batches after it is asked
    assert workers == [0] * workers.index(2) + [2] * (40 - workers.index(2)) and 5 <= workers.index(2) < 20
    evaluation = {r["loader"] for r in rows if "event" not in r} - {train_name}
    assert len(evaluation) == 1  # every evaluation's loader, made anew each epoch, is one loader
    # The loss panel: the Trainer's own logs, each on the batch it belongs to (not accelerate's next one).
    logged = [r for r in rows if r.get("event") == "log"]
    assert [r["step"] for r in logged] == list(range(1, 41))
    assert [r["loss"] for r in logged] == seen_plain["losses"]
    assert {r["num_workers"] for r in rows if r.get("event") == "stages" and r["loader"] == train_name} == {0, 2}
    assert no_children_left()


@pytest.mark.slow
def test_lightning_ddp_under_torchrun_re_creates_its_loaders_and_every_rank_still_trains_exactly(
    tmp_path: Path,
) -> None:
    # Lightning re-creates each loader with a DistributedSampler (reading the loader's __init__ signature):
    # the new one is recognised as the same loader, on every rank, and switched there.
    plain = run(torchrun(tmp_path / "plain.json", "--ddp", script=FIT))
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch", "3:2", "--record", str(record), command=torchrun(tmp_path / "watched.json", "--ddp", script=FIT)
    )
    assert watched.returncode == 0, watched.stderr
    for rank in (0, 1):
        before = json.loads((tmp_path / f"plain.json.rank{rank}").read_text())
        after = json.loads((tmp_path / f"watched.json.rank{rank}").read_text())
        assert after["train"] == before["train"] and len(after["train"]) == 20  # this rank's shard, in order
        assert after["weights"] == before["weights"] and after["losses"] == before["losses"]
        assert f"loadertop: rank {rank}: {TRAIN}: switching 0 -> 2 workers after batch 3" in watched.stderr
    created = [
        line for line in watched.stderr.splitlines() if ": DataLoader " in line and "training loader" not in line
    ]
    assert len(created) == 4  # train and validation on each rank: the re-created ones are not new loaders
    rows = [r for r in records(record) if "event" not in r and r["loader"] == TRAIN]
    assert sorted({(r["rank"], r["num_workers"]) for r in rows}) == [(0, 0), (0, 2), (1, 0), (1, 2)]
    staged = [r for r in records(record) if r.get("event") == "stages" and r["loader"] == TRAIN]
    assert sorted((r["rank"], r["num_workers"]) for r in staged) == [(0, 0), (0, 2), (1, 0), (1, 2)]  # per rank
    assert f"loadertop: rank 1: {TRAIN} stages with 2 workers: per sample" in watched.stderr
    assert no_children_left()
