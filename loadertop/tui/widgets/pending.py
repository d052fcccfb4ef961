"""The pending configuration and what ``r`` will do with it, always in sight."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.view import SessionView
from loadertop.tui.plot import meter
from loadertop.tui.widgets.base import ViewWidget


def describe_change(current: LoaderConfig, pending: LoaderConfig) -> str:
    """What differs, e.g. ``2 → 4 workers, batch 32 → 64``."""
    parts = []
    if pending.num_workers != current.num_workers:
        parts.append(f"{current.num_workers} → {pending.num_workers} workers")
    if pending.batch_size != current.batch_size:
        parts.append(f"batch {current.batch_size} → {pending.batch_size}")
    for name, label in (("pin_memory", "pin_memory"), ("persistent_workers", "persistent")):
        if getattr(pending, name) != getattr(current, name):
            parts.append(f"{label} {'on' if getattr(pending, name) else 'off'}")
    if pending.prefetch_factor != current.prefetch_factor:
        parts.append(f"prefetch {pending.prefetch_factor or 'default'}")
    if pending.start_method != current.start_method:
        parts.append(f"start {pending.start_method or 'default'}")
    if pending.timeout_s != current.timeout_s:
        parts.append(f"timeout {pending.timeout_s:g} s" if pending.timeout_s else "no timeout")
    return ", ".join(parts)


class PendingBar(ViewWidget):
    """``next: 4 workers, batch 32 — r: hot-restart 2 → 4 workers``."""

    follows = "status"

    DEFAULT_CSS = """
    PendingBar { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    pending: reactive[LoaderConfig | None] = reactive(None)
    """The configuration ``r`` applies (the app owns it; None until the first view)."""

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        view, pending = self.view, self.pending
        if view is None or pending is None:
            return text
        status = view.status
        sweep = view.sweep
        if sweep is not None and sweep.state == "running" and not status.state.is_done:
            current = sweep.current
            text.append("sweep ", "bold")
            if sweep.extending:  # the first measurements could not tell these counts apart
                text.append(
                    f"measuring longer {sweep.index - sweep.planned + 1}/{len(sweep.counts) - sweep.planned}: ",
                    "bold yellow",
                )
            else:
                text.append(f"{sweep.index + 1}/{len(sweep.counts)}: ", "bold")
            text.append(
                f"{current} worker{'s' if current != 1 else ''}, "
                f"{sweep.batches_done}/{sweep.batches_per_count} batches "
            )
            text.append("▕" + meter(sweep.fraction * 100, 12) + "▏", "cyan")
            text.append("  Esc cancels (keeps what was measured)", "dim")
            return text
        script = view.script
        if script is not None:
            self._draw_script(text, view, pending)
            return text
        text.append("next: ")
        text.append(pending.describe(), "bold reverse")
        text.append("  ")
        change = describe_change(status.config, pending)
        if status.state.is_done:
            verb = "retry" if status.error is not None else "train again"
            text.append("r: ", "bold")
            text.append(f"{verb} with {pending.describe()}")
        elif change:
            text.append("r: ", "bold")
            text.append(f"hot-restart {change}", "bold yellow")
        else:
            text.append("r: nothing to change (+/- 0-9: workers, c: settings, s: sweep)", "dim")
        return text

    @staticmethod
    def _draw_script(text: Text, view: SessionView, pending: LoaderConfig) -> None:
        """A script's loader: what r switches, or why nothing can be."""
        script, status = view.script, view.status
        assert script is not None
        if script.ended is not None:
            text.append(f"{script.ended}: the history stays; q quits", "bold")
            return
        if not script.loaders:
            text.append("no DataLoader yet", "bold yellow")
            text.append(" — the script's process is watched; its loaders appear once it creates them", "dim")
            return
        loader = next((info for info in script.loaders if info.name == script.selected), script.loaders[0])
        text.append(f"{loader.name}{' (training)' if loader.training else ''}: ", "bold")
        text.append(f"{pending.num_workers} worker{'s' if pending.num_workers != 1 else ''}", "bold reverse")
        text.append("  ")
        if loader.pending is not None:
            when = "at its next batch" if loader.exact else "at its next epoch (IterableDataset)"
            text.append(f"switching to {loader.pending} {when}", "bold yellow")
        elif pending.num_workers != status.config.num_workers:
            when = "" if loader.exact else " at the next epoch (an IterableDataset cannot change mid-epoch)"
            text.append("r: ", "bold")
            text.append(f"switch {status.config.num_workers} → {pending.num_workers} workers{when}", "bold yellow")
        else:
            text.append("r: nothing to change (+/- 0-9: workers, l: next loader, d: detach)", "dim")
        if "controls" in script.control and not script.control.startswith("this"):
            text.append(f"  {script.control}", "bold red")
