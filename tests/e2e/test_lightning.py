"""Lightning: the script's own callback without the launcher (watched, attached to, switched), and the logged
values of a loader Lightning fetches ahead of (see test_frameworks.py for the launched, switched fit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.runtime import live_runs
from loadertop.core.sessions.remote import RemoteSession
from tests.conftest import ROOT
from tests.helpers import launched, made_at, no_children_left, records, run, wait_for

pytest.importorskip("lightning", reason="the dev extra installs lightning")

FIT = "tests/scripts/fit_lightning.py"
TRAIN_HOOK, VAL_HOOK = made_at(FIT, "def train_dataloader"), made_at(FIT, "def val_dataloader")


@pytest.mark.slow
@pytest.mark.parametrize("namespace", ["lightning", "pytorch_lightning"])
def test_the_scripts_own_callback_makes_python_fit_py_a_run_that_attach_watches_and_switches_exactly(
    namespace: str, tmp_path: Path, runtime_dir: Path
) -> None:
    # `python fit.py` with callbacks=[LoaderTopCallback()], no launcher: its loaders become loadertop's and the
    # run publishes; a monitor attaches by pid, switches the training loader 0 -> 2 workers while the script
    # holds at its 5th step, and the script trains exactly as without loadertop.
    options = [f"--namespace={namespace}"]
    plain = run([sys.executable, FIT, str(tmp_path / "plain.json"), *options])
    assert plain.returncode == 0, plain.stderr
    release, errors = tmp_path / "release", tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, FIT, str(tmp_path / "watched.json"), *options, "--callback", "--pause-at", f"5:{release}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    session: RemoteSession | None = None
    try:
        wait_for(lambda: any(r.pid == child.pid for r in live_runs()), 120)
        info = next(r for r in live_runs() if r.pid == child.pid)
        session = RemoteSession(pid=child.pid, socket_path=info.socket_path, read_gpus=False, sample_interval_s=0.2)
        session.start()

        def training() -> object:
            return next((loader for loader in session.view().script.loaders if loader.training), None)

        wait_for(
            lambda: (
                training() is not None
                and session.view().script.selected == TRAIN_HOOK
                and session.view().status.step >= 5
            ),
            60,
        )
        session.apply(LoaderConfig(num_workers=2))
        wait_for(lambda: training().pending == 2, 30)  # the script has the request: let it go on
        release.touch()
        assert child.wait(120) == 0
        wait_for(lambda: session.view().script.ended is not None, 30)
        view = session.view()
    finally:
        if child.poll() is None:
            child.kill()
        if session is not None:
            session.close()
    said = errors.read_text()
    seen_plain = json.loads((tmp_path / "plain.json").read_text())
    seen = json.loads((tmp_path / "watched.json").read_text())
    assert seen["train"] == seen_plain["train"] and seen["val"] == seen_plain["val"]  # every sample, in order
    assert seen["weights"] == seen_plain["weights"] and seen["losses"] == seen_plain["losses"]
    assert seen["logged"] == seen_plain["logged"] and seen["imported"] == seen_plain["imported"] == [namespace]
    assert f"loadertop: watching this process's DataLoaders: `loadertop attach {child.pid}`" in said
    # Its loaders are named by the hooks that make them; the training one is told apart.
    assert f"loadertop: DataLoader {TRAIN_HOOK} is the training loader" in said
    assert f"loadertop: {TRAIN_HOOK}: the monitor asks for 2 workers, at the next batch" in said
    assert {loader.name for loader in view.script.loaders} == {TRAIN_HOOK, VAL_HOOK}
    # The monitor's view: one switch, after the 5th batch (where it hands over is the loader's: an overlapped
    # switch lets the old workers deliver while the new ones start), and the module's own loss, batch by batch.
    assert [r.step for r in view.store.records] == list(range(1, 41))
    workers = [r.num_workers for r in view.store.records]
    switched = workers.index(2)
    assert 5 <= switched < 40 and workers == [0] * switched + [2] * (40 - switched)
    assert [r.loss for r in view.store.records] == seen_plain["losses"]
    assert no_children_left()


@pytest.mark.slow
def test_an_unsized_loader_that_lightning_fetches_ahead_of_gets_each_steps_logged_values(tmp_path: Path) -> None:
    # Lightning fetches the next batch of a loader without a length before the step runs (to know the last
    # one): the latest batch is then one ahead; each step's loss and logged values still land on their batch.
    record = tmp_path / "run.jsonl"
    watched = launched("--record", str(record), command=[sys.executable, FIT, str(tmp_path / "out.json"), "--iterable"])
    assert watched.returncode == 0, watched.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["train"] == [list(range(i, i + 8)) for i in range(0, 160, 8)] * 2  # the stream, in order
    logged = [r for r in records(record) if r.get("event") == "log"]
    assert [r["step"] for r in logged] == list(range(1, 41))
    assert [r["loss"] for r in logged] == seen["losses"]
    assert [{k: v for k, v in r.items() if k.startswith("train_")} for r in logged] == seen["logged"]
