"""CPU: one meter per logical core, then load average, memory and /dev/shm."""

from __future__ import annotations

import math

from rich.text import Text

from loadertop.core.measure.system import SystemSnapshot
from loadertop.core.sessions.view import SessionView
from loadertop.tui.plot import append_runs, level, meter
from loadertop.tui.widgets.base import SystemPanel

GIB = 1024**3


def _core_style(percent: float) -> str:
    return "red" if percent >= 90 else "yellow" if percent >= 60 else "green"


class CoreMeters(SystemPanel):
    """Meters laid out in as many columns as fit; with more cores than room, one level glyph per core."""

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        cores = system.cpu_percent_per_core
        width, height = self.content_size.width, self.content_size.height
        rows_for_cores = max(height - 1, 1)  # the memory line stays; /dev/shm only if there is room
        label_w = len(str(len(cores) - 1))
        cell_w = label_w + 1 + 8 + 5  # "12 ████████ 100%"
        columns = max(1, (width + 1) // (cell_w + 1))
        rows = math.ceil(len(cores) / columns)
        if rows <= rows_for_cores:
            bar_w = max(4, (width + 1) // columns - 1 - label_w - 1 - 5)
            for row in range(rows):
                for column in range(columns):
                    index = column * rows + row
                    if index >= len(cores):
                        break
                    pct = cores[index]
                    if column:
                        text.append(" ")
                    text.append(f"{index:>{label_w}} ", "dim")
                    text.append(meter(pct, bar_w), _core_style(pct))
                    text.append(f"{pct:4.0f}%")
                text.append("\n")
        else:  # many cores: one glyph each
            per_row = max(width, 1)
            for start in range(0, len(cores), per_row):
                append_runs(text, [(level(pct), _core_style(pct)) for pct in cores[start : start + per_row]])
                text.append("\n")
        load1, load5, _ = system.load_average
        text.append(f"load {load1:.2f} {load5:.2f}", "dim")
        text.append(f"  mem {system.memory_used_bytes / GIB:.1f}/{system.memory_total_bytes / GIB:.1f} GiB")
        if system.shm_total_bytes and rows + 1 < height:
            used = (system.shm_used_bytes or 0) / GIB
            text.append(f"\nshm {used:.2f}/{system.shm_total_bytes / GIB:.1f} GiB", "dim")
