"""Where a sample's time goes: the shown loader's stages (``SessionView.stages``), from its workers' own timing.

For the running worker count, a table of its stages, slowest first: each stage's wall, CPU and waiting
milliseconds per sample and its share of a sample's time, each marked with its letter. Below it one stacked bar
per worker count measured: each stage's share of a sample as a run of its letter, in the order of a sample's
path, and the sample's wall time. Then the bytes a sample read and the stages whose slow calls stand out (their
histograms). Last, the verdict (``policy.stages.verdict``): which stage dominates,
computing or waiting, and what would help. Where rows are few, the verdict and the slowest stages come first;
where columns are few, the waiting column goes, then the CPU one. Every figure reads without colour.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from loadertop.core.policy.stages import verdict
from loadertop.core.protocol.config import describe_workers
from loadertop.core.protocol.stages import (
    COLLATE,
    DECODE,
    READ,
    REST,
    StageFigures,
    StageTime,
    describe,
    describe_tails,
    kb,
    ms,
)
from loadertop.core.sessions.view import SessionView
from loadertop.tui.widgets.base import ViewWidget

PREFERRED_LETTERS = {READ: "r", DECODE: "d", REST: "g", COLLATE: "c"}
"""The fixed stages' letters (``g``: the rest of ``__getitem__``); a transform takes a capital of its name."""
PALETTE = (
    "black on cyan",
    "black on magenta",
    "black on yellow",
    "black on green",
    "white on blue",
    "white on red",
    "black on bright_cyan",
    "black on bright_magenta",
    "black on bright_yellow",
    "black on bright_green",
    "white on bright_blue",
    "white on bright_red",
)
"""Each stage's colour, in the order the stages first appear (the letters alone say the same)."""
VERDICT_LINES = 3
"""The verdict wraps to at most this many lines (the last cut short with ``…``), more where the rest leaves room."""
MIN_NAME = 12
"""Columns go (waiting, then CPU) before a stage's name gets fewer characters than this."""
MIN_BAR = 8
"""Narrower than this, no bars."""


@dataclass(frozen=True)
class Column:
    """A figure of the table: heading, width, the cell of a stage."""

    heading: str
    width: int
    cell: Callable[[StageFigures, StageTime], str]


def _ms(value: float | None) -> str:
    return "-" if value is None else ms(value)


COLUMNS = (
    Column("wall ms", 7, lambda f, s: _ms(f.wall_ms(s))),
    Column("CPU ms", 6, lambda f, s: _ms(f.cpu_ms(s))),
    Column("wait ms", 7, lambda f, s: _ms(f.wait_ms(s))),
    Column("share", 5, lambda f, s: f"{f.share(s):.0%}"),
)
DROP_ORDER = ("wait ms", "CPU ms")
"""The columns left out first where the panel is narrow."""


def stage_letters(names: Sequence[str]) -> dict[str, str]:
    """One letter (or digit) per stage, each its own: the fixed stages' own, a transform's first free capital
    (``RandomResizedCrop`` R, ``RandomHorizontalFlip`` H), else its first free letter."""
    letters: dict[str, str] = {}
    used: set[str] = set()
    spare = "abcdefhijklmnopqstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for name in names:
        if name in letters:
            continue
        preferred = PREFERRED_LETTERS.get(name, "")
        candidates = [preferred, *(ch for ch in name if ch.isupper()), *(ch for ch in name if ch.isalnum()), *spare]
        letter = next((ch for ch in candidates if ch and ch not in used), "?")
        letters[name] = letter
        used.add(letter)
    return letters


def bar_runs(figures: StageFigures, width: int) -> list[tuple[StageTime, int]]:
    """Each stage's run of ``width`` cells, in the order of a sample's path, by its share (largest remainders:
    the runs fill the bar exactly)."""
    total = figures.sample_ms
    if total <= 0 or width <= 0:
        return []
    exact = [(stage, figures.wall_ms(stage) / total * width) for stage in figures.stages]
    cells = [int(share) for _, share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i][1] - cells[i]))
    for i in by_remainder[: width - sum(cells)]:
        cells[i] += 1
    return [(stage, n) for (stage, _), n in zip(exact, cells, strict=True) if n > 0]


def shown_figures(view: SessionView) -> StageFigures | None:
    """The running worker count's figures (else the latest count's), None before any."""
    all_figures = view.stages or ()
    running = view.status.config.num_workers
    return next((f for f in all_figures if f.num_workers == running), all_figures[-1] if all_figures else None)


