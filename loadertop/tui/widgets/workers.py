"""The training process and its DataLoader workers: id, pid, CPU% and RSS; workers that exited, dimmed."""

from __future__ import annotations

from rich.text import Text

from loadertop.core.system import SystemSnapshot
from loadertop.core.view import SessionView
from loadertop.tui.widgets.base import SystemPanel

MIB = 1024 * 1024


class WorkersPanel(SystemPanel):
    """One row per process: ``main`` first, then ``w0``..``wN``; totals when rows do not fit.

    A worker that exited (at an epoch end without persistent workers, or a restart) stays as a
    dimmed row with its lifetime until its replacement is sampled, so short epochs do not make
    the rows flicker; the summary counts how many workers were started.
    """

    def wants(self, view: SessionView, tick: int) -> bool:
        """Also redraw as soon as workers exit or start, not only at the next system sample."""
        old = self.view
        if old is not None and (view.status.worker_pids != old.status.worker_pids
                                or view.status.exited_workers != old.status.exited_workers):
            return True
        return super().wants(view, tick)

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        status = view.status
        state = status.state
        expected = 0 if state.is_done else status.config.num_workers
        exited = {w.worker_id: w for w in status.exited_workers if w.worker_id < expected}
        exited_pids = {w.pid for w in status.exited_workers}
        live = {p.worker_id: p for p in system.workers if p.pid not in exited_pids}
        lines: list[tuple[str, str]] = []
        main = system.processes[0]
        lines.append((f"{'main':<4} {main.pid:>7} {main.cpu_percent:4.0f}% {main.rss_bytes / MIB:6.0f} MB", "bold"))
        for worker_id in sorted(set(live) | set(exited)):
            proc = live.get(worker_id)
            if proc is not None:
                lines.append((f"w{worker_id:<3} {proc.pid:>7} {proc.cpu_percent:4.0f}% {proc.rss_bytes / MIB:6.0f} MB",
                              ""))
            else:
                gone = exited[worker_id]
                lines.append((f"w{worker_id:<3} {gone.pid:>7} exited after {gone.lifetime_s:.2f} s", "dim"))
        height = self.content_size.height
        with_header = len(lines) + 2 <= height
        if with_header:
            text.append(f"{'':4} {'pid':>7} {'CPU':>5} {'RSS':>9}\n", "dim")
        room = height - with_header - 1  # the summary line
        shown = lines if len(lines) <= height - with_header else lines[: max(room, 1)]
        for line, style in shown:
            text.append(line + "\n", style)
        hidden = len(lines) - len(shown)
        if hidden:
            text.append(f"… {hidden} more; ", "dim")
        up = len(live)
        respawning = expected and up < expected and up + len(set(exited) - set(live)) >= expected
        if expected and up != expected and not respawning:
            text.append(f"{up} of {expected} workers up", "yellow")
        elif hidden or len(shown) < height - with_header:
            text.append(self._summary(view, system, up, respawning), "dim")

    @staticmethod
    def _summary(view: SessionView, system: SystemSnapshot, up: int, respawning: bool) -> str:
        status = view.status
        if status.state.is_done:
            return f"the run has {status.state.value}: no worker processes"
        if not status.config.num_workers:
            return "no worker processes: loading in the main process"
        started = status.worker_spawns
        if respawning:
            return f"new workers for the next epoch; {started} started"
        label = f"{up} worker{'s' if up != 1 else ''}, tree CPU {system.tree_cpu_percent:.0f}%"
        return label + (f", {started} started" if started > up else "")
