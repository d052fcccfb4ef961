"""Typed wire messages: every one round-trips, the unknown-field rule holds, bad fields raise ``MessageError``, and
the monitor's decoder makes of recorded message lists exactly what ``RemoteSession`` made of them before.

``tests/data/wire_long_loop.jsonl`` was recorded from ``tests/scripts/long_loop.py`` under the launcher (a switch
to 2 workers after batch 25), ``wire_edges.jsonl`` composed to hold every message type and odd case (replayed
batches, a loss logged late, malformed messages, another node's ranks); ``wire_views.json`` holds the view fields
that ``RemoteSession._handle`` made of them before the messages were typed.
"""

from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from loadertop.core.protocol import messages as wire
from loadertop.core.protocol.codec import VERSION, LineReader, encode_message, newer_text
from loadertop.core.protocol.messages import (
    CLIENT_TYPES,
    SERVER_TYPES,
    AutotuneEvent,
    AutotuneRequest,
    AutotuneStatus,
    Batch,
    ChangeKind,
    Control,
    Cpu,
    CpuReason,
    Dropped,
    ExceptionEvent,
    ExitEvent,
    Hello,
    HistoryEnd,
    LoaderUpdate,
    Log,
    MessageError,
    MessageType,
    MonitorHello,
    OtherEvent,
    Peer,
    Refused,
    StagesUpdate,
    Switch,
    SwitchEvent,
    TunerState,
    client_message,
    server_message,
)
from loadertop.core.protocol.stages import DECODE, REST, StageFigures, StageTime
from loadertop.core.sessions.decoder import WireDecoder
from loadertop.core.sessions.remote import RemoteSession
from tests.conftest import ROOT
from tests.helpers import wait_for

DATA = ROOT / "tests" / "data"

SERVER_SAMPLES: list[Any] = [
    Hello(
        pid=12,
        command=("python", "train.py"),
        cwd="/work",
        started=1.5,
        log="/tmp/x.log",
        rank=1,
        local_rank=1,
        world_size=4,
        local_world_size=2,
        node_rank=0,
        controller=40,
        controller_id="abc",
        kept_by="itself",
        builtin="resnet",
        threads=(7, 8),
    ),
    LoaderUpdate(
        name="train.py:9",
        num_workers=2,
        batch_size=16,
        batches_per_epoch=32,
        training=True,
        exact=False,
        pending=3,
        epoch=2,
        worker_pids=(101, 102),
        dropped=5,
    ),
    Batch(
        loader="train.py:9",
        step=7,
        epoch=1,
        batch=7,
        num_workers=2,
        samples=16,
        load_ms=1.25,
        step_ms=None,
        time=100.5,
        switch_ms=3.5,
        rank=1,
    ),
    Log(loader="train.py:9", step=7, metrics={"loss": 0.5, "acc": 1, "lr": None}, rank=1),
    Cpu(reason=CpuReason.BOUNDARY, loader="train.py:9", time=10.0, main_s=1.5, children_s=0.25, rss_bytes=1 << 20),
    SwitchEvent(loader="train.py:9", from_workers=0, to_workers=2, after_step=31, by="monitor"),
    AutotuneEvent(
        change=ChangeKind.JUMP,
        from_workers=0,
        to_workers=3,
        reason="load 31 ms > step 18 ms",
        predicted=((0, 100.0), (3, 290.5), (4, None)),
        ceiling=612.25,
        loader="train.py:9",
        step=40,
        rank=0,
    ),
    ExceptionEvent(traceback="Traceback ...\nValueError: boom\n"),
    ExitEvent(dropped=2),
    OtherEvent(event="checkpoint", extra={"path": "/tmp/ckpt", "step": 9, "nested": {"a": [1, 2]}}),
    Control(controller=41, controller_id="def", kept_by="loadertop (pid 1) trains this workload"),
    Refused(reason="watching only"),
    Dropped(count=12),
    HistoryEnd(),
    Peer(
        rank=3,
        local_rank=1,
        node_rank=1,
        host="n2",
        pid=77,
        num_workers=4,
        load_ms=3.5,
        step_ms=20.0,
        samples_per_s=301.5,
        step=12,
        time=5.0,
    ),
    AutotuneStatus(
        loader="train.py:9",
        state=TunerState.SETTLED,
        workers=3,
        changes=4,
        predicted=((0, 100.0),),
        ceiling=None,
        cores=3.5,
        memory_bytes=1 << 30,
        max_workers=8,
    ),
    StagesUpdate(
        loader="train.py:9",
        figures=(
            StageFigures(0, 64, 4, (StageTime(REST, 64, 0.25, 8, 0.03125, 0.0300),)),
            StageFigures(
                2,
                128,
                8,
                (
                    StageTime(DECODE, 384, 0.125, 48, 0.015625, 0.0125),
                    StageTime("RandomResizedCrop", 128, 0.5, 0, 0.0, 0.0),
                ),
            ),
            StageFigures(4, 0, 0, (), "TypeError: a timer failed"),
        ),
    ),
]
CLIENT_SAMPLES: list[Any] = [
    MonitorHello(pid=40, id="abc", control=True),
    Switch(workers=2, loader="val", rank=3),
    AutotuneRequest(enabled=False),
]


