"""The loss curve (and accuracy) over the whole run, marked at every change of worker count."""

from __future__ import annotations

import math

from rich.text import Text

from loadertop.tui.plot import loss_chart
from loadertop.tui.widgets.base import ViewWidget


class LossChart(ViewWidget):
    """A braille line plot of the loss, accuracy as ``•``, ``▼Nw`` where the run switched to N workers."""

    follows = "store"
    every_ticks = 4
    tick_phase = 1  # on odd pulls: the load chart draws on even ones

    def render(self) -> Text:
        if self.view is None:
            return Text("")
        store = self.view.store
        script = self.view.script
        if script is not None and store.records and not any(math.isfinite(r.loss) for r in store.records):
            text = Text("no loss from the script yet: add one line after the loss is computed,\n", "dim")
            text.append("    loadertop.log(loss=loss)", "bold")
            text.append(
                "\n(import loadertop; a tensor is fine: it is read off the training thread,\n"
                "without a device sync; outside loadertop run it does nothing)",
                "dim",
            )
            return text
        return loss_chart(store.records, store.starts, self.content_size.width, self.content_size.height)
