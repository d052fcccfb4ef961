"""Text charts drawn from records: a braille line plot, stacked bars and meters, as rich Text.

Pure functions of their inputs and a size, so the widgets stay thin and the charts
are tested without an app. Every chart reads without colour: the loss is braille,
the accuracy ``•``, load ``█`` and compute ``░``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from loadertop.core.protocol.records import BatchRecord, StartEvent

LOSS_STYLE = "bold cyan"
ACCURACY_STYLE = "yellow"
MARKER_STYLE = "magenta"
LOAD_STYLE = "red"
COMPUTE_STYLE = "green"
AXIS_STYLE = "dim"

_BRAILLE_BASE = 0x2800
# Dot bits of a braille cell, indexed [x][y] with x in 0..1 and y in 0..3 from the top.
_BRAILLE_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_EIGHTHS = " ▁▂▃▄▅▆▇█"
ACCURACY_WINDOW = 20


class BrailleCanvas:
    """A grid of braille cells, 2 x 4 dots each, with (0, 0) at the top left."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns = columns
        self.rows = rows
        self._cells = [[0] * columns for _ in range(rows)]

    @property
    def width(self) -> int:
        """Dots across."""
        return self.columns * 2

    @property
    def height(self) -> int:
        """Dots down."""
        return self.rows * 4

    def dot(self, x: int, y: int) -> None:
        """Set the dot at (x, y); outside the canvas is ignored."""
        if 0 <= x < self.width and 0 <= y < self.height:
            self._cells[y // 4][x // 2] |= _BRAILLE_BITS[x % 2][y % 4]

    def line(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Set the dots of a straight line from (x0, y0) to (x1, y1)."""
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps))

    def filled(self, column: int, row: int) -> bool:
        """Whether a cell has any dot."""
        return self._cells[row][column] != 0

    def char(self, column: int, row: int) -> str:
        """The braille character of a cell (a space when empty)."""
        bits = self._cells[row][column]
        return chr(_BRAILLE_BASE + bits) if bits else " "


def append_runs(text: Text, cells: Sequence[tuple[str, str]]) -> None:
    """Append (character, style) cells, one span per run of equal style (fewer spans draw faster).

    Braille and block characters stay one span each: fonts without them fall back to
    glyphs of another width, and an SVG export would drift along a run.
    """
    run: list[str] = []
    run_style = None
    for char, style in cells:
        if run and (style != run_style or _own_span(char) or _own_span(run[-1])):
            text.append("".join(run), run_style or None)
            run = []
        run_style = style
        run.append(char)
    if run:
        text.append("".join(run), run_style or None)


def _own_span(char: str) -> bool:
    """Braille and block elements: often drawn from a fallback font of another width."""
    code = ord(char)
    return 0x2800 < code <= 0x28FF or 0x2580 <= code <= 0x259F


def format_value(value: float) -> str:
    """A short axis label: 2.31, 0.052, 12.5, 1.2k."""
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value / 1000:.1f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _trailing_mean(values: Sequence[float | None], window: int) -> list[float | None]:
    """Mean of the last ``window`` known values at each position (None until the first)."""
    out: list[float | None] = []
    kept: list[float] = []
    total = 0.0
    for value in values:
        if value is not None:
            kept.append(value)
            total += value
            if len(kept) > window:
                total -= kept[-window - 1]
        n = min(len(kept), window)
        out.append(total / n if n else None)
    return out


def loss_chart(
    records: Sequence[BatchRecord],
    starts: Sequence[StartEvent],
    width: int,
    height: int,
) -> Text:
    """The loss (braille) and accuracy (``•``) over the run, with a marker at every worker-count change.

    Args:
        records: batch records in step order.
        starts: the (re)start events; a ``restart`` that changes the worker count gets a marker.
        width, height: the size to fill, in cells.
    """
    text = Text(no_wrap=True, overflow="crop")
    if width < 16 or height < 4:
        text.append("(too small)", AXIS_STYLE)
        return text
    if not records:
        text.append("waiting for the first batch…", AXIS_STYLE)
        return text
    left, right = 6, 5  # y-axis labels: loss on the left, accuracy on the right
    plot_w, plot_h = width - left - right - 2, height - 2  # 1 label row on top, 1 axis row below
    if plot_w < 4 or plot_h < 2:
        text.append("(too small)", AXIS_STYLE)
        return text
    canvas = BrailleCanvas(plot_w, plot_h)
    first_step, last_step = records[0].step, records[-1].step
    span = max(last_step - first_step, 1)

    def x_of(step: float) -> int:
        return round((step - first_step) / span * (canvas.width - 1))

    # Loss: one point per dot column (the mean of the steps it covers), joined by lines.
    dots = min(canvas.width, last_step - first_step + 1)
    points: list[tuple[float, float]] = []
    # One pass, no lists per bin: this runs over every record kept (up to 20,000) once a second.
    span_steps = max(last_step - first_step + 1, 1)
    step_sums, counts, loss_sums, loss_counts = [0] * dots, [0] * dots, [0.0] * dots, [0] * dots
    isfinite = math.isfinite
    for record in records:
        i = min((record.step - first_step) * dots // span_steps, dots - 1)
        step_sums[i] += record.step
        counts[i] += 1
        if isfinite(record.loss):
            loss_sums[i] += record.loss
            loss_counts[i] += 1
    for i in range(dots):
        if loss_counts[i]:
            points.append((step_sums[i] / counts[i], loss_sums[i] / loss_counts[i]))
    low = min((p[1] for p in points), default=0.0)
    high = max((p[1] for p in points), default=1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5

    def y_of(loss: float) -> int:
        return round((high - loss) / (high - low) * (canvas.height - 1))

    previous: tuple[int, int] | None = None
    for step, loss in points:
        here = (x_of(step), y_of(loss))
        if previous is None:
            canvas.dot(*here)
        else:
            canvas.line(*previous, *here)
        previous = here

    # Accuracy: one mark per character column, 0% at the bottom row, 100% at the top; a batch's
    # accuracy is noisy, so each mark is the mean over the trailing ACCURACY_WINDOW batches.
    accuracy_row: dict[int, int] = {}
    if any(r.accuracy is not None for r in records):  # a script's records have none: skip the pass
        smoothed = _trailing_mean([r.accuracy for r in records], ACCURACY_WINDOW)
        for record, value in zip(records, smoothed, strict=True):
            if value is not None:
                accuracy_row[x_of(record.step) // 2] = round((1 - value) * (plot_h - 1))

    # Markers: every (re)start that changed the worker count.
    markers: dict[int, str] = {}
    previous_workers: int | None = None
    for event in starts:
        if event.reason == "epoch":
            continue
        workers = event.config.num_workers
        if event.reason == "restart" and workers != previous_workers and first_step <= event.after_step + 1:
            markers[x_of(event.after_step + 1) // 2] = f"{workers}w"
        previous_workers = workers

    label_row = [" "] * plot_w
    taken_until = -1
    for column in sorted(markers):
        label = "▼" + markers[column]
        if column > taken_until and column + len(label) <= plot_w:
            label_row[column : column + len(label)] = list(label)
            taken_until = column + len(label)
    has_accuracy = bool(accuracy_row)
    legend = "loss ⣿" + ("  accuracy •" if has_accuracy else "") + ("  ▼ workers switched" if markers else "")
    text.append(" " * (left + 1))
    header = "".join(label_row)
    text.append(header, MARKER_STYLE)
    text.append("\n")

    for row in range(plot_h):
        labelled = row in (0, plot_h - 1) or (row == plot_h // 2 and plot_h >= 5)
        fraction = row / (plot_h - 1)  # of the way down: the row's own value, not a rounded midpoint
        label = format_value(high - fraction * (high - low)) if labelled else ""
        text.append(label.rjust(left - 1) + " ", AXIS_STYLE)
        text.append("│", AXIS_STYLE)
        cells: list[tuple[str, str]] = []
        for column in range(plot_w):
            if canvas.filled(column, row):
                cells.append((canvas.char(column, row), LOSS_STYLE))
            elif accuracy_row.get(column) == row:
                cells.append(("•", ACCURACY_STYLE))
            elif column in markers:
                cells.append(("┊", MARKER_STYLE))
            else:
                cells.append((" ", ""))
        append_runs(text, cells)
        text.append("│", AXIS_STYLE)
        if has_accuracy and labelled:
            text.append(f"{round(100 * (1 - fraction)):>3}%", ACCURACY_STYLE)
        text.append("\n")

    axis = f"step {first_step}"
    end = f"{last_step}"
    middle = f"  {legend}  "
    gap = plot_w + 2 - len(axis) - len(end)
    if gap >= len(middle):
        pad = gap - len(middle)
        line = axis + " " * (pad // 2) + middle + " " * (pad - pad // 2) + end
    else:
        line = axis + " " * max(gap, 1) + end
    text.append(" " * (left - 1) + line, AXIS_STYLE)
    return text


def load_compute_chart(records: Sequence[BatchRecord], width: int, height: int) -> Text:
    """Stacked bars of the latest batches, newest on the right: load ``█`` below, compute ``░`` above.

    The scale is the 95th percentile of the shown iterations (a taller bar is cut and
    topped with ``↑``); the row below marks where the worker count changed.
    """
    text = Text(no_wrap=True, overflow="crop")
    left = 6
    bars_w, bars_h = width - left - 1, height - 1
    if bars_w < 4 or bars_h < 2:
        text.append("(too small)", AXIS_STYLE)
        return text
    shown = list(records[-bars_w:])
    if not shown:
        text.append("waiting for the first batch…", AXIS_STYLE)
        return text
    iters = sorted(r.iter_s * 1000 for r in shown)
    scale_ms = iters[min(len(iters) - 1, math.ceil(0.95 * len(iters)) - 1)] * 1.05 or 1.0
    eighths = bars_h * 8
    columns: list[list[tuple[str, str]]] = []  # per bar, cells from the bottom
    for record in shown:
        load_e = round(min(record.load_s * 1000 / scale_ms, 1.0) * eighths)
        total_cells = min(round(record.iter_s * 1000 / scale_ms * bars_h), bars_h)
        cells: list[tuple[str, str]] = []
        full, part = divmod(load_e, 8)
        cells += [("█", LOAD_STYLE)] * full
        if part and len(cells) < bars_h:
            cells.append((_EIGHTHS[part], LOAD_STYLE))
        compute_cells = max(total_cells - len(cells), 1 if record.compute_s > 0 else 0)
        cells = (cells + [("░", COMPUTE_STYLE)] * compute_cells)[:bars_h]
        if record.iter_s * 1000 > scale_ms:
            cells[-1] = ("↑", COMPUTE_STYLE)
        columns.append(cells)
    pad = bars_w - len(columns)
    for row in range(bars_h - 1, -1, -1):
        label = format_value(scale_ms) if row == bars_h - 1 else ("0" if row == 0 else "")
        if row == bars_h // 2 and bars_h >= 4:
            label = format_value(scale_ms / 2)
        text.append(label.rjust(left - 1) + "│", AXIS_STYLE)
        text.append(" " * pad)
        append_runs(text, [cells[row] if row < len(cells) else (" ", "") for cells in columns])
        text.append("\n")
    marks = [" "] * bars_w
    for i in range(1, len(shown)):
        if shown[i].config_key != shown[i - 1].config_key:
            label = f"┴{shown[i].num_workers}w"
            at = pad + i
            marks[at : at + len(label)] = list(label[: bars_w - at])
    text.append(" ms".ljust(left - 1) + "└", AXIS_STYLE)
    text.append("".join(marks)[:bars_w], MARKER_STYLE)
    return text


def meter(percent: float, width: int) -> str:
    """A horizontal bar ``████▌    `` of ``width`` cells for 0..100 percent."""
    percent = 0.0 if math.isnan(percent) else max(0.0, min(percent, 100.0))
    eighths = round(percent / 100 * width * 8)
    full, part = divmod(eighths, 8)
    partial = "▏▎▍▌▋▊▉"[part - 1] if part else ""
    return ("█" * full + partial).ljust(width)[:width]


def level(percent: float) -> str:
    """One character for 0..100 percent, ``▁`` to ``█`` (for many cores in little space)."""
    percent = 0.0 if math.isnan(percent) else max(0.0, min(percent, 100.0))
    return _EIGHTHS[max(1, round(percent / 100 * 8))]
