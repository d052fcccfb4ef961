"""The base of every panel: a widget that renders the latest ``SessionView``."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget

from loadertop.core.session import SessionView


class ViewWidget(Widget):
    """A widget whose ``render`` is a pure function of ``view`` and its size."""

    view: reactive[SessionView | None] = reactive(None, always_update=True)
    """The session as last pulled by the app (assigned, never mutated); None before the first."""
