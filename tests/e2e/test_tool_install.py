"""loadertop installed as a tool (``pipx install loadertop``: its own environment) watching a script that another
interpreter runs, in an environment with torch but no loadertop (another venv, a conda environment).

Two environments. A: a venv with loadertop installed non-editable by pip, beside its dependencies (the tool's
environment, as pipx makes it; the dependencies are links to this one's). B: a venv without pip whose only
packages are torch and what torch needs, linked in by a ``.pth`` file: no psutil, no loadertop, no textual.
The script, under A's ``loadertop run --headless -- B/bin/python script.py``, must import B's torch and
numpy, A's loadertop (only its package: nothing else of A's on its path), and psutil from B where B has it,
else A's, appended after B's site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import no_children_left

ROOT = Path(__file__).resolve().parents[2]
TORCH_NEEDS = (
    "torch",
    "torchgen",
    "numpy",
    "typing_extensions",
    "filelock",
    "sympy",
    "mpmath",
    "networkx",
    "jinja2",
    "markupsafe",
    "fsspec",
)
"""What B's torch may import (the first four it imports at ``import torch``; the rest its own requirements)."""

SCRIPT = """\
import json
import os
import sys

import torch
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    def __len__(self):
        return 48

    def __getitem__(self, index):
        return torch.tensor([float(index)]), torch.tensor(float(index * index))


if __name__ == "__main__":
    loader = DataLoader(Squares(), batch_size=4, num_workers=2)
    total = 0.0
    for epoch in range(3):
        for inputs, targets in loader:
            total += float((inputs.squeeze(1) ** 2 - targets).abs().sum())
    print(f"done: {total}")
    psutil_before = sys.modules.get("psutil")  # imported by loadertop's probe, for its CPU readings
    import numpy
    import psutil

    loadertop = sys.modules.get("loadertop")
    beside = os.listdir(os.path.dirname(os.path.dirname(loadertop.__file__))) if loadertop else None
    seen = {"path": sys.path, "loadertop": loadertop and os.path.realpath(loadertop.__file__), "beside": beside,
            "psutil": psutil.__file__, "psutil_real": os.path.realpath(psutil.__file__),
            "psutil_by_probe": psutil_before is psutil, "torch": torch.__file__, "numpy": numpy.__file__}
    with open(sys.argv[1], "w") as file:
        json.dump(seen, file)
"""
# (Paths resolved in the script: the run's directory of links is gone once the run ends.)
LOADER_LINE = next(number for number, line in enumerate(SCRIPT.splitlines(), 1) if "DataLoader(Squares" in line)


def installed(name: str) -> Path:
    """This environment's package (its directory) or module (its file) ``name``."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed here"
    origin = Path(spec.origin).resolve()
    return origin.parent if origin.name == "__init__.py" else origin


def venv(directory: Path) -> tuple[Path, Path]:
    """A new venv without pip at ``directory``: its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return python, Path(site)


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Environment A, as pipx makes it: a venv with loadertop installed by pip, not editable, beside its
    dependencies (torch, numpy, psutil, textual...: links to this environment's); its python and site-packages."""
    base = tmp_path_factory.mktemp("tool")
    python, site = venv(base / "venv")
    source = base / "source"  # a copy: pip's in-tree build leaves build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "loadertop", source / "loadertop", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (site / "loadertop" / "core" / "probe" / "bootstrap" / "sitecustomize.py").is_file()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():  # not this environment's editable loadertop
        if not entry.name.startswith(("loadertop", "__editable__")) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    return python, site


def script_environment(base: Path, *, with_psutil: bool) -> tuple[Path, Path, Path]:
    """Environment B in ``base``: its python, its site-packages and the directory of its packages (links)."""
    python, site = venv(base / "venv")
    packages = base / "packages"
    packages.mkdir()
    for name in (*TORCH_NEEDS, *(("psutil",) if with_psutil else ())):
        found = installed(name)
        (packages / found.name).symlink_to(found)
    (site / "packages.pth").write_text(f"{packages}\n")
    return python, site, packages


def watch(tool: tuple[Path, Path], python: Path, workdir: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    """A's ``loadertop run --headless -- B/bin/python script.py``; its result and what the script saw."""
    script = workdir / "train.py"
    script.write_text(SCRIPT)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "LOADERTOP_PROBE", "LOADERTOP_FALLBACK_PATH")
    }
    seen = workdir / "seen.json"
    done = subprocess.run(
        [str(tool[0]), "-m", "loadertop", "run", "--headless", "--", str(python), str(script), str(seen)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(seen.read_text())


def under(path: str, directory: Path) -> bool:
    return Path(path).is_relative_to(directory)


@pytest.mark.slow
def test_a_tool_install_watches_a_script_of_another_environment_that_keeps_its_own_packages(
    tool: tuple[Path, Path], tmp_path: Path
) -> None:
    python, site, packages = script_environment(tmp_path / "b", with_psutil=False)
    done, seen = watch(tool, python, tmp_path)
    assert done.stdout == "done: 0.0\n"  # the script's own output, as it wrote it
    loader = f"train.py:{LOADER_LINE}"
    assert f"loadertop: DataLoader {loader}" in done.stderr
    assert f"loadertop: {loader} epoch 3: 12 batches" in done.stderr
    assert f"loadertop: {loader} with 2 workers: 36 batches" in done.stderr
    assert under(seen["torch"], packages) and under(seen["numpy"], packages)  # B's, through its .pth
    assert under(seen["loadertop"], tool[1].resolve())  # A's non-editable copy (the run's link to it resolved)
    assert seen["beside"] == ["loadertop"]  # the directory on its path that holds it holds nothing else
    # Nothing of A's but loadertop: not A's site-packages (its torch, numpy, textual...), nor this checkout's root.
    resolved = [Path(os.path.realpath(entry or ".")) for entry in seen["path"]]
    assert tool[1].resolve() not in resolved and ROOT not in resolved
    assert Path(sysconfig.get_path("purelib")).resolve() not in resolved
    # psutil from the fallback the bootstrap appends: A's own, last, after B's site-packages; the probe used it.
    fallback = seen["path"].index(os.path.dirname(os.path.dirname(seen["psutil"])))
    assert fallback == len(seen["path"]) - 1 and seen["path"].index(str(site)) < fallback
    assert seen["psutil_real"] == str(installed("psutil") / "__init__.py")
    assert seen["psutil_by_probe"]
    assert no_children_left()


@pytest.mark.slow
def test_a_script_environment_with_its_own_psutil_uses_it(tool: tuple[Path, Path], tmp_path: Path) -> None:
    python, _site, packages = script_environment(tmp_path / "b", with_psutil=True)
    _done, seen = watch(tool, python, tmp_path)
    assert seen["psutil"] == str(packages / "psutil" / "__init__.py") and seen["psutil_by_probe"]
    assert under(seen["loadertop"], tool[1].resolve())
