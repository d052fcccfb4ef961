"""GPU: utilisation and memory per NVIDIA GPU, or why there is none."""

from __future__ import annotations

import textwrap

from rich.text import Text

from loadertop.core.measure.system import SystemSnapshot
from loadertop.core.sessions.view import SessionView
from loadertop.tui.plot import meter
from loadertop.tui.widgets.base import SystemPanel

GIB = 1024**3


class GpuPanel(SystemPanel):
    """Per GPU: name, utilisation meter, memory, temperature and power where NVML reads them."""

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        gpus = system.gpus
        if not gpus:
            status = view.gpu_status
            head, _, reason = status.partition(": ")
            text.append(head if head.startswith("no NVIDIA GPU") else "no NVIDIA GPU", "bold")
            if reason:  # the panel does not wrap: fold the reason to its width
                for line in textwrap.wrap(reason, max(self.content_size.width, 10)):
                    text.append(f"\n{line}", "dim")
            return
        width, height = self.content_size.width, self.content_size.height
        lines = 3 if 3 * len(gpus) <= height else 2 if 2 * len(gpus) <= height else 1
        for gpu in gpus:
            util = gpu.utilization_percent
            mem_share = (
                gpu.memory_used_bytes / gpu.memory_total_bytes * 100
                if gpu.memory_used_bytes is not None and gpu.memory_total_bytes
                else None
            )
            extras = []
            if gpu.temperature_c is not None:
                extras.append(f"{gpu.temperature_c:.0f}°C")
            if gpu.power_w is not None:
                extras.append(f"{gpu.power_w:.0f} W")
            if lines == 1:
                text.append(f"{gpu.index} ", "bold")
                text.append(f"util {_pct(util)} mem {_pct(mem_share)} {' '.join(extras)}\n")
                continue
            text.append(f"{gpu.index} {gpu.name.removeprefix('NVIDIA ')}", "bold")
            text.append(("  " + " ".join(extras)) if extras else "", "dim")
            text.append("\n")
            if lines == 3:
                bar_w = max(4, width - 11)
                text.append("util ")
                text.append(meter(util or 0.0, bar_w), "green")
                text.append(f" {_pct(util)}\n")
                text.append("mem  ")
                text.append(meter(mem_share or 0.0, bar_w), "cyan")
                text.append(f" {_pct(mem_share)}")
                if gpu.memory_used_bytes is not None and gpu.memory_total_bytes:
                    text.append(f"  {gpu.memory_used_bytes / GIB:.1f}/{gpu.memory_total_bytes / GIB:.0f} GiB", "dim")
                text.append("\n")
            else:
                bar_w = max(3, (width - 20) // 2)
                text.append("util ")
                text.append(meter(util or 0.0, bar_w), "green")
                text.append(f"{_pct(util)} mem ")
                text.append(meter(mem_share or 0.0, bar_w), "cyan")
                text.append(f"{_pct(mem_share)}\n")
        text.rstrip()


def _pct(value: float | None) -> str:
    return " n/a" if value is None else f"{value:3.0f}%"
