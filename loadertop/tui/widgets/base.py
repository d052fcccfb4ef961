"""The base of every panel: a widget that renders the latest ``SessionView``."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loadertop.core.measure.system import SystemSnapshot
from loadertop.core.sessions.view import SessionView


class ViewWidget(Widget):
    """A widget whose ``render`` is a pure function of ``view`` and its size.

    The app hands a new view only when the part the widget follows has changed
    (``follows``) and at most every ``every_ticks`` pulls: drawing is the monitor's
    main cost, and the machine's CPU belongs to training.
    """

    follows: ClassVar[str] = "store"
    """``"store"`` (batches and summaries), ``"system"`` (the sampler) or ``"status"`` (every pull)."""
    every_ticks: ClassVar[int] = 1
    """Redraw at most every this many pulls of the app's timer."""
    tick_phase: ClassVar[int] = 0
    """Which of those pulls: the heavy panels take turns, so no frame draws two of them and a key
    press never waits behind more than one."""

    def wants(self, view: SessionView, tick: int) -> bool:
        """Whether ``view`` is news to this widget on pull number ``tick``."""
        old = self.view
        if old is None or self.follows == "status":
            return True
        if view.status.state != old.status.state or view.status.config != old.status.config:
            return True  # a restart, a pause, the end of the run: show it at once
        if (tick + self.tick_phase) % self.every_ticks:
            return False
        if self.follows == "store":
            return view.store.version != old.store.version
        return view.system is not old.system

    view: reactive[SessionView | None] = reactive(None, always_update=True)
    """The session as last pulled by the app (assigned, never mutated); None before the first."""


class SystemPanel(ViewWidget):
    """A panel drawn from the latest system sample; says "sampling…" until the first."""

    follows = "system"

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        view = self.view
        if view is None or view.system is None:
            text.append("sampling…", "dim")
            return text
        self.draw(text, view, view.system)
        return text

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        """Append the panel's content for ``system`` to ``text``."""
        raise NotImplementedError
