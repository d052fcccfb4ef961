"""The comparison table: one row per configuration tried in this run, the fastest marked."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

from loadertop.core.measure.store import ConfigSummary
from loadertop.core.policy.advice import recommend, speed_cell, verdict
from loadertop.core.policy.report import settings_differ
from loadertop.tui.widgets.base import ViewWidget


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Column:
    """A table column: heading, width, how to read a summary, and when it is dropped for room."""

    heading: str
    width: int
    cell: Callable[[ConfigSummary], str]
    drop_order: int  # 0 never; higher numbers go first when the table is too wide


COLUMNS = (
    Column("workers", 7, lambda s: str(s.num_workers), 0),
    Column("config", 14, lambda s: s.key.split(" ", 1)[1] if " " in s.key else "", 6),
    Column("batches", 7, lambda s: str(s.batches), 8),
    Column("load ms", 8, lambda s: _num(s.load_ms_mean), 0),
    Column("load p95", 8, lambda s: _num(s.load_ms_p95), 4),
    Column("compute ms", 10, lambda s: _num(s.compute_ms_mean), 0),
    Column("iter ms", 8, lambda s: _num(s.iter_ms_mean), 3),
    Column("samples/s", 12, speed_cell, 0),
    Column("start-up ms", 11, lambda s: _num(s.startup_ms, 0), 2),
    Column(
        "CPU/sample", 10, lambda s: "-" if math.isnan(s.cpu_s_per_sample) else f"{s.cpu_s_per_sample * 1000:.2f} ms", 1
    ),
    Column("CPU %", 6, lambda s: _num(s.cpu_percent, 0), 1),
    Column("PSS MB", 7, lambda s: _num(s.pss_mb, 0), 1),
    Column("USS/wkr", 7, lambda s: _num(s.worker_uss_mb, 0), 1),
    Column("+MB/wkr", 7, lambda s: _num(s.extra_mb_per_worker, 0), 5),
    Column("USS MB/min", 10, lambda s: _num(s.worker_uss_growth_mb_per_min, 1), 5),
    Column("sum RSS", 7, lambda s: _num(s.rss_mb, 0), 9),
    Column("verdict", 13, lambda s: v.label if (v := verdict(s.load_ms_mean, s.compute_ms_mean)) else "-", 7),
)
MARK_WIDTH = 3  # ★ fastest, ◆ recommended, ▶ running
PSS_HEADINGS = frozenset({"PSS MB", "USS/wkr", "+MB/wkr", "USS MB/min"})
"""The columns of memory as the kernel accounts it: left out where no configuration has it (an older recording)."""
RSS_ONLY = Column("sum RSS", 7, lambda s: _num(s.rss_mb, 0), 1)
"""Then the summed RSS is the memory figure shown, named as what it is."""


def fit_columns(width: int, *, show_config: bool = True, pss: bool = True) -> list[Column]:
    """The columns that fit ``width`` cells, dropping the least needed first (and "config" when all agree;
    without ``pss``, the summed RSS stands in for the PSS and USS columns)."""
    columns = [c for c in COLUMNS if show_config or c.heading != "config"]
    if not pss:
        columns = [RSS_ONLY if c.heading == RSS_ONLY.heading else c for c in columns if c.heading not in PSS_HEADINGS]
    while columns and MARK_WIDTH + sum(c.width + 1 for c in columns) > width:
        victim = max(columns, key=lambda c: c.drop_order)
        if victim.drop_order == 0:
            break
        columns.remove(victim)
    return columns


class ComparisonTable(ViewWidget):
    """Every configuration of this run side by side; ``★`` fastest, ``◆`` recommended, ``▶`` running now."""

    follows = "store"
    every_ticks = 4
    tick_phase = 3  # on odd pulls: the load chart draws on even ones

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        view = self.view
        if view is None:
            return text
        summaries = view.store.summaries
        columns = fit_columns(
            self.content_size.width,
            show_config=settings_differ(summaries),
            pss=any(not math.isnan(s.pss_mb_peak) for s in summaries) or not summaries,
        )
        text.append(" " * MARK_WIDTH)
        text.append(" ".join(c.heading.rjust(c.width) for c in columns), "bold")
        text.append("\n")
        if not summaries:
            text.append("  no batches yet: each worker count you try gets a row here; s sweeps them all", "dim")
            return text
        advice = view.advice or recommend(summaries)
        running = view.status.config.key
        ordered = sorted(summaries, key=lambda s: (s.num_workers, s.key))
        room = self.content_size.height - 1  # below the heading
        if len(ordered) > room:  # keep the running, fastest and recommended rows in sight
            keep = [s for s in ordered if advice.is_fastest(s) or advice.is_recommended(s) or s.key == running]
            others = [s for s in ordered if s not in keep][: max(room - len(keep), 0)]
            ordered = sorted(keep + others, key=lambda s: (s.num_workers, s.key))
        for summary in ordered:
            best, chosen = advice.is_fastest(summary), advice.is_recommended(summary)
            mark = ("★" if best else " ") + ("◆" if chosen else " ") + ("▶" if summary.key == running else " ")
            style = "bold green" if chosen else "green" if best else ("bold" if summary.key == running else "")
            text.append(mark, "bold yellow")
            text.append(" ".join(c.cell(summary).rjust(c.width) for c in columns), style)
            text.append("\n")
        spare = room - len(ordered)
        if spare >= 1:
            text.append(
                "★ fastest  ◆ recommended  ▶ running  ± two standard errors  CPU: the whole process tree, "
                "accounted (100% = one core)  PSS: the tree's memory, each page once; USS: a worker's own",
                "dim",
            )
        if spare >= 2:
            text.append("\n◆ ", "bold yellow")
            text.append(advice.reason)
        if spare >= 3 and advice.warnings:
            text.append("\n! ", "bold red")
            more = f" (+{len(advice.warnings) - 1} more)" if len(advice.warnings) > 1 else ""
            text.append(advice.warnings[0] + more)
        return text
