"""The loss curve (and accuracy) over the whole run, marked at every change of worker count."""

from __future__ import annotations

from rich.text import Text

from loadertop.tui.plot import loss_chart
from loadertop.tui.widgets.base import ViewWidget


class LossChart(ViewWidget):
    """A braille line plot of the loss, accuracy as ``•``, ``▼Nw`` where the run switched to N workers."""

    follows = "store"
    every_ticks = 4

    def render(self) -> Text:
        if self.view is None:
            return Text("")
        store = self.view.store
        return loss_chart(store.records, store.starts, self.content_size.width, self.content_size.height)
