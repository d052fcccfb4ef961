"""The training process and its DataLoader workers: id, pid, CPU%, RSS and USS; workers that exited, dimmed."""

from __future__ import annotations

from rich.text import Text

from loadertop.core.measure.system import ProcessSample, SystemSnapshot
from loadertop.core.sessions.view import SessionView
from loadertop.tui.widgets.base import SystemPanel

MIB = 1024 * 1024
WIDE = 35
"""From this width on, RSS is shown beside USS (narrower: USS, what each process alone holds)."""


def _uss_cell(proc: ProcessSample) -> str:
    """USS in MB; ``-`` where it was not read exactly (RSS is no stand-in: it counts the shared pages)."""
    return f"{proc.uss_bytes / MIB:6.0f}" if proc.uss_bytes is not None and proc.memory_exact else f"{'-':>6}"


class WorkersPanel(SystemPanel):
    """One row per process: ``main`` first, then ``w0``..``wN``; totals when rows do not fit.

    Memory per process is its USS (what only it holds: a forked worker shares the main process's pages
    until it writes them), with RSS beside it where there is room; the summary gives the tree's PSS.

    A worker that exited (at an epoch end without persistent workers, or a restart) stays as a
    dimmed row with its lifetime until its replacement is sampled, so short epochs do not make
    the rows flicker; the summary counts how many workers were started.
    """

    def wants(self, view: SessionView, tick: int) -> bool:
        """Also redraw as soon as workers exit or start, not only at the next system sample."""
        old = self.view
        if old is not None and (
            view.status.worker_pids != old.status.worker_pids or view.status.exited_workers != old.status.exited_workers
        ):
            return True
        return super().wants(view, tick)

    def draw(self, text: Text, view: SessionView, system: SystemSnapshot) -> None:
        status = view.status
        state = status.state
        expected = 0 if state.is_done else status.config.num_workers
        exited = {w.worker_id: w for w in status.exited_workers if w.worker_id < expected}
        exited_pids = {w.pid for w in status.exited_workers}
        live = {p.worker_id: p for p in system.workers if p.pid not in exited_pids}
        # USS where it was read (RSS beside it where there is room); RSS alone, so named, where it never was.
        uss = any(p.uss_bytes is not None and p.memory_exact for p in system.processes)
        rss = self.content_size.width >= WIDE or not uss

        def row(name: str, proc: ProcessSample) -> str:
            cells = (f" {proc.rss_bytes / MIB:6.0f}" if rss else "") + (f" {_uss_cell(proc)}" if uss else "")
            return f"{name:<4} {proc.pid:>7} {proc.cpu_percent:4.0f}%{cells} MB"

        lines: list[tuple[str, str]] = [(row("main", system.processes[0]), "bold")]
        for worker_id in sorted(set(live) | set(exited)):
            proc = live.get(worker_id)
            if proc is not None:
                lines.append((row(f"w{worker_id}", proc), ""))
            else:
                gone = exited[worker_id]
                lines.append((f"w{worker_id:<3} {gone.pid:>7} exited after {gone.lifetime_s:.2f} s", "dim"))
        height = self.content_size.height
        with_header = len(lines) + 2 <= height
        title = "processes · USS MB" if uss and not with_header else "processes"  # no heading row: name the figure
        if self.border_title and self.border_title != title:
            self.border_title = title
        if with_header:
            heading = (" " + "RSS".rjust(6 if uss else 9) if rss else "") + (" " + "USS".rjust(9) if uss else "")
            text.append(f"{'':4} {'pid':>7} {'CPU':>5}{heading}\n", "dim")
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
            text.append(self._summary(view, system, up, respawning, self.content_size.width), "dim")

    @staticmethod
    def _summary(view: SessionView, system: SystemSnapshot, up: int, respawning: bool, width: int) -> str:
        status = view.status
        if status.state.is_done:
            return f"the run has {status.state.value}: no worker processes"
        if not status.config.num_workers:
            return "no worker processes: loading in the main process"
        started = status.worker_spawns
        if respawning:
            return f"new workers for the next epoch; {started} started"
        label = f"{up} worker{'s' if up != 1 else ''}, tree CPU {system.tree_cpu_percent:.0f}%"
        memory = system.memory
        extras = (
            [] if memory is None else [f"PSS {memory.pss_bytes / MIB:,.0f} MB" if memory.exact else "PSS unreadable"]
        )
        extras += [f"{started} started"] if started > up else []
        for extra in extras:  # what fits, the tree's memory first
            if len(label) + 2 + len(extra) <= width:
                label += ", " + extra
        return label