# -------------------------------------------------------------- round trip


def test_every_message_type_has_a_sample_here() -> None:
    assert {type(m) for m in SERVER_SAMPLES} == set(typing.get_args(wire.ServerMessage))
    assert {type(m) for m in CLIENT_SAMPLES} == set(typing.get_args(wire.ClientMessage))
    assert {m.TYPE for m in SERVER_SAMPLES} == SERVER_TYPES and {m.TYPE for m in CLIENT_SAMPLES} == CLIENT_TYPES


@pytest.mark.parametrize("message", SERVER_SAMPLES + CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_round_trips_through_its_wire_form_and_the_codec(message: Any) -> None:
    read = server_message if message in SERVER_SAMPLES else client_message
    assert type(message).from_wire(message.to_wire()) == message
    assert read(message.to_wire()) == message
    line = encode_message(message)
    known = SERVER_TYPES if message in SERVER_SAMPLES else CLIENT_TYPES
    (received,) = list(LineReader(known=known).feed(line))
    assert received["v"] == VERSION and received["type"] == message.TYPE
    assert read(received) == message
    assert json.loads(line) == {"v": VERSION, **message.to_wire()}  # plain JSON: the enums are their strings


def test_defaults_read_back_and_optional_fields_only_some_runs_have_are_left_out() -> None:
    hello = Hello(pid=3)
    assert hello.to_wire() == {
        "type": "hello",
        "pid": 3,
        "command": [],
        "started": None,
        "log": None,
        "controller": None,
        "controller_id": None,
        "threads": [],
    }
    assert Hello.from_wire({"pid": 3}) == hello
    batch = Batch(loader="l", step=1, epoch=1, batch=1, num_workers=0, samples=8, load_ms=1.0, step_ms=None, time=2.0)
    assert "rank" not in batch.to_wire() and batch.to_wire()["step_ms"] is None  # null: an epoch's first
    assert "cores" not in AutotuneStatus().to_wire()  # no tuner yet: no budgets
    assert AutotuneStatus(cores=2.0).to_wire()["memory_bytes"] is None  # a tuner without a memory limit
    assert AutotuneStatus.from_wire({}) == AutotuneStatus(state=TunerState.OFF)


# ------------------------------------------------------- unknown fields


def test_unknown_fields_are_ignored_except_the_users_names_which_are_kept() -> None:
    batch = SERVER_SAMPLES[2]
    later = {**batch.to_wire(), "pad": "x" * 10, "gpu_ms": 3.0}  # fields of a later version
    assert Batch.from_wire(later) == batch
    assert Hello.from_wire({**SERVER_SAMPLES[0].to_wire(), "future": {"a": 1}}) == SERVER_SAMPLES[0]
    log = Log.from_wire({"loader": "l", "step": 2, "metrics": {"loss": 0.5, "my_metric": 7, "note": "text"}})
    assert log.metrics == {"loss": 0.5, "my_metric": 7, "note": "text"}  # the user's names, kept whole
    event = server_message({"v": 1, "type": "event", "event": "note", "text": "shown as it is", "n": 2})
    assert event == OtherEvent("note", {"text": "shown as it is", "n": 2})
    assert event.to_wire() == {"type": "event", "event": "note", "text": "shown as it is", "n": 2}
    known = server_message({"type": "event", "event": "exit", "dropped": 1, "extra": True})
    assert known == ExitEvent(1)  # a kind this side reads: its unknown fields are ignored


# ------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {
                "type": "batch",
                "loader": "l",
                "step": 1,
                "epoch": 1,
                "batch": 1,
                "num_workers": 0,
                "samples": 8,
                "step_ms": 1.0,
                "time": 1.0,
            },
            "load_ms is missing",
        ),
        (
            {
                "type": "batch",
                "loader": "l",
                "step": "1",
                "epoch": 1,
                "batch": 1,
                "num_workers": 0,
                "samples": 8,
                "load_ms": 1.0,
                "step_ms": 1.0,
                "time": 1.0,
            },
            "step must be an integer, got '1'",
        ),
        (
            {
                "type": "batch",
                "loader": "l",
                "step": True,
                "epoch": 1,
                "batch": 1,
                "num_workers": 0,
                "samples": 8,
                "load_ms": 1.0,
                "step_ms": 1.0,
                "time": 1.0,
            },
            "step must be an integer, got True",
        ),
        (
            {
                "type": "batch",
                "loader": "l",
                "step": 1,
                "epoch": 1,
                "batch": 1,
                "num_workers": 0,
                "samples": 8,
                "load_ms": "fast",
                "step_ms": 1.0,
                "time": 1.0,
            },
            "load_ms must be a number, got 'fast'",
        ),
        ({"type": "loader", "name": "l", "num_workers": -1}, "num_workers must be an integer >= 0, got -1"),
        ({"type": "loader", "name": 3, "num_workers": 1}, "name must be a string, got 3"),
        (
            {"type": "loader", "name": "l", "num_workers": 1, "training": "yes"},
            "training must be true or false, got 'yes'",
        ),
        (
            {"type": "loader", "name": "l", "num_workers": 1, "worker_pids": [1, "2"]},
            "worker_pids must be an integer, got '2'",
        ),
        ({"type": "hello", "command": ["x"]}, "pid is missing"),
        ({"type": "hello", "pid": 1, "command": "python x.py"}, "command must be a list of strings, got 'python x.py'"),
        (
            {
                "type": "cpu",
                "reason": "sometime",
                "loader": "l",
                "time": 1.0,
                "main_s": 1.0,
                "children_s": 0.0,
                "rss_bytes": 1,
            },
            "reason must be one of boundary, end, got 'sometime'",
        ),
        (
            {"type": "autotune", "state": "paused"},
            "state must be one of off, measuring, switching, settled, got 'paused'",
        ),
        ({"type": "autotune", "predicted": [1, 2]}, "predicted must be an object, got [1, 2]"),
        ({"type": "autotune", "predicted": {"two": 1.0}}, "predicted must be an object of worker counts, got 'two'"),
        ({"type": "autotune", "predicted": {"2": "fast"}}, "predicted[2] must be a number, got 'fast'"),
        ({"type": "event", "event": "autotune", "from": 0, "to": 2}, "change is missing"),
        (
            {"type": "event", "event": "autotune", "change": "leap", "from": 0, "to": 2},
            "change must be one of jump, step, settle, retune, memory, got 'leap'",
        ),
        ({"type": "event", "event": 5}, "event must be a string, got 5"),
        ({"type": "log", "loader": "l", "step": 1, "metrics": [0.5]}, "metrics must be an object, got [0.5]"),
        ({"type": "peer", "host": "n3"}, "rank is missing"),
        ({"type": "stages", "figures": []}, "loader is missing"),
        ({"type": "stages", "loader": "l", "figures": {"0": {}}}, "figures must be a list of objects, got {'0': {}}"),
        (
            {"type": "stages", "loader": "l", "figures": [{"samples": 1, "batches": 1}]},
            "figures[0].num_workers is missing",
        ),
        (
            {"type": "stages", "loader": "l", "figures": [{"num_workers": 1, "samples": -1, "batches": 1}]},
            "figures[0].samples must be an integer >= 0, got -1",
        ),
        (
            {"type": "stages", "loader": "l", "figures": [{"num_workers": 1, "samples": 1, "batches": 1, "stages": 3}]},
            "figures[0].stages must be a list of objects, got 3",
        ),
        (
            {
                "type": "stages",
                "loader": "l",
                "figures": [
                    {
                        "num_workers": 1,
                        "samples": 1,
                        "batches": 1,
                        "stages": [
                            {"name": "decode", "calls": 1, "wall_s": 0.1, "cpu_calls": 0, "cpu_wall_s": 0, "cpu_s": 0},
                            {
                                "name": "collate",
                                "calls": "1",
                                "wall_s": 0.1,
                                "cpu_calls": 0,
                                "cpu_wall_s": 0,
                                "cpu_s": 0,
                            },
                        ],
                    }
                ],
            },
            "figures[0].stages[1].calls must be an integer >= 0, got '1'",
        ),
        (
            {"type": "stages", "loader": "l", "figures": [{"num_workers": 1, "samples": 1, "batches": 1, "off": 5}]},
            "figures[0].off must be a string, got 5",
        ),
        ({"type": "refused"}, "reason is missing"),
        ({"type": "pickle"}, "not a message from a run: type 'pickle'"),
    ],
)
def test_a_known_field_of_the_wrong_type_or_a_missing_one_raises_message_error(
    message: dict[str, Any], error: str
) -> None:
    with pytest.raises(MessageError) as raised:
        server_message(message)
    assert str(raised.value) == error
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "switch", "workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"type": "switch", "workers": 1, "loader": 3}, "loader must be a name, got 3"),
        ({"type": "switch", "workers": 1, "rank": "3"}, "rank must be an integer, got '3'"),
        ({"type": "autotune", "enabled": "yes"}, "enabled must be true or false, got 'yes'"),
        ({"type": "hello", "pid": "me"}, "pid must be an integer, got 'me'"),
        ({"type": "batch"}, "not a message from a monitor: type 'batch'"),
    ],
)
def test_a_monitors_message_with_wrong_fields_raises_the_line_the_server_refuses_with(
    message: dict[str, Any], error: str
) -> None:
    with pytest.raises(MessageError) as raised:
        client_message(message)
    assert str(raised.value) == error


