"""Beside the comparison table: the model's predicted samples/s per worker count, and the autotuner's changes.

The curve says why a count was chosen: one bar per worker count (``●`` measured, ``▶`` running,
``┊`` the CPU ceiling), from the tuner's model while autotune is on (or has changed anything),
else from the same model fitted on the table. Below it, the tuner's latest changes, each with
its reason, newest last. Where rows are few, the latest change and the counts that matter
(running, fastest, measured) come first.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from rich.text import Text

from loadertop.core.policy.autotune import Change
from loadertop.core.protocol.config import describe_workers
from loadertop.core.protocol.messages import ChangeKind, TunerState
from loadertop.core.sessions.view import SessionView
from loadertop.tui.plot import meter
from loadertop.tui.widgets.base import ViewWidget

MIN_SCREEN_WIDTH = 80
"""Narrower terminals leave the whole row to the comparison table."""
CEILING_ON_SCALE = 1.25
"""A CPU ceiling at most this far above the best prediction is drawn on the bars' scale (``┊``)."""
KIND_STYLES = {
    ChangeKind.JUMP: "bold cyan",
    ChangeKind.STEP: "bold",
    ChangeKind.SETTLE: "bold green",
    ChangeKind.RETUNE: "bold yellow",
    ChangeKind.MEMORY: "bold red",
}

Curve = tuple[tuple[int, float | None], ...]


def tuning(view: SessionView) -> bool:
    """Whether the view's tuner is on or has changed anything (then its curve is the one shown)."""
    tuner = view.autotune
    return tuner is not None and (tuner.state != TunerState.OFF or bool(tuner.changes))


def shown_curve(view: SessionView) -> tuple[Curve, float]:
    """The predicted curve and CPU ceiling to draw: the tuner's model, else the advice's (same model, the table)."""
    tuner = view.autotune
    if tuning(view) and tuner is not None and tuner.predicted:
        return tuner.predicted, tuner.ceiling
    advice = view.advice
    if advice is not None and advice.predicted:
        return advice.predicted, advice.ceiling
    return (), math.inf


def has_content(view: SessionView) -> bool:
    """Whether the panel has anything to say (else the table keeps the whole row)."""
    return tuning(view) or bool(shown_curve(view)[0])


def change_rows(change: Change, width: int) -> list[Text]:
    """``0 -> 3 workers: load 22.3 ms > step 7.8 ms ...``: the move first (never cropped), the reason wrapped."""
    if change.to_workers != change.from_workers:
        head = f"{change.from_workers} -> {describe_workers(change.to_workers)}"
    else:
        head = "settled" if change.kind == ChangeKind.SETTLE else str(change.kind)
    body = change.reason.removeprefix("settled: ") if change.kind == ChangeKind.SETTLE else change.reason
    lines = textwrap.wrap(f"{head}: {body}", max(width, 8), subsequent_indent="  ", break_on_hyphens=False)
    rows = [Text(line, no_wrap=True, overflow="crop") for line in lines]
    if rows:
        rows[0].stylize(KIND_STYLES.get(change.kind, "bold"), 0, len(head))
    return rows


def pick_counts(curve: Curve, rows: int, first: Sequence[int], then: Sequence[int] = ()) -> list[int]:
    """At most ``rows`` of the curve's counts: ``first``, the fewest workers predicted fastest, ``then`` the nearest."""
    counts = [n for n, _ in curve]
    if len(counts) <= rows:
        return counts
    finite = [(n, s) for n, s in curve if s is not None and not math.isnan(s)]
    top = max((s for _, s in finite), default=math.nan)
    best = [min(n for n, s in finite if s == top)] if finite else []
    anchor = first[0] if first else counts[0]
    order = [*first, *best, *then, *sorted(counts, key=lambda n: (abs(n - anchor), n))]
    chosen: list[int] = []
    for n in order:
        if n in counts and n not in chosen:
            chosen.append(n)
    return sorted(chosen[:rows])


