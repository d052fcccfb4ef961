"""The example workloads run headless for a few batches and do what they are for; a torchvision dataset on disk is
found by name."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.heavy_decode import make_workload as make_heavy_decode
from loadertop import LoaderConfig, Trainer, TrainerState
from loadertop.core.policy.advice import verdict
from loadertop.core.train.builtin import ensure_images
from tests.helpers import run_main


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    ensure_images(root, seed=1, num_images=40)
    return root


def run_example(tagged_run, args: list[str]) -> str:
    run = tagged_run(["run", "--headless", "--max-batches", "4", "--batch-size", "8", *args])
    out, err = run.proc.communicate(timeout=180)
    assert run.proc.returncode == 0, err
    assert run.leftovers() == []
    return out


@pytest.mark.slow
def test_image_folder_example_reads_any_class_folders(tagged_run, image_folder: Path) -> None:
    out = run_example(
        tagged_run, ["--workload", "examples.image_folder:make_workload", "--data", str(image_folder), "--workers", "1"]
    )
    assert "ImageFolder" in out and "(40 images, 10 classes), ResNet-18" in out
    assert "workers  batches" in out
    # Where its samples' time went, timed in its worker: PIL's decode and each transform by class.
    stages = out.split("where a sample's time goes", 1)[1]
    assert "1 worker: per sample" in stages and "decode" in stages and "RandomResizedCrop" in stages, stages


def test_heavy_decode_example_spends_its_time_loading() -> None:
    # With no workers every batch is decoded in the loop, so the measured load is the example's whole data cost:
    # decoding and augmenting 8 JPEGs takes several times the small CNN's step (about 8x here), the reason it
    # is the example where num_workers matters most.
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(
            make_heavy_decode(count=96), LoaderConfig(num_workers=0, batch_size=8), epochs=1, device="cpu"
        )
        trainer.start()
        assert trainer.join(60), "the trainer did not finish in time"
    finally:
        torch.set_num_threads(threads)  # the workload asks for 1 intra-op thread: not for the tests after it
    assert trainer.state is TrainerState.FINISHED, trainer.status()
    [summary] = trainer.store.summaries()
    assert summary.batches + summary.warmup_batches == 12
    judged = verdict(summary.load_ms_mean, summary.compute_ms_mean)
    assert judged is not None and judged.input_bound
    assert summary.load_ms_mean > 3 * summary.compute_ms_mean, (
        f"load {summary.load_ms_mean:.1f} ms vs step {summary.compute_ms_mean:.1f} ms per batch"
    )


@pytest.mark.slow
def test_token_sequences_example_trains_dict_batches_through_its_step_function(tagged_run) -> None:
    out = run_example(
        tagged_run,
        ["--workload", "examples.token_sequences:make_workload", "--workers", "2", "--start-method", "spawn"],
    )
    assert "token sequences 20-200 long" in out and "acc " in out


def write_fake_mnist(root: Path, count: int = 64) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def test_a_torchvision_dataset_on_disk_is_chosen_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_mnist(tmp_path)
    code, out, err = run_main(
        [
            "run",
            "--headless",
            "--dataset",
            "mnist",
            "--data",
            str(tmp_path),
            "--max-batches",
            "3",
            "--batch-size",
            "16",
        ],
        capsys,
    )
    assert code == 0, err
    assert f"MNIST (64 images) from {tmp_path}, small CNN" in out


def test_a_missing_torchvision_dataset_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["run", "--headless", "--dataset", "fashionmnist", "--data", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert f"FashionMNIST not found under {tmp_path} (looked for {tmp_path}/FashionMNIST/raw)" in err
    assert "download=True" in err and len(err.strip().splitlines()) == 1
