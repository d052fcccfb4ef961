"""The autotuner on the wire: only the controller turns it on or off, and a monitor attaching late learns its
state and every change, however long the history has grown since."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from loadertop.core.policy.autotune import Change
from loadertop.core.probe import server as server_module
from loadertop.core.probe.server import RunServer
from loadertop.core.protocol.messages import AutotuneEvent, AutotuneStatus, Batch, Hello, TunerState
from loadertop.core.protocol.runtime import run_socket_path
from loadertop.core.sessions.remote import RemoteSession
from tests.helpers import Client


@pytest.fixture
def tuned(runtime_dir: Path) -> Any:
    asked: list[bool] = []
    server = RunServer(run_socket_path(), Hello(os.getpid(), ("t",), started=0.0), lambda n, w, r: None)
    server.on_autotune = lambda enabled: asked.append(enabled) or None
    server.asked = asked  # type: ignore[attr-defined]
    yield server
    server.close()


def test_only_the_controller_turns_autotune_on_or_off(tuned: RunServer) -> None:
    first = Client(tuned.path, control=True)
    first.read_until(lambda m: m["type"] == "control")
    watcher = Client(tuned.path, control=False)
    watcher.send("autotune", enabled=True)
    assert watcher.read_until(lambda m: m["type"] == "refused")["reason"].startswith("watching only: the monitor")
    first.send("autotune", enabled="yes")
    assert "enabled must be true or false, got 'yes'" in first.read_until(lambda m: m["type"] == "refused")["reason"]
    first.send("autotune", enabled=True)
    first.send("autotune", enabled=False)
    first.send("switch", loader=None, workers=-1)  # refused after the two before it were handled, in order
    first.read_until(lambda m: m["type"] == "refused" and "integer" in m["reason"])
    assert tuned.asked == [True, False]  # type: ignore[attr-defined]
    tuned.on_autotune = None  # a run that cannot be tuned from a monitor says so
    first.send("autotune", enabled=True)
    assert "cannot be tuned" in first.read_until(lambda m: m["type"] == "refused" and "tuned" in m["reason"])["reason"]
    first.close()
    watcher.close()


def test_a_late_monitor_gets_every_change_and_the_latest_status_past_the_history(
    tuned: RunServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {
        "event": "autotune",
        "change": "jump",
        "from": 0,
        "to": 3,
        "reason": "load 31 ms > step 18 ms",
        "predicted": {"0": 100.0, "3": 290.5, "4": None},
        "ceiling": None,
        "loader": "train",
        "step": 40,
    }
    tuned.publish(AutotuneEvent.from_wire(event))
    tuned.publish(AutotuneStatus(loader="train", state=TunerState.MEASURING, workers=0))
    tuned.publish(
        AutotuneStatus(
            loader="train",
            state=TunerState.SWITCHING,
            workers=3,
            changes=1,
            predicted=((0, 100.0), (3, 290.5), (4, None)),
            ceiling=612.0,
        )
    )
    for step in range(server_module.HISTORY_MESSAGES + 5):  # the history forgets its oldest batches
        tuned.publish(
            Batch(
                loader="train",
                step=step,
                epoch=1,
                batch=step,
                num_workers=3,
                samples=8,
                load_ms=1.0,
                step_ms=2.0,
                time=float(step),
            ),
            wake=False,
        )
    client = Client(tuned.path)
    client.read_until(lambda m: m["type"] == "history_end", timeout=30)
    kinds = [m["type"] for m in client.messages]
    assert kinds[:3] == ["hello", "event", "autotune"] and kinds.count("autotune") == 1
    assert client.messages[2]["state"] == "switching"
    assert {k: v for k, v in client.messages[1].items() if k not in ("v", "type")} == event
    client.close()


def test_the_monitor_reads_the_status_and_the_changes_into_the_view() -> None:
    session = RemoteSession(pid=os.getpid(), socket_path=Path("/nonexistent"), read_gpus=False)
    assert session.view().autotune is None  # nothing said: this run says nothing of a tuner
    session._wire.feed(
        [
            {
                "type": "event",
                "event": "autotune",
                "change": "jump",
                "from": 0,
                "to": 3,
                "reason": "load 31 ms > step 18 ms",
                "predicted": {"0": 100.0, "3": 290.5, "4": None},
                "ceiling": None,
                "loader": "train",
                "step": 40,
            }
        ]
    )
    view = session.view().autotune  # a built-in run publishes changes only: the state is read off the last
    assert view is not None and (view.state, view.workers) == ("switching", 3)
    assert view.changes == (
        Change("jump", 0, 3, "load 31 ms > step 18 ms", ((0, 100.0), (3, 290.5), (4, None)), math.inf),
    )
    assert session.view().script.notice[1] == "autotune: load 31 ms > step 18 ms: 0 -> 3 workers"
    session._wire.feed(
        [
            {
                "type": "autotune",
                "loader": "train",
                "state": "settled",
                "workers": 3,
                "changes": 1,
                "predicted": {"0": 100.0, "3": 290.5},
                "ceiling": 612.0,
            }
        ]
    )
    view = session.view().autotune
    assert (view.state, view.workers, view.ceiling, view.predicted) == ("settled", 3, 612.0, ((0, 100.0), (3, 290.5)))
    session._wire.feed(
        [{"type": "autotune", "state": "off", "workers": None, "changes": 1, "predicted": {}, "ceiling": None}]
    )
    assert session.view().autotune.state == "off" and len(session.view().autotune.changes) == 1


def test_a_torchrun_jobs_monitor_turns_autotune_on_or_off_for_the_shown_rank_only() -> None:
    from loadertop.core.sessions.ranks import RanksSession, _Rank

    asked: list[tuple[int, bool]] = []

    class Rank:  # a rank's RemoteSession, as far as autotune goes
        def __init__(self, number: int) -> None:
            self.number = number

        def set_autotune(self, enabled: bool) -> None:
            asked.append((self.number, enabled))

    job = RanksSession(pid=os.getpid())
    with pytest.raises(RuntimeError, match="no rank has started yet"):
        job.set_autotune(True)
    job._ranks = {
        n: _Rank(os.getpid(), Path("/nonexistent"), n, n, 2, 2, 0, Rank(n), 0.0)  # type: ignore[arg-type]
        for n in (0, 1)
    }
    job.set_autotune(True)
    job._selected = 1
    job.set_autotune(False)
    assert asked == [(0, True), (1, False)]
    job._selected = 3  # a rank of another node, as its peers tell of it
    with pytest.raises(RuntimeError, match="rank 3 runs on another node"):
        job.set_autotune(True)
