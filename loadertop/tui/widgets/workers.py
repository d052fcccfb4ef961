"""The training process and its DataLoader workers: id, pid, CPU% and RSS."""

from __future__ import annotations

from rich.text import Text

from loadertop.core.session import SessionView
from loadertop.core.system import SystemSnapshot
from loadertop.tui.widgets.base import SystemPanel

MIB = 1024 * 1024


class WorkersPanel(SystemPanel):
    """One row per process: ``main`` first, then ``w0``..``wN``; totals when rows do not fit."""

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        state = view.status.state
        expected = 0 if state.is_done else view.status.config.num_workers
        processes = system.processes
        height = self.content_size.height
        with_header = len(processes) + 2 <= height
        if with_header:
            text.append(f"{'':4} {'pid':>7} {'CPU':>5} {'RSS':>9}\n", "dim")
        room = height - with_header - 1  # the summary line
        shown = processes if len(processes) <= height - with_header else processes[: max(room, 1)]
        for proc in shown:
            name = "main" if proc.role == "main" else f"w{proc.worker_id}"
            style = "bold" if proc.role == "main" else ""
            text.append(f"{name:<4} {proc.pid:>7} {proc.cpu_percent:4.0f}% {proc.rss_bytes / MIB:6.0f} MB\n", style)
        hidden = len(processes) - len(shown)
        workers = len(system.workers)
        if hidden:
            text.append(f"… {hidden} more; ", "dim")
        if expected and workers != expected:
            text.append(f"{workers} of {expected} workers up", "yellow")
        elif hidden or len(shown) < height - with_header:
            idle = f"the run has {state.value}: no worker processes" if state.is_done else (
                "no worker processes: loading in the main process"
            )
            label = idle if not workers else (
                f"{workers} worker{'s' if workers != 1 else ''}, tree CPU {system.tree_cpu_percent:.0f}%"
            )
            text.append(label, "dim")
