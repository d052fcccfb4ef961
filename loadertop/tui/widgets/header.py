"""The header: workload, device, the limits confining it, running configuration, state, progress, elapsed time,
samples/s."""

from __future__ import annotations

import math
import re

from rich.text import Text

from loadertop.core.measure.limits import Limits
from loadertop.core.policy.advice import recent_stats
from loadertop.core.policy.autotune import TunerStatus
from loadertop.core.protocol.messages import TunerState
from loadertop.core.protocol.status import TrainerState
from loadertop.tui.plot import meter
from loadertop.tui.widgets.base import ViewWidget

STATE_STYLES = {
    TrainerState.IDLE: "dim",
    TrainerState.STARTING: "bold yellow",
    TrainerState.RUNNING: "bold green",
    TrainerState.PAUSED: "bold yellow",
    TrainerState.RESTARTING: "bold yellow",
    TrainerState.STOPPING: "bold yellow",
    TrainerState.FINISHED: "bold cyan",
    TrainerState.STOPPED: "bold",
    TrainerState.ERROR: "bold red",
}


def format_duration(seconds: float) -> str:
    """``1:02:03`` or ``02:03``."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes:02}:{secs:02}"


def autotune_text(tuner: TunerStatus | None) -> str:
    """``autotune: settled at 8 workers`` (``measuring 3 workers``, ``switching to 5``); empty while it is off."""
    if tuner is None or tuner.state == TunerState.OFF:
        return ""
    workers = tuner.workers
    if workers is None:
        return f"autotune: {tuner.state}"
    if tuner.state == TunerState.SETTLED:
        return f"autotune: settled at {workers} worker{'s' if workers != 1 else ''}"
    if tuner.state == TunerState.SWITCHING:
        return f"autotune: switching to {workers}"
    return f"autotune: {tuner.state} {workers} worker{'s' if workers != 1 else ''}"


def _short(source: str) -> str:
    """A limit's source in a few words: ``cgroup v2 quota`` -> ``cgroup quota``, ``cgroup v1 memory limit`` ->
    ``cgroup limit``."""
    source = re.sub(r"^cgroup v\d ", "cgroup ", source)
    return {"cgroup memory limit": "cgroup limit", "cgroup memory.max": "cgroup limit"}.get(source, source)


def limits_text(limits: Limits | None, *, short: bool = False) -> str:
    """What confines the training: ``1.5 of 64 cores: cgroup quota``, ``3.0 of 24.0 GiB: cgroup limit``, both
    ``1.5 of 64 cores, 3.0 GiB: cgroup``; ``short`` leaves the host's figures out (``1.5 cores: cgroup quota``)
    to fit 80 columns. Empty where nothing confines it."""
    if limits is None:
        return ""
    of_cores = "" if short else f" of {limits.host_cores}"
    cores = f"{round(limits.cores, 2):g}{of_cores} cores" if limits.cores_confined else ""
    gib = limits.memory_total_bytes / 2**30
    if not limits.memory_confined:
        return f"{cores}: {_short(limits.cores_source)}" if cores else ""
    memory_source = _short(limits.memory_source)
    if not cores:
        of_memory = "" if short else f" of {limits.host_memory_total_bytes / 2**30:.1f}"
        return f"{gib:.1f}{of_memory} GiB: {memory_source}"
    cores_source = _short(limits.cores_source)
    if cores_source.startswith("cgroup") and memory_source.startswith("cgroup"):
        return f"{cores}, {gib:.1f} GiB: cgroup"
    return f"{cores}: {cores_source}, {gib:.1f} GiB: {memory_source}"


class RunHeader(ViewWidget):
    """Two lines: what runs where and in which state (and the autotuner's); then progress, time and throughput."""

    follows = "status"

    DEFAULT_CSS = """
    RunHeader { height: 2; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def render(self) -> Text:
        view = self.view
        if view is None:
            return Text("loadertop — starting…")
        status = view.status
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("loadertop", "bold")
        line.append(" │ ")
        line.append(status.config.describe(), "bold")
        line.append(" │ ")
        line.append(status.state.value.upper(), STATE_STYLES.get(status.state, ""))
        tuning = autotune_text(view.autotune)
        if tuning:
            line.append(" │ ")
            line.append(tuning, "bold magenta")
        line.append(f" │ {status.device}")
        limits = view.machine.limits if view.machine is not None else None
        confined = limits_text(limits)
        if confined:  # before the workload's name, which the ellipsis may cut; the host's figures where they fit
            if line.cell_len + 3 + len(confined) >= self.size.width:
                confined = limits_text(limits, short=True)
            line.append(" │ ")
            line.append(confined, "yellow")
        line.append(f" │ {view.workload_name}")
        for note in view.notes:
            line.append(f" ({note})", "dim")
        line.append("\n")

        done = status.batch_in_epoch / status.batches_per_epoch if status.batches_per_epoch else 0.0
        bar_w = max(6, min(24, self.size.width // 6))
        # A script's epochs are its own business: their number is known, their total is not.
        line.append(f"epoch {status.epoch}/{status.epochs} " if status.epochs else f"epoch {status.epoch} ")
        line.append("▕" + meter(done * 100, bar_w) + "▏", "cyan")
        of = f"/{status.batches_per_epoch}" if status.batches_per_epoch else ""
        line.append(f" {status.batch_in_epoch}{of}  step {status.step}")
        if status.max_batches is not None:
            line.append(f"/{status.max_batches}")
        line.append(f"  │ {format_duration(status.elapsed_s)}")
        stats = recent_stats(view.store.records, status.config.key)
        if not math.isnan(stats.samples_per_s):
            line.append("  │ ")
            line.append(f"{stats.samples_per_s:,.0f} samples/s", "bold")
        if status.nonfinite_steps:
            line.append("  │ ")
            line.append(
                f"⚠ loss NaN/inf from step {status.first_nonfinite_step} "
                f"({status.nonfinite_steps} batch{'es' if status.nonfinite_steps != 1 else ''})",
                "bold red",
            )
        return line