def test_one_set_of_number_parsers() -> None:
    assert wire.integer({"n": 3}, "n") == 3 and wire.integer({}, "n", 0) == 0 and wire.integer({"n": None}, "n", 4) == 4
    assert wire.optional_integer({"n": None}, "n") is None and wire.optional_integer({}, "n") is None
    assert wire.number({"x": 3}, "x") == 3.0 and isinstance(wire.number({"x": 3}, "x"), float)
    assert wire.optional_number({"x": None}, "x") is None
    for bad in (True, "3", 3.5, [3]):
        with pytest.raises(MessageError):
            wire.as_int(bad, "n")
    for bad in (False, "3.5", None):
        with pytest.raises(MessageError):
            wire.as_float(bad, "x")
    with pytest.raises(MessageError, match=r"^n is missing$"):
        wire.integer({}, "n")
    with pytest.raises(MessageError, match=r"^n must be an integer, got None$"):
        wire.integer({"n": None}, "n")  # required: null is not a count


def test_words_are_their_strings() -> None:
    assert TunerState.SETTLED == "settled" and TunerState("settled") is TunerState.SETTLED
    assert {"jump": 1}[ChangeKind.JUMP] == 1 and {ChangeKind.JUMP: 1}["jump"] == 1
    assert str(ChangeKind.JUMP) == f"{ChangeKind.JUMP}" == "jump"
    assert json.dumps({"state": TunerState.OFF}) == '{"state": "off"}'
    assert MessageType("history_end") is MessageType.HISTORY_END


