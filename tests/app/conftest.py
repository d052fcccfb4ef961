"""Fixtures for the app tests: a recorded session served by ReplaySession (the fake engine)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loadertop.core.sessions.replay import ReplaySession, load_view
from loadertop.core.sessions.session import SessionView

RECORDED = Path(__file__).resolve().parent.parent / "data" / "session.json"


@pytest.fixture(scope="session")
def recorded_view() -> SessionView:
    """A real run of the built-in workload (0 -> 1 -> 4 -> 2 workers), saved at step 300 with 2 workers running."""
    return load_view(RECORDED)


@pytest.fixture
def replay(recorded_view: SessionView) -> ReplaySession:
    return ReplaySession(dataclasses.replace(recorded_view))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--snapshot-update", action="store_true", help="rewrite the SVG snapshots from this run")


SCRIPT_RECORDED = Path(__file__).resolve().parent.parent / "data" / "script_session.json"


@pytest.fixture(scope="session")
def script_view() -> SessionView:
    """A real run of tests/scripts/long_loop.py under the monitor (0 -> 2 -> 1 workers), saved at step 600."""
    return load_view(SCRIPT_RECORDED)


@pytest.fixture
def script_replay(script_view: SessionView) -> ReplaySession:
    return ReplaySession(dataclasses.replace(script_view))


AUTOTUNE_RECORDED = Path(__file__).resolve().parent.parent / "data" / "autotune_session.json"


@pytest.fixture(scope="session")
def autotune_view() -> SessionView:
    """A real run of the calibrated storage-bound workload from 0 workers with autotune on, saved once it settled
    (``screenshots/record_autotune_session.py``): the tuner's changes, their reasons and its model's curve."""
    return load_view(AUTOTUNE_RECORDED)


@pytest.fixture
def autotune_replay(autotune_view: SessionView) -> ReplaySession:
    return ReplaySession(dataclasses.replace(autotune_view))
