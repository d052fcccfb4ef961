"""GPU: utilisation and memory per NVIDIA GPU, or why there is none."""

from __future__ import annotations

from rich.text import Text

from loadertop.tui.plot import meter
from loadertop.tui.widgets.base import ViewWidget

GIB = 1024**3


class GpuPanel(ViewWidget):
    """Per GPU: name, utilisation meter, memory, temperature and power where NVML reads them."""

    def render(self) -> Text:
        text = Text(no_wrap=False, overflow="fold")
        view = self.view
        if view is None:
            return text
        gpus = view.system.gpus if view.system is not None else ()
        if not gpus:
            status = view.gpu_status
            head, _, reason = status.partition(": ")
            text.append(head if head.startswith("no NVIDIA GPU") else "no NVIDIA GPU", "bold")
            if reason:
                text.append(f"\n{reason}", "dim")
            return text
        bar_w = max(4, self.content_size.width - 14)
        for gpu in gpus:
            text.append(f"{gpu.index} {gpu.name}\n", "bold")
            if gpu.utilization_percent is not None:
                text.append(" util ")
                text.append(meter(gpu.utilization_percent, bar_w), "green")
                text.append(f"{gpu.utilization_percent:4.0f}%\n")
            if gpu.memory_used_bytes is not None and gpu.memory_total_bytes:
                share = gpu.memory_used_bytes / gpu.memory_total_bytes * 100
                text.append(" mem  ")
                text.append(meter(share, bar_w), "cyan")
                text.append(f"{share:4.0f}%\n")
                text.append(f"      {gpu.memory_used_bytes / GIB:.1f}/{gpu.memory_total_bytes / GIB:.1f} GiB", "dim")
            extras = []
            if gpu.temperature_c is not None:
                extras.append(f"{gpu.temperature_c:.0f}°C")
            if gpu.power_w is not None:
                extras.append(f"{gpu.power_w:.0f} W")
            if extras:
                text.append("  " + " ".join(extras), "dim")
            text.append("\n")
        text.rstrip()
        return text