def _crop(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _verdict_lines(line: str, width: int, limit: int) -> list[str]:
    lines = textwrap.wrap(line, max(width, 8), subsequent_indent="  ", break_on_hyphens=False)
    if len(lines) > limit:
        lines = lines[: max(limit, 1)]
        lines[-1] = lines[-1][: max(width - 1, 0)].rstrip() + "…"
    return lines


def stages_text(view: SessionView | None, width: int, height: int) -> Text:
    """The panel's content for ``view`` in ``width`` x ``height`` cells."""
    text = Text(no_wrap=True, overflow="crop")
    if view is None:
        return text
    if view.stages is None:
        text.append(_crop("this session has no stage figures (a recording made before stage timing)", width), "dim")
        return text
    figures = shown_figures(view)
    if figures is not None and figures.off:  # the reason is one line, often an exception's: wrapped whole
        wrapped = textwrap.wrap(f"stage timing off: {figures.off}", max(width, 8), subsequent_indent="  ")
        text.append("\n".join(wrapped[: max(height, 1)]), "bold yellow")
        return text
    measured = sorted((f for f in view.stages if f.samples and not f.off), key=lambda f: f.num_workers)
    if figures is None or not figures.samples:
        count = f"{describe_workers(view.status.config.num_workers)}: " if measured else ""
        text.append(f"{count}no samples timed yet", "dim")
        if height >= 2 and not measured:
            text.append(
                "\n" + _crop("each sample's stages are timed in its worker, written once a batch", width), "dim"
            )
        if measured:
            letters = stage_letters([s.name for f in measured for s in f.stages])
            text.append("\n")
            _draw_bars(text, measured, None, letters, width, height - 1)
            text.rstrip()
        return text

    letters = stage_letters([s.name for f in (figures, *measured) for s in f.stages])
    machine = view.machine
    judged = verdict(figures, machine.usable_cores) if machine is not None else describe(figures)
    spare = height - (1 + len(figures.stages) + len(measured))  # rows the verdict may have beyond its three
    verdict_lines = _verdict_lines(judged, width, min(max(VERDICT_LINES, spare), max(height, 1)))
    left = height - len(verdict_lines)

    columns = list(COLUMNS)
    names = [s.name for s in figures.stages]
    longest = max((len(n) for n in names), default=MIN_NAME)

    def name_width() -> int:
        return width - 2 - sum(c.width + 1 for c in columns)

    for dropped in DROP_ORDER:
        if name_width() >= min(longest, MIN_NAME):
            break
        columns = [c for c in columns if c.heading != dropped]
    name_w = max(min(name_width(), max(longest, len("stage"))), 4)

    rows = list(figures.slowest_first())
    heading = 1 if left >= 2 else 0  # a heading only with a row below it
    left -= heading
    stage_rows = min(len(rows), 2, left)  # the two slowest stages first, then the bars, then the others
    left -= stage_rows
    bars = min(len(measured), left)
    left -= bars
    notes = [line for line in (io_text(figures), describe_tails(figures)) if line is not None]
    note_rows = min(len(notes), max(left, 0))  # the I/O line first, then the slow calls
    left -= note_rows
    stage_rows += min(len(rows) - stage_rows, left)
    hidden: list[StageTime] = []
    if stage_rows < len(rows) and stage_rows >= 3:  # the last row names the stages left out (the bars have them)
        stage_rows -= 1
        hidden = rows[stage_rows:]

    lines: list[Text] = []
    if heading:
        title = f"{figures.num_workers}w: {figures.samples:,} samples"
        title = title if len(title) <= name_w else _crop(f"{figures.num_workers}w", name_w)
        line = Text("  " + title.ljust(name_w), "bold")
        line.append("".join(" " + c.heading.rjust(c.width) for c in columns), "bold")
        lines.append(line)
    for stage in rows[:stage_rows]:
        line = Text()
        line.append(letters[stage.name], PALETTE[list(letters).index(stage.name) % len(PALETTE)])
        line.append(" " + _crop(stage.name, name_w).ljust(name_w))
        line.append("".join(" " + c.cell(figures, stage).rjust(c.width) for c in columns))
        lines.append(line)
    if hidden:
        more = " · ".join(f"{letters[s.name]} {s.name} {ms(figures.wall_ms(s))}" for s in hidden)
        lines.append(Text(_crop(f"+{len(hidden)} more: {more}", width), "dim"))
    for line in lines:
        text.append_text(line)
        text.append("\n")
    _draw_bars(text, measured, figures, letters, width, bars)
    for note in notes[:note_rows]:
        text.append(_crop(note, width), "dim")
        text.append("\n")
    for row in verdict_lines:
        text.append(row, "bold")
        text.append("\n")
    text.rstrip()
    return text


def io_text(figures: StageFigures) -> str | None:
    """The panel's line on the bytes a sample read and a worker's rate, e.g. ``I/O 110 KB a sample (storage 0 KB)
    · 8.2 MB/s a worker``; None where they were not read."""
    read, storage = figures.read_kb_per_sample, figures.storage_kb_per_sample
    if read is None or storage is None:
        return None
    rate = figures.mb_per_s(read)
    rate_text = "" if rate is None else f" · {rate:.3g} MB/s a worker"
    return f"I/O {kb(read)} a sample (storage {kb(storage)}){rate_text}"


def gpu_idle_line(view: SessionView | None, width: int) -> Text | None:
    """The line below the verdict: the running count's GPU idle time (``view.gpu_idle``), or why there is none
    where NVML has a GPU (``view.gpu_idle_note``); None: nothing to say (no GPU, or no figure yet)."""
    if view is None:
        return None
    running = view.status.config.num_workers
    idle = next((f for f in view.gpu_idle if f.num_workers == running and f.covered_s > 0), None)
    if idle is not None:
        return Text(_crop(idle.line(), width), "bold")
    if view.gpu_idle_note:
        return Text(_crop(f"GPU idle: {view.gpu_idle_note}", width), "dim")
    return None


def panel_text(view: SessionView | None, width: int, height: int) -> Text:
    """``stages_text`` with the GPU idle line (``gpu_idle_line``) below it where there is one and room."""
    idle = gpu_idle_line(view, width)
    if idle is None or height < 2:
        return stages_text(view, width, height)
    text = stages_text(view, width, height - 1)
    if text.plain:
        text.append("\n")
    text.append_text(idle)
    return text


def _draw_bars(
    text: Text,
    measured: Sequence[StageFigures],
    running: StageFigures | None,
    letters: dict[str, str],
    width: int,
    rows: int,
) -> None:
    """One stacked bar per worker count measured (``rows`` at most: the running count's and the most sampled)."""
    if rows <= 0 or not measured:
        return
    ranked = sorted(measured, key=lambda f: (f is not running, -f.samples))[:rows]
    label_w = max(len(str(f.num_workers)) for f in measured) + 1
    ms_w = max(len(f"{ms(f.sample_ms)} ms") for f in measured)
    bar_w = width - 1 - label_w - len(" ▕") - len("▏ ") - ms_w  # "▶2w ▕ddRRGG▏ 4.31 ms"
    if bar_w < MIN_BAR:
        return
    names = list(letters)
    for figures in measured:
        if figures not in ranked:
            continue
        mark = "▶" if figures is running else " "
        text.append(mark, "bold yellow")
        text.append(f"{figures.num_workers}w".rjust(label_w), "bold" if figures is running else "")
        text.append(" ▕")
        for stage, cells in bar_runs(figures, bar_w):
            letter = letters.get(stage.name, "?")
            style = PALETTE[names.index(stage.name) % len(PALETTE)] if stage.name in letters else ""
            text.append(letter * cells, style)
        text.append("▏ ")
        text.append(f"{ms(figures.sample_ms)} ms".rjust(ms_w))
        text.append("\n")


class StagesPanel(ViewWidget):
    """The stage table, a bar per worker count and the verdict, for the shown loader (see the module)."""

    every_ticks = 4
    tick_phase = 2  # with the load chart's even pulls, apart from the loss chart and the table (odd ones)

    def wants(self, view: SessionView, tick: int) -> bool:
        """New figures, at most once a second; a restart or a new shown loader at once."""
        old = self.view
        if old is None or view.status.config != old.status.config or view.status.state != old.status.state:
            return True
        if (tick + self.tick_phase) % self.every_ticks:
            return False
        cores = view.machine.usable_cores if view.machine is not None else None
        old_cores = old.machine.usable_cores if old.machine is not None else None
        new_idle = view.gpu_idle != old.gpu_idle or view.gpu_idle_note != old.gpu_idle_note
        return view.stages != old.stages or cores != old_cores or new_idle

    def render(self) -> Text:
        return panel_text(self.view, self.content_size.width, self.content_size.height)
