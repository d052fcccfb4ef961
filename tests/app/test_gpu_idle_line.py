"""The stage panel's GPU idle line: below the verdict, for the running worker count, from fixed figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from loadertop.core.policy.advice import MachineFacts
from loadertop.core.protocol.gpu_idle import GpuIdle
from loadertop.core.protocol.stages import StageFigures
from loadertop.core.sessions.view import SessionView
from loadertop.tui.widgets.stages import gpu_idle_line, panel_text, stages_text

RECORDED = Path(__file__).resolve().parent.parent / "data" / "stages_builtin.json"
FIGURES = (GpuIdle(0, 20.0, 12.0, 14.0, 11.0), GpuIdle(2, 40.0, 16.4, 16.0, 15.2))
"""0 workers: idle 60%, 55% waiting; 2 workers (the recorded view's running count): idle 41%, 38% waiting."""


def view_with(recorded_view: SessionView, idle: tuple[GpuIdle, ...] = (), note: str | None = None) -> SessionView:
    stages = tuple(StageFigures.from_wire(wire) for wire in json.loads(RECORDED.read_text()))
    machine = MachineFacts(usable_cores=2.0, memory_total_bytes=1024**3)
    return dataclasses.replace(recorded_view, stages=stages, machine=machine, gpu_idle=idle, gpu_idle_note=note)


def rows(view: SessionView, width: int = 60, height: int = 20) -> list[str]:
    lines = panel_text(view, width, height).plain.split("\n")
    assert len(lines) <= height and all(len(line) <= width for line in lines)
    return lines


def test_the_running_counts_idle_time_is_the_last_line_below_the_verdict(recorded_view: SessionView) -> None:
    view = view_with(recorded_view, FIGURES)
    assert view.status.config.num_workers == 2
    shown = rows(view)
    assert shown[-1] == "GPU 0 idle 41% of the time, 38% while waiting for data"
    assert shown[:-1] == stages_text(view, 60, 19).plain.split("\n")  # the stages as they are, a row less
    small = rows(view, 38, 6)  # few rows: the line keeps its row, the stages have the rest
    assert small[-1] == "GPU 0 idle 41% of the time, 38% while…"


def test_no_gpu_leaves_the_panel_as_it_was_and_a_reason_shows_dim(recorded_view: SessionView) -> None:
    bare = view_with(recorded_view)
    assert gpu_idle_line(bare, 60) is None and rows(bare) == stages_text(bare, 60, 20).plain.split("\n")
    other_count = view_with(recorded_view, FIGURES[:1])  # only 0 workers measured: nothing for the running 2
    assert gpu_idle_line(other_count, 60) is None
    note = "GPU 0 keeps no utilisation samples (NVML: Not Supported)"
    line = gpu_idle_line(view_with(recorded_view, (), note), 80)
    assert line is not None and line.plain == f"GPU idle: {note}" and str(line.style) == "dim"
    assert panel_text(view_with(recorded_view, FIGURES), 60, 1).plain == stages_text(bare, 60, 1).plain  # one row
    assert gpu_idle_line(None, 60) is None