# ------------------------------------------------------------- the decoder


def _plain(value: Any) -> Any:
    """A view's value as the recorded JSON has it (floats to 9 places, NaN and inf as their reprs)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else round(value, 9)
    return value


def _fields(session: RemoteSession) -> dict[str, Any]:
    view = session.view()
    status = _plain(view.status)
    status.pop("elapsed_s")
    script = _plain(view.script)
    script.pop("log_tail")
    peers = {str(rank): peer.to_wire() for rank, peer in session.peers.items()}
    return {
        "records": _plain(view.store.records),
        "starts": _plain(view.store.starts),
        "summaries": _plain(view.store.summaries),
        "status": status,
        "script": script,
        "autotune": _plain(view.autotune),
        "notes": list(view.notes),
        "workload_name": view.workload_name,
        "peers": _plain(peers),
        "traceback": session.traceback,
    }


def _recorded(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["wire_long_loop", "wire_edges"])
def test_the_decoder_makes_the_same_view_of_recorded_messages_as_before(name: str) -> None:
    expected = json.loads((DATA / "wire_views.json").read_text())[name]
    session = RemoteSession(pid=os.getpid(), socket_path=Path("/nonexistent"), read_gpus=False, command=("watched",))
    session.monitor_id = "5e75f29e688b4367"  # the monitor that recorded the run (it controlled it)
    session._wire = WireDecoder(
        command=("watched",),
        server_pid=os.getpid(),
        rejections=session._reader.rejections,
        clock_of=lambda pid, threads: None,
    )
    session._wire.feed(_recorded(name))
    session._wire.end()
    session._gone = True
    for peer in expected["peers"].values():  # the message was kept whole; now its fields are
        del peer["v"]
    assert _fields(session) == expected


def test_the_decoder_alone_counts_malformed_messages_and_keeps_the_rest() -> None:
    decoder = WireDecoder(clock_of=lambda pid, threads: None)
    decoder.feed(_recorded("wire_edges"))
    assert decoder.rejections.malformed == 5  # the five composed to be malformed
    assert [info.name for info in decoder.loaders()] == ["train.py:9", "train.py:12"]
    assert decoder.selected == "train.py:9" and decoder.builtin == "resnet" and decoder.server_pid == 999999
    assert decoder.command == ("python", "train.py") and decoder.log_path == "/tmp/train.log"
    assert sorted(decoder.peers) == [2, 3] and decoder.peers[3].samples_per_s is None
    assert decoder.traceback is not None and decoder.traceback.endswith("ValueError: boom\n")
    assert (decoder.dropped, decoder.script_dropped, decoder.notice) == (6, 3, (4, "refused: watching only"))
    tuner = decoder.autotune_view()
    assert tuner is not None and (tuner.state, tuner.workers, tuner.ceiling) == (TunerState.SETTLED, 2, 612.25)
    assert [c.kind for c in tuner.changes] == [ChangeKind.JUMP, ChangeKind.SETTLE]
    assert decoder.select_next() == "train.py:12" and decoder.chosen


def test_a_monitor_is_told_once_in_one_line_that_the_script_speaks_a_newer_protocol(runtime_dir: Path) -> None:
    from loadertop.core.protocol.runtime import listen, run_socket_path

    path = run_socket_path()
    listener = listen(path)
    listener.setblocking(True)
    listener.settimeout(10)
    session = RemoteSession(pid=os.getpid(), socket_path=path, read_gpus=False, control=False)
    session.start()
    try:
        conn, _ = listener.accept()
        newer = b'{"v": %d, "type": "hello", "pid": 1}\n' % (VERSION + 1)
        conn.sendall(newer + newer)
        wait_for(lambda: session.view().script.notice == (1, newer_text(VERSION + 1)), 10)
        conn.sendall(newer)
        conn.sendall(encode_message(Refused("a later line of this version")))
        wait_for(lambda: session.view().script.notice[1] == "refused: a later line of this version", 10)
        assert session.view().script.notice[0] == 2  # the newer version was said once
        assert session.view().script.rejected == 3
        conn.close()
    finally:
        session.close()
        listener.close()
