"""Waiting helpers shared by the tests: poll a condition, never sleep a fixed time and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from loadertop.core.procs import child_processes


def eventually(condition: Callable[[], object], timeout: float = 5.0, poll_s: float = 0.02) -> bool:
    """True as soon as ``condition()`` is; False if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Fail the test unless ``condition()`` becomes true within ``timeout`` seconds."""
    assert eventually(condition, timeout), f"timed out after {timeout} s"


def no_children_left(timeout: float = 5.0) -> bool:
    """True once this process has no live child processes (Python's own helpers aside)."""
    return eventually(lambda: not child_processes(), timeout, poll_s=0.05)


def made_at(script: str, text: str) -> str:
    """The name loadertop gives a loader that ``script`` (a path from the repository root) makes at the line
    holding ``text``: ``file:line``."""
    path = Path(__file__).resolve().parents[1] / script
    lines = path.read_text().splitlines()
    return f"{path.name}:{next(i for i, line in enumerate(lines, 1) if text in line)}"
