"""Helpers shared by the tests: poll a condition (never sleep a fixed time and hope), check --record lines."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadertop.core.measure.procs import child_processes
from loadertop.core.protocol.records import SCHEMA_PATH


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


@functools.cache
def _record_validator() -> Any:
    import jsonschema  # the tests' only: loadertop ships the schema and never validates with it

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def record_schema_errors(line: dict[str, Any]) -> list[str]:
    """Why ``line`` (one ``--record`` object) does not follow ``record.schema.json``: empty when it does."""
    return [f"{'/'.join(map(str, error.absolute_path)) or '(line)'}: {error.message}"
            for error in _record_validator().iter_errors(line)]


def assert_records_follow_the_schema(path: Path) -> list[dict[str, Any]]:
    """Every line of the ``--record`` file ``path`` is a JSON object that follows the schema; returns them."""
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    assert lines, f"{path} is empty"
    wrong = {number: errors for number, line in enumerate(lines, 1) if (errors := record_schema_errors(line))}
    assert not wrong, f"{path}: lines not in the record schema: {dict(list(wrong.items())[:5])}"
    return lines
