"""The example workloads run headless for a few batches; a torchvision dataset on disk is found by name."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

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
    out = run_example(tagged_run, ["--workload", "examples.image_folder:make_workload", "--data", str(image_folder),
                                   "--workers", "1"])
    assert "ImageFolder" in out and "(40 images, 10 classes), ResNet-18" in out
    assert "workers  batches" in out


@pytest.mark.slow
def test_heavy_decode_example_spends_its_time_loading(tagged_run) -> None:
    out = run_example(tagged_run, ["--workload", "examples.heavy_decode:make_workload", "--workers", "2"])
    assert "in-memory JPEGs 256px -> 128px crops" in out


@pytest.mark.slow
def test_token_sequences_example_trains_dict_batches_through_its_step_function(tagged_run) -> None:
    out = run_example(tagged_run, ["--workload", "examples.token_sequences:make_workload", "--workers", "2",
                                   "--start-method", "spawn"])
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
    code, out, err = run_main(["run", "--headless", "--dataset", "mnist", "--data", str(tmp_path),
                               "--max-batches", "3", "--batch-size", "16"], capsys)
    assert code == 0, err
    assert f"MNIST (64 images) from {tmp_path}, small CNN" in out


def test_a_missing_torchvision_dataset_says_where_it_looked(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["run", "--headless", "--dataset", "fashionmnist", "--data", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert f"FashionMNIST not found under {tmp_path} (looked for {tmp_path}/FashionMNIST/raw)" in err
    assert "download=True" in err and len(err.strip().splitlines()) == 1
