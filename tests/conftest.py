"""Shared fixtures: a cache folder for the built-in images, and process-leak checks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Built-in images go to a temporary cache, never the user's."""
    old = os.environ.get("LOADERTOP_CACHE")
    os.environ["LOADERTOP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LOADERTOP_CACHE", None)
    else:
        os.environ["LOADERTOP_CACHE"] = old


@pytest.fixture(autouse=True)
def _isolated_history(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's runs (and the scripts it launches) remember into a run history of its own: never the user's,
    and no test starts from what another one's runs settled on."""
    monkeypatch.setenv("LOADERTOP_HOME", str(tmp_path_factory.mktemp("home")))


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries LOADERTOP_TEST_TAG=tag (a run's workers inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("LOADERTOP_TEST_TAG") == tag:
                found.append(proc)
        except psutil.Error:
            continue
    return found


class TaggedRun:
    """A ``python -m loadertop`` subprocess whose descendants can be found after it exits."""

    def __init__(self, args: list[str]) -> None:
        self.tag = uuid.uuid4().hex
        env = dict(os.environ, LOADERTOP_TEST_TAG=self.tag, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadertop", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def leftovers(self) -> list[psutil.Process]:
        return tagged_processes(self.tag)


@pytest.fixture
def tagged_run() -> Iterator[type[TaggedRun]]:
    runs: list[TaggedRun] = []

    class _Run(TaggedRun):
        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            runs.append(self)

    yield _Run
    for run in runs:  # never leave a test's processes behind, even when it failed
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)
        for proc in run.leftovers():
            proc.kill()


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime directory for run sockets (short: a Unix socket path has ~100 bytes)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="lt-"))
    monkeypatch.setenv("LOADERTOP_RUNTIME_DIR", str(path / "rt"))
    yield path / "rt"
    shutil.rmtree(path, ignore_errors=True)
