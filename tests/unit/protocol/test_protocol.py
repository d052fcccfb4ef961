"""The protocol: JSON lines with limits, the per-user socket directory, and the run's server."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadertop.core.probe.server import CLIENT_BUFFER_BYTES, RunServer
from loadertop.core.protocol.codec import MAX_LINE_BYTES, VERSION, LineReader, ProtocolError, encode, newer_text
from loadertop.core.protocol.messages import CLIENT_TYPES, SERVER_TYPES, Batch, Hello, LoaderUpdate, Log
from loadertop.core.protocol.runtime import live_runs, read_hello, run_socket_path
from loadertop.core.protocol.runtime import runtime_dir as find_runtime_dir
from tests.helpers import Client, eventually, wait_for

# ------------------------------------------------------------------ codec


def test_a_message_is_one_versioned_json_line_without_nan() -> None:
    line = encode("batch", load_ms=1.5, step_ms=float("nan"), pids=(1, 2))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": VERSION, "type": "batch", "load_ms": 1.5, "step_ms": None, "pids": [1, 2]}


def test_a_message_over_the_limit_is_not_encoded() -> None:
    with pytest.raises(ProtocolError):
        encode("log", text="x" * MAX_LINE_BYTES)


def test_the_reader_accepts_split_lines_and_counts_every_kind_of_bad_one() -> None:
    reader = LineReader(known=SERVER_TYPES)
    good = encode("batch", step=1)
    bad = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"v": 1}\n',
        b'{"v": 99, "type": "batch"}\n',
        b'{"v": 1, "type": "pickle"}\n',
        b"\xff\xfe\n",
    ]
    stream = good[:5] + good[5:] + b"".join(bad) + b"\n" + good
    messages = []
    for i in range(0, len(stream), 7):  # arbitrary chunking: lines cross reads
        messages.extend(reader.feed(stream[i : i + 7]))
    assert [m["step"] for m in messages] == [1, 1]
    r = reader.rejections
    assert (r.malformed, r.wrong_version, r.unknown_type, r.oversized) == (4, 1, 1, 0)
    assert r.total == 6


def test_a_line_of_a_newer_version_is_refused_in_one_line_that_says_so() -> None:
    reader = LineReader(known=SERVER_TYPES)
    newer = b'{"v": %d, "type": "batch", "step": 1}\n' % (VERSION + 1)
    assert list(reader.feed(newer + b'{"v": true, "type": "batch"}\n' + encode("batch", step=2))) == [
        {"v": VERSION, "type": "batch", "step": 2}
    ]
    assert reader.rejections.wrong_version == 2 and reader.rejections.newer == VERSION + 1
    assert list(reader.feed(newer)) == [] and reader.rejections.last == newer_text(VERSION + 1)
    assert reader.rejections.last == (
        f"the other side speaks protocol version {VERSION + 1}, this loadertop "
        f"{VERSION}: run the same loadertop version on both sides"
    )


def test_an_oversized_line_is_dropped_whole_and_the_next_one_read() -> None:
    reader = LineReader(known=CLIENT_TYPES)
    huge = b'{"v": 1, "type": "switch", "x": "' + b"a" * (3 * MAX_LINE_BYTES) + b'"}\n'
    after = encode("switch", loader=None, workers=2)
    messages = []
    for i in range(0, len(huge), 50_000):
        messages.extend(reader.feed(huge[i : i + 50_000]))
    messages.extend(reader.feed(after))
    assert reader.rejections.oversized == 1
    assert [m["workers"] for m in messages] == [2]


# ---------------------------------------------------------- runtime dir


def test_the_runtime_dir_and_sockets_are_the_users_alone(runtime_dir: Path) -> None:
    server = RunServer(run_socket_path(), Hello(os.getpid(), ("x",), started=1.0), lambda n, w, r: None)
    try:
        assert find_runtime_dir() == runtime_dir
        assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
        sock = runtime_dir / f"{os.getpid()}.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        info = read_hello(sock)
        assert info is not None and info.pid == os.getpid() and info.command == ("x",)
    finally:
        server.close()
    assert not (runtime_dir / f"{os.getpid()}.sock").exists()


def test_a_stale_socket_of_a_killed_run_is_found_and_removed(runtime_dir: Path) -> None:
    # A process that listens, then is killed with SIGKILL: its socket file stays behind.
    code = (
        "import os, time; from loadertop.core.protocol.runtime import listen, run_socket_path; "
        "s = listen(run_socket_path()); print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stale = runtime_dir / f"{proc.pid}.sock"
    assert stale.exists()
    # A live one that answers stays.
    server = RunServer(run_socket_path(), Hello(os.getpid(), started=2.0), lambda n, w, r: None)
    try:
        runs = live_runs()
        assert [r.pid for r in runs] == [os.getpid()]
        assert not stale.exists()
    finally:
        server.close()
    assert live_runs() == []


# ------------------------------------------------------------ the server


@pytest.fixture
def served(runtime_dir: Path) -> Any:
    switches: list[tuple[str | None, int]] = []

    def on_switch(name: str | None, workers: int, rank: int | None) -> str | None:
        switches.append((name, workers) if rank is None else (name, workers, rank))
        return None if name in (None, "train") else f"no DataLoader named {name!r}"

    server = RunServer(run_socket_path(), Hello(os.getpid(), ("t",), started=0.0), on_switch)
    server.switches = switches  # type: ignore[attr-defined]
    yield server
    server.close()


def batch(step: int) -> Batch:
    """A batch of the loader ``train``."""
    return Batch(
        loader="train",
        step=step,
        epoch=1,
        batch=step,
        num_workers=0,
        samples=8,
        load_ms=1.0,
        step_ms=2.0,
        time=float(step),
    )


def test_a_monitor_gets_the_hello_the_loaders_and_the_history_then_what_follows(served: RunServer) -> None:
    served.publish(LoaderUpdate("train", 0))
    for step in range(1, 4):
        served.publish(batch(step))
    served.publish(LoaderUpdate("train", 2))  # only the latest state of a loader is replayed
    client = Client(served.path)
    client.read_until(lambda m: m["type"] == "history_end")
    assert [m["type"] for m in client.messages] == ["hello", "loader", "batch", "batch", "batch", "history_end"]
    assert client.messages[1]["num_workers"] == 2
    served.publish(batch(4))
    assert client.read_until(lambda m: m["type"] == "batch" and m["step"] == 4)
    client.close()


def test_only_the_first_monitor_that_asks_controls_and_the_others_are_told_who_does(served: RunServer) -> None:
    first = Client(served.path, control=True)
    first.read_until(lambda m: m["type"] == "control")
    second = Client(served.path, control=True)
    refused = second.read_until(lambda m: m["type"] == "refused")
    assert f"pid {os.getpid()} controls" in refused["reason"]
    second.send("switch", loader=None, workers=3)  # a watcher's switch is refused, never applied
    assert second.read_until(lambda m: m["type"] == "refused" and m is not refused)
    first.send("switch", loader=None, workers=2)
    first.send("switch", loader="val", workers=1)
    assert "no DataLoader named 'val'" in first.read_until(lambda m: m["type"] == "refused")["reason"]
    first.send("switch", loader=None, workers=-1)
    assert "integer >= 0" in first.read_until(lambda m: m["type"] == "refused" and "integer" in m["reason"])["reason"]
    first.send("switch", loader=None, workers=1, rank=3)  # a rank of another node: for the handler to pass on
    first.send("switch", loader=None, workers=1, rank="3")
    assert (
        "rank must be an integer, got '3'"
        in first.read_until(lambda m: m["type"] == "refused" and "rank" in m["reason"])["reason"]
    )
    assert served.switches == [(None, 2), ("val", 1), (None, 1, 3)]  # type: ignore[attr-defined]
    first.close()  # control is free again: the other monitor hears it and may take it
    assert second.read_until(lambda m: m["type"] == "control" and m["controller"] is None)
    second.close()


def test_a_monitor_of_a_newer_version_is_refused_once_in_one_line(served: RunServer) -> None:
    newer = Client(served.path)
    line = b'{"v": %d, "type": "switch", "workers": 2}\n' % (VERSION + 1)
    newer.sock.sendall(line + line)
    refused = newer.read_until(lambda m: m["type"] == "refused")
    assert refused["reason"] == newer_text(VERSION + 1)
    newer.send("switch", workers=1)  # one of this version after them: refused for its own reason, the newer not again
    assert newer.read_until(lambda m: m["type"] == "refused" and m is not refused)["reason"] == (
        "this monitor only watches"
    )
    assert [m["reason"] for m in newer.messages if m["type"] == "refused"] == [
        refused["reason"],
        "this monitor only watches",
    ]
    assert served.switches == []  # type: ignore[attr-defined]
    newer.close()


def test_garbage_from_a_monitor_is_counted_and_the_server_goes_on(served: RunServer) -> None:
    rogue = Client(served.path)
    rogue.sock.sendall(b"\x80\x04pickle?\n" + b"{" * (MAX_LINE_BYTES + 10) + b"\n" + b'{"v":1,"type":"exec"}\n')
    fine = Client(served.path, control=True)
    assert fine.read_until(lambda m: m["type"] == "control")
    served.publish(batch(9))
    assert fine.read_until(lambda m: m["type"] == "batch")
    rogue.close()
    fine.close()


def test_a_monitor_that_stops_reading_never_blocks_publish_and_learns_what_it_missed(served: RunServer) -> None:
    stalled = Client(served.path)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = "x" * 1000
    count = 3 * CLIENT_BUFFER_BYTES // 1000
    started = time.monotonic()
    for step in range(count):
        served.publish(Log("train", step, {"pad": payload}))
    publish_s = time.monotonic() - started
    assert publish_s < 20  # the bound is memory, not time: nothing waited on the socket (~0.5 s here)
    assert eventually(lambda: served.monitors == 1)
    # Now it reads: it gets what fitted, then a "dropped" count, then new messages.
    got: list[dict[str, Any]] = []
    while not any(m["type"] == "dropped" for m in got):
        got.extend(stalled.reader.feed(stalled.sock.recv(1 << 20)))
    served.publish(Log("train", -1))
    while not any(m.get("step") == -1 for m in got):
        got.extend(stalled.reader.feed(stalled.sock.recv(1 << 20)))
    dropped = sum(m["count"] for m in got if m["type"] == "dropped")
    received = sum(1 for m in got if m["type"] == "log" and m["step"] >= 0)
    assert dropped > 0 and received + dropped == count
    stalled.close()


def test_the_server_closes_cleanly_with_monitors_connected(runtime_dir: Path) -> None:
    server = RunServer(run_socket_path(), Hello(os.getpid(), started=0.0), lambda n, w, r: None)
    client = Client(server.path)
    client.read_until(lambda m: m["type"] == "history_end")
    server.close()
    wait_for(lambda: client.sock.recv(1) == b"", 5)
    assert not server.path.exists()


def test_a_live_run_that_does_not_answer_in_time_keeps_its_socket(runtime_dir: Path) -> None:
    # A rank busy importing torch may not answer within the hello's timeout: it is left out of this
    # listing, never has its socket removed (no monitor could attach to it again).
    from loadertop.core.protocol.runtime import listen

    path = run_socket_path()  # this process's: alive
    mute = listen(path)  # listens, never accepts: a hello that does not come
    try:
        assert live_runs() == [] and path.exists()
    finally:
        mute.close()
    assert live_runs() == [] and not path.exists()  # now nobody listens: stale, removed
