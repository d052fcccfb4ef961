"""What a front-end sees and what it may ask: ``SessionView`` and ``SessionLike``. No torch here.

A live ``loadertop.core.session.Session``, a ``loadertop.core.replay.ReplaySession`` (and later a
remote session over the protocol) all serve these, so the TUI never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from loadertop.core.advice import Advice
from loadertop.core.config import LoaderConfig
from loadertop.core.status import TrainerStatus
from loadertop.core.store import StoreSnapshot
from loadertop.core.sweep import DEFAULT_BATCHES, SweepProgress
from loadertop.core.system import SystemSnapshot


@dataclass(frozen=True, slots=True)
class SessionView:
    """Everything a display shows at one moment; immutable, safe to keep.

    Attributes:
        workload_name: the workload's name.
        notes: facts to show beside it (e.g. a simulated storage latency).
        status: the trainer's state, configuration and progress.
        store: the recorded batches, (re)starts and per-configuration summaries.
        system: the latest system sample (None before the first).
        gpu_status: ``"1 NVIDIA GPU"``, ``"no NVIDIA GPU: <reason>"``, or ``"sampling"`` before the first sample.
        advice: the fastest and the recommended configuration, with warnings (None in old recordings).
        sweep: the sweep's progress, once one was started.
    """

    workload_name: str
    notes: tuple[str, ...]
    status: TrainerStatus
    store: StoreSnapshot
    system: SystemSnapshot | None
    gpu_status: str
    advice: Advice | None = None
    sweep: SweepProgress | None = None


class SessionLike(Protocol):
    """What a front-end needs: views and commands (a live Session or a replay)."""

    def start(self) -> None: ...
    def view(self) -> SessionView: ...
    def apply(self, config: LoaderConfig) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> list[int]: ...
    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None: ...
    def cancel_sweep(self) -> None: ...
