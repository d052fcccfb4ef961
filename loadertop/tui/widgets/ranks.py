"""Every rank of a torchrun job side by side: its workers, wait for data, step and speed; the input straggler named."""

from __future__ import annotations

import math

from rich.text import Text

from loadertop.core.sessions.view import SessionView
from loadertop.tui.widgets.base import ViewWidget


def _ms(value: float) -> str:
    return "     -" if math.isnan(value) else f"{value:6.1f}"


class RanksPanel(ViewWidget):
    """One row per rank (``▶`` the one shown and commanded, ``!`` the straggler), then the verdict in words."""

    follows = "status"

    def wants(self, view: SessionView, tick: int) -> bool:
        old = self.view
        if old is None or old.script is None or view.script is None:
            return True
        return (view.script.ranks, view.script.straggler, view.script.selected_rank) != (
            old.script.ranks,
            old.script.straggler,
            old.script.selected_rank,
        )

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        script = self.view.script if self.view is not None else None
        if script is None or not script.ranks:
            return text
        straggler = script.straggler
        text.append("   rank  local      pid  workers  load ms  step ms  samples/s   batches", "bold")
        for info in script.ranks:
            if not info.watched:
                text.append(f"\n   {info.rank:>4} {info.local_rank:>6}        -  {info.ended}", "dim")
                continue
            mark = "▶" if info.rank == script.selected_rank else " "
            flag = "!" if straggler is not None and straggler.rank == info.rank else " "
            speed = "        -" if math.isnan(info.samples_per_s) else f"{info.samples_per_s:9,.0f}"
            row = (
                f"\n{mark}{flag} {info.rank:>4} {info.local_rank:>6} {info.pid:>8} {info.num_workers:>8}  "
                f"{_ms(info.load_ms)}   {_ms(info.step_ms)}  {speed} {info.step:>9}"
            )
            text.append(row, "bold red" if flag == "!" else "")
            if info.ended:
                text.append(f"  {info.ended}", "dim")
            elif info.host:
                text.append(f"  on {info.host} (another node)", "dim")
        if script.other_nodes:
            text.append(
                f"\n{script.other_nodes} more ranks on other nodes: a monitor on their node watches them", "dim"
            )
        if straggler is not None:
            text.append(
                f"\ninput straggler: rank {straggler.rank}, score {straggler.score:.2f} (the share of "
                "every rank's iteration lost waiting for its data)",
                "bold red",
            )
            for part in straggler.evidence.split("; "):  # two short lines rather than one cut off
                text.append(f"\n  {part}")
        else:
            text.append("\nno input straggler: every rank waits about as long for its data", "green")
        return text
