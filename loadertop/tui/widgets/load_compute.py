"""Load vs compute for the latest batches: the chart, rolling mean and p95, and the verdict in words."""

from __future__ import annotations

import math

from rich.text import Text

from loadertop.core.policy.advice import recent_stats
from loadertop.tui.plot import COMPUTE_STYLE, LOAD_STYLE, load_compute_chart
from loadertop.tui.widgets.base import ViewWidget

STATS_ROWS = 4


def _ms(value: float) -> str:
    return "   -" if math.isnan(value) else f"{value:6.1f}"


class LoadComputePanel(ViewWidget):
    """Stacked bars per batch (load ``█``, compute ``░``), then the figures of the running configuration."""

    follows = "store"
    every_ticks = 2

    def render(self) -> Text:
        if self.view is None:
            return Text("")
        width, height = self.content_size.width, self.content_size.height
        records = self.view.store.records
        stats = recent_stats(records, self.view.status.config.key)
        text = Text(no_wrap=True, overflow="ellipsis")
        compact = height < 10 or width < 44
        chart_h = height - (3 if compact else STATS_ROWS)
        if chart_h >= 3:
            text.append_text(load_compute_chart(records[-width:], width, chart_h))
            text.append("\n")
        if compact:
            text.append("█", LOAD_STYLE)
            text.append(f" {_ms(stats.load_ms_mean).strip()} p95 {_ms(stats.load_ms_p95).strip()}  ")
            text.append("░", COMPUTE_STYLE)
            text.append(f" {_ms(stats.compute_ms_mean).strip()} p95 {_ms(stats.compute_ms_p95).strip()} ms\n")
        else:
            text.append("█ load    ", LOAD_STYLE)
            text.append(f"mean {_ms(stats.load_ms_mean)}  p95 {_ms(stats.load_ms_p95)} ms\n")
            text.append("░ compute ", COMPUTE_STYLE)
            text.append(f"mean {_ms(stats.compute_ms_mean)}  p95 {_ms(stats.compute_ms_p95)} ms\n")
        verdict = stats.verdict
        if verdict is None:
            text.append("measuring… (warm-up batches after a start are left out)", "dim")
        else:
            style = "bold red" if verdict.input_bound else "bold green"
            text.append(verdict.label, style)
            share = f"{verdict.load_share * 100:.0f}%"
            for sentence in (f": the step waits for data {share} of the time", f": waits for data {share} of the time"):
                if len(verdict.label) + len(sentence) <= width:
                    text.append(sentence)
                    break
            else:
                text.append(f":\nwaits for data {share} of the time")
        return text
