"""The parts a ``RemoteSession`` wires, each alone: how the script's end is said, its log tail, its socket unseen."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadertop.core.protocol.messages import MonitorHello, Switch
from loadertop.core.sessions.log_tail import LogTail
from loadertop.core.sessions.script_connection import ScriptConnection
from loadertop.core.sessions.script_state import ended_text, failed


def test_the_end_is_said_by_exit_code_or_signal_once_it_was_seen() -> None:
    assert ended_text(False, 3) is None  # not seen yet: it still runs, as far as the view goes
    assert ended_text(True, None) == "the script has ended"  # attached: no exit code to read
    assert ended_text(True, 0) == "the script exited with code 0"
    assert ended_text(True, 130) == "the script was ended by signal 2 SIGINT"
    assert ended_text(True, 128 + 200) == "the script was ended by signal 200"


def test_a_script_failed_unless_its_only_exception_is_the_interrupt_stop_sent() -> None:
    interrupted = "Traceback (most recent call last):\n  ...\nKeyboardInterrupt\n"
    assert failed(interrupted, stopping=True, exit_code=130) is False
    assert failed(interrupted, stopping=False, exit_code=130) is True
    assert failed("Traceback ...\nValueError: boom\n", stopping=True, exit_code=1) is True
    assert failed(None, stopping=True, exit_code=143) is False  # SIGTERM after stop's SIGINT: ours
    assert failed(None, stopping=False, exit_code=3) is True
    assert failed(None, stopping=False, exit_code=0) is False and failed(None, stopping=False, exit_code=None) is False


def test_the_log_tail_keeps_whole_lines_as_text_a_progress_bar_at_its_last_state(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    tail = LogTail(size=3)
    tail.read(str(log))  # not there yet
    tail.read(None)
    assert tail.lines() == ()
    log.write_bytes(b"one\n\x1b[31mred\x1b[0m\tx\r\n 10%\r 50%\r100%\nhal")
    tail.read(str(log))
    assert tail.lines() == ("one", "red x", "100%")
    with log.open("ab") as file:
        file.write(b"f\nfive\n")
    tail.read(str(log))
    assert tail.lines() == ("100%", "half", "five")  # the partial line completed; the oldest dropped


def test_a_connection_to_no_socket_stays_unconnected_and_refuses_to_send(tmp_path: Path) -> None:
    seen: list[object] = []
    connection = ScriptConnection(
        pid=1,
        socket_path=tmp_path / "none.sock",
        hello=lambda: MonitorHello(1, "m", True),
        on_message=seen.append,
        on_newer=seen.append,
    )
    assert connection.candidates() == [tmp_path / "none.sock"]
    connection.connect()
    connection.drain(0.01)
    assert not connection.connected and seen == []
    with pytest.raises(OSError, match="not connected"):
        connection.send(Switch(2, "train"))
