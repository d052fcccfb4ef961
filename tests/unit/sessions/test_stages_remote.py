"""A script's stage figures on their way to the monitor: the writer sends each loader's when they changed, the
server keeps the latest for a monitor that attaches later, the monitor keeps them per loader and its view shows
the shown loader's (the training one unless the user picked another)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from loadertop.core.drive.launcher import spawn
from loadertop.core.probe.publisher import Publisher
from loadertop.core.probe.server import RunServer
from loadertop.core.protocol.messages import Hello, LoaderUpdate, StagesUpdate
from loadertop.core.protocol.runtime import run_socket_path
from loadertop.core.protocol.stages import COLLATE, REST, TURNED_OFF, StageFigures
from loadertop.core.sessions.remote import RemoteSession
from tests.conftest import ROOT
from tests.helpers import Client, wait_for

RECORDED = ROOT / "tests" / "data" / "stages_builtin.json"


def recorded() -> tuple[StageFigures, ...]:
    """The built-in workload's figures at 0, 2 and 1 workers, from a real run's ``--record``."""
    return tuple(StageFigures.from_wire(wire) for wire in json.loads(RECORDED.read_text()))


def loader_message(name: str, *, training: bool) -> dict[str, Any]:
    return LoaderUpdate(name=name, num_workers=2, training=training).to_wire()


def test_the_monitor_keeps_each_loaders_latest_figures_and_shows_the_shown_loaders() -> None:
    session = RemoteSession(pid=os.getpid(), socket_path=Path("/nonexistent"), read_gpus=False)
    assert session.view().stages is None  # nothing said: a script of a loadertop before stage timing
    figures = recorded()
    session._wire.feed(
        [
            loader_message("train.py:9", training=True),
            loader_message("train.py:12", training=False),
            StagesUpdate("train.py:9", figures[:1]).to_wire(),
            StagesUpdate("train.py:12", (StageFigures(0, 0, 0, (), TURNED_OFF),)).to_wire(),
            StagesUpdate("train.py:9", figures).to_wire(),  # the latest replaces the one before
        ]
    )
    assert session.view().stages == figures
    assert session.select_next_loader() == "train.py:12"
    assert session.view().stages == (StageFigures(0, 0, 0, (), TURNED_OFF),)
    session._wire.feed([{"type": "stages", "loader": "train.py:12", "figures": [{"num_workers": "two"}]}])
    assert session._reader.rejections.malformed == 1  # counted, and the figures before it stay
    assert session.view().stages == (StageFigures(0, 0, 0, (), TURNED_OFF),)


def test_a_monitor_attaching_late_gets_each_loaders_latest_figures(runtime_dir: Path) -> None:
    server = RunServer(run_socket_path(), Hello(os.getpid(), ("t",), started=0.0), lambda n, w, r: None)
    try:
        figures = recorded()
        server.publish(LoaderUpdate(name="train", num_workers=2, training=True))
        server.publish(StagesUpdate("train", figures[:1]))
        server.publish(StagesUpdate("train", figures))
        server.publish(StagesUpdate("val", ()))
        client = Client(server.path)
        client.read_until(lambda m: m["type"] == "history_end")
        sent = [m for m in client.messages if m["type"] == "stages"]
        assert [m["loader"] for m in sent] == ["train", "val"]  # the latest of each, once
        assert StagesUpdate.from_wire(sent[0]) == StagesUpdate("train", figures)
        client.close()
    finally:
        server.close()


class _Loader:
    """What the writer asks of a loader for its stage figures."""

    def __init__(self, name: str, figures: Any) -> None:
        self.name = name
        self.figures = figures
        self.time_stages = True

    def stages(self) -> tuple[StageFigures, ...]:
        if isinstance(self.figures, Exception):
            raise self.figures
        return self.figures

    def status(self) -> Any:
        return type("Status", (), {"num_workers": 3})()


class _Server:
    def __init__(self, monitors: int) -> None:
        self.monitors = monitors
        self.published: list[Any] = []

    def publish(self, message: Any, **_: Any) -> None:
        self.published.append(message)


def test_the_writer_sends_figures_that_changed_only_while_watched_and_a_failing_loader_never_fails_it() -> None:
    said: list[str] = []
    publisher = Publisher(hello=Hello(os.getpid()), serve=False, say=said.append)
    publisher.close()  # its writer thread ends: the test calls what it would call once a second
    figures = recorded()
    train, broken, off = _Loader("train", figures), _Loader("broken", RuntimeError("no sheet")), _Loader("off", ())
    off.time_stages = False
    publisher.loaders = [train, broken, off]
    server = publisher.server = _Server(monitors=0)
    sent: dict[str, tuple[StageFigures, ...]] = {}
    publisher._publish_stages(sent)
    assert server.published == [] and said == []  # nobody watches: nothing read
    server.monitors = 1
    publisher._publish_stages(sent)
    publisher._publish_stages(sent)  # unchanged: not sent again; the broken loader is said once
    assert server.published == [
        StagesUpdate("train", figures),
        StagesUpdate("off", (StageFigures(3, 0, 0, (), TURNED_OFF),)),
    ]
    assert said == ["broken: no stage figures for the monitors (RuntimeError: no sheet)"]
    train.figures = figures[:2]
    publisher._publish_stages(sent)
    assert server.published[-1] == StagesUpdate("train", figures[:2])
    many = tuple(StageFigures(n, 10 * n, n, ()) for n in range(20))
    train.figures = many
    publisher._publish_stages(sent)
    kept = server.published[-1].figures
    assert [f.num_workers for f in kept] == [3, *range(5, 20)]  # the running count and the 15 most sampled, in order
    publisher.server = None


def test_a_scripts_figures_reach_the_monitors_view(runtime_dir: Path) -> None:
    """A real script under the launcher: its training loader's stages with 2 workers, as the monitor shows them."""
    command = [sys.executable, str(ROOT / "tests" / "scripts" / "long_loop.py"), "--workers", "2", "--seconds", "60"]
    child, log = spawn(command)
    session = RemoteSession(child=child, log_path=log, command=command, read_gpus=False, sample_interval_s=0.2)
    session.start()
    try:
        wait_for(lambda: any(f.samples for f in session.view().stages or ()), 60)
        view = session.view()
        assert view.script is not None and view.script.selected == "long_loop.py:48"
        (figures,) = view.stages
        assert figures.num_workers == 2 and figures.off is None and figures.batches > 0
        assert {stage.name for stage in figures.stages} == {REST, COLLATE}  # no Compose: the sample as a whole
        assert figures.sample_cpu_ms is not None and figures.sample_cpu_ms > 1.0  # its ~2 ms of CPU a sample
        # The histograms and the bytes read came over the socket too.
        assert all(sum(stage.hist) == stage.cpu_calls for stage in figures.stages)
        assert any(stage.hist for stage in figures.stages)
        if os.path.exists("/proc/self/io"):
            assert figures.io_samples > 0 and figures.read_bytes > 0
    finally:
        session.stop()
        session.close()