def curve_rows(
    curve: Curve,
    ceiling: float,
    width: int,
    rows: int,
    *,
    running: int | None,
    measured: frozenset[int],
    heading: bool,
    tuned: int | None = None,
) -> list[Text]:
    """The curve in ``rows`` rows of ``width``: an optional heading (the ceiling, the marks), then a bar a count."""
    out: list[Text] = []
    if heading:
        line = Text(no_wrap=True, overflow="crop")
        line.append("CPU ceiling ", "dim")
        line.append(f"┊ {ceiling:,.0f}" if math.isfinite(ceiling) else "not known yet", "bold magenta")
        line.append("  ● measured  ▶ running", "dim")
        out.append(line)
        rows -= 1
    if rows <= 0:
        return out
    first = [n for n in (running, tuned) if n is not None]
    counts = pick_counts(curve, rows, first, sorted(measured, reverse=True))
    values = dict(curve)
    finite = [s for s in values.values() if s is not None and not math.isnan(s)]
    best = max(finite, default=math.nan)
    top = ceiling if math.isfinite(ceiling) and best > 0 and ceiling <= CEILING_ON_SCALE * best else best
    figures = {n: _figure(values[n]) for n in counts}
    label_w = max(len(str(n)) for n in counts)
    figure_w = max(5, *(len(f) for f in figures.values()))
    bar_w = max(width - label_w - figure_w - 4, 0)
    mark_at = round(ceiling / top * bar_w) - 1 if top == ceiling and bar_w else -1
    for n in counts:
        value = values[n]
        line = Text(no_wrap=True, overflow="crop")
        line.append(f"{n:>{label_w}} ", "bold" if n == running else "")
        if bar_w:
            share = value / top * 100 if value is not None and top > 0 else math.nan
            bar = meter(share, bar_w)
            line.append(bar.rstrip(), "cyan" if n in measured else "dim cyan")
            blank = bar_w - len(bar.rstrip())
            if 0 <= mark_at < bar_w and mark_at >= bar_w - blank:
                gap = mark_at - (bar_w - blank)
                line.append(" " * gap)
                line.append("┊", "magenta")
                blank -= gap + 1
            line.append(" " * blank)
            line.append(" ")
        line.append(figures[n].rjust(figure_w), "bold" if n == running else "dim" if n not in measured else "")
        line.append(" ")
        line.append("▶" if n == running else "●" if n in measured else " ", "bold yellow")
        out.append(line)
    return out


def _figure(value: float | None) -> str:
    if value is None:
        return "memory"  # past the memory budget: not predicted
    if math.isnan(value):
        return "?"
    return f"{value:,.0f}"


class AutotunePanel(ViewWidget):
    """The predicted curve and the tuner's latest changes; shown (CSS class ``-shown``) once there is either."""

    follows = "store"
    every_ticks = 4
    tick_phase = 3  # with the comparison table it explains: the two change together

    DEFAULT_CSS = """
    AutotunePanel { display: none; width: 2fr; }
    AutotunePanel.-shown { display: block; }
    """

    def wants(self, view: SessionView, tick: int) -> bool:
        """A new state or change of the tuner is news at once; the rest follows the store."""
        old = self.view
        if old is not None and _tuner_key(view) != _tuner_key(old):
            return True
        return super().wants(view, tick)

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        view = self.view
        if view is None:
            return text
        width, height = self.content_size.width, self.content_size.height
        curve, ceiling = shown_curve(view)
        tuner = view.autotune
        changes = tuner.changes if tuning(view) and tuner is not None else ()
        if not curve and not changes:
            if tuner is not None and tuner.state != TunerState.OFF:
                workers = f" {describe_workers(tuner.workers)}" if tuner.workers is not None else " the running count"
                text.append(
                    "\n".join(
                        textwrap.wrap(
                            f"autotune on: measuring{workers} first; then the model's predicted samples/s per worker "
                            "count, and every change with its reason, show here",
                            max(width, 8),
                        )
                    ),
                    "dim",
                )
            return text
        wrapped = [change_rows(change, width) for change in changes]
        budget = _change_budget(wrapped, height, 1 + len(curve) if curve else 0)
        rows: list[Text] = []
        if curve and height - budget > 0:
            config = view.status.config
            measured = frozenset(
                s.num_workers
                for s in view.store.summaries
                if s.batches and s.config.with_workers(0) == config.with_workers(0)
            )
            curve_height = height - budget
            rows.extend(
                curve_rows(
                    curve,
                    ceiling,
                    width,
                    curve_height,
                    running=config.num_workers,
                    measured=measured,
                    heading=curve_height >= 3,
                    tuned=tuner.workers if changes and tuner is not None else None,
                )
            )
        rows.extend(_latest(wrapped, budget, width))
        for i, row in enumerate(rows):
            if i:
                text.append("\n")
            text.append_text(row)
        return text


def _tuner_key(view: SessionView) -> tuple[str, int | None, int] | None:
    tuner = view.autotune
    return (tuner.state, tuner.workers, len(tuner.changes)) if tuner is not None else None


def _change_budget(wrapped: list[list[Text]], height: int, curve_need: int) -> int:
    """Rows for the changes: what the curve leaves, but at least the latest change's (up to half the panel)."""
    if not wrapped:
        return 0
    if not curve_need:
        return height
    latest = len(wrapped[-1])
    if curve_need + latest <= height:
        return height - curve_need
    return min(latest, max(height - curve_need, (height + 1) // 2))


def _latest(wrapped: list[list[Text]], budget: int, width: int) -> list[Text]:
    """As many whole changes as fit in ``budget`` rows, newest last; the latest always, cut short if need be."""
    if budget <= 0 or not wrapped:
        return []
    chosen: list[list[Text]] = []
    used = 0
    for rows in reversed(wrapped):
        if chosen and used + len(rows) > budget:
            break
        chosen.append(rows)
        used += len(rows)
    lines = [row for rows in reversed(chosen) for row in rows]
    if len(lines) > budget:
        lines = lines[:budget]
        last = lines[-1].copy()
        last.truncate(min(len(last), max(width - 1, 0)))
        last.append("…", "dim")
        lines[-1] = last
    return lines
