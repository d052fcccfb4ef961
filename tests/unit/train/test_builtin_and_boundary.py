"""The built-in workload's images and learnability, and the boundaries: core/TUI, torch-free front-ends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loadertop import LoaderConfig, Trainer, TrainerState
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.train import builtin


def test_images_are_generated_once_deterministically_as_png_class_folders(tmp_path: Path) -> None:
    a = builtin.ensure_images(tmp_path / "a", seed=5, num_images=40)
    b = builtin.ensure_images(tmp_path / "b", seed=5, num_images=40)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files_a) == 40
    assert {p.parent.name for p in files_a} == {f"class_{c}" for c in range(10)}
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)
    other = builtin.ensure_images(tmp_path / "c", seed=6, num_images=40)

    def contents(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*.png")}

    assert contents(other) != contents(a)
    mtime = (a / files_a[0]).stat().st_mtime_ns
    builtin.ensure_images(a, seed=5, num_images=40)  # already there: not rewritten
    assert (a / files_a[0]).stat().st_mtime_ns == mtime


def test_a_foreign_data_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no loadertop images"):
        builtin.ensure_images(tmp_path, seed=0, num_images=10)


def test_the_dataset_reads_files_back_through_torchvision(tmp_path: Path) -> None:
    workload = builtin.make_workload(data_dir=tmp_path / "d", num_images=20, io_latency_ms=1.5)
    image, label = workload.dataset[0]
    assert tuple(image.shape) == (3, 32, 32)
    assert 0 <= label < 10
    assert workload.notes == ("simulated I/O latency 1.5 ms/sample",)
    assert workload.dataset.io_latency_s == pytest.approx(0.0015)


@pytest.mark.slow
def test_the_builtin_classes_are_learnable() -> None:
    workload = builtin.make_workload(seed=0)
    trainer = Trainer(
        workload, LoaderConfig(num_workers=2, batch_size=32, persistent_workers=True), epochs=2, device="cpu"
    )
    trainer.start()
    assert trainer.join(300)
    assert trainer.state is TrainerState.FINISHED, trainer.error
    records = trainer.store.snapshot().records
    first = [r for r in records if r.epoch == 1]
    last = [r for r in records if r.epoch == 2]

    def mean(rs: list[BatchRecord], f: Callable[[BatchRecord], float]) -> float:
        return sum(f(r) for r in rs) / len(rs)

    assert mean(last, lambda r: r.loss) < 0.8 * mean(first, lambda r: r.loss)
    assert mean(last, lambda r: r.accuracy) > mean(first, lambda r: r.accuracy) + 0.1
    assert mean(last, lambda r: r.accuracy) > 0.5  # ten classes: chance is 0.1


def test_core_never_imports_textual_or_rich() -> None:
    code = (
        "import sys, pkgutil, importlib, loadertop.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'loadertop.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "import loadertop, loadertop.cli\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def imported_after(statement: str) -> set[str]:
    """Top-level modules loaded by ``statement`` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_tui_recordings_and_reports_load_no_torch() -> None:
    loaded = imported_after(
        "import loadertop.tui.app, loadertop.core.sessions.replay, loadertop.core.sessions.view, "
        "loadertop.core.policy.report, loadertop.core.drive.launcher, loadertop"
    )
    assert "torch" not in loaded and "textual" in loaded


def test_the_protocol_the_monitor_of_a_script_and_the_runs_server_load_no_torch() -> None:
    protocol = imported_after(
        "import loadertop.core.protocol.codec, loadertop.core.protocol.messages, "
        "loadertop.core.protocol.runtime, loadertop.core.protocol.config, "
        "loadertop.core.protocol.records, loadertop.core.protocol.status"
    )
    assert not protocol & {"torch", "textual", "rich", "psutil"}  # the vocabulary and the wire only
    loaded = imported_after("import loadertop.core.sessions.remote, loadertop.core.probe.server")
    assert "torch" not in loaded and not loaded & {"textual", "rich"}
    assert "torch" not in imported_after(
        "import os, sys, tempfile; os.environ['LOADERTOP_RUNTIME_DIR'] = "
        "tempfile.mkdtemp(); sys.argv = ['loadertop', 'attach', '--list']\n"
        "import loadertop.cli; loadertop.cli.main()"
    )


def test_the_launchers_bootstrap_loads_nothing_heavy_before_the_script_imports_torch() -> None:
    loaded = imported_after("import loadertop.core.probe.launched")
    assert not loaded & {"torch", "textual", "rich", "numpy", "psutil"}
