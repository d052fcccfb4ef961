"""How long the training process's GPU sat idle, and how much of that the loop spent waiting for data.

One ``GpuIdle`` per worker count, measured by ``loadertop.core.measure.gpu_idle`` from NVML's utilisation
samples and the loop's batches (how "idle" is defined is there). Both shares are of the wall time the
samples cover of that count's batches: ``idle_share`` the GPU ran no kernel, ``idle_waiting_share`` it ran
none while the loop was blocked in ``next()``, so ``idle_waiting_share <= idle_share``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FULL_COVERAGE = 0.9
"""Samples covering less of the batches' wall time than this are said to (``GpuIdle.line``)."""


@dataclass(frozen=True, slots=True)
class GpuIdle:
    """A worker count's GPU idle time, summed over its batches.

    Attributes:
        num_workers: the worker count the batches were made with.
        covered_s: wall seconds of the count's batches that NVML's samples cover (the denominator).
        idle_s: of those, seconds the GPU ran no kernel.
        waiting_s: of ``covered_s``, seconds the loop was blocked in ``next()``.
        idle_waiting_s: of ``waiting_s``, seconds the GPU ran no kernel.
        gpu: the NVML index of the GPU measured.
        wall_s: wall seconds of the count's batches in all, covered or not (0: not known).
    """

    num_workers: int
    covered_s: float
    idle_s: float
    waiting_s: float
    idle_waiting_s: float
    gpu: int = 0
    wall_s: float = 0.0

    @property
    def idle_share(self) -> float | None:
        """The share of the covered wall time the GPU was idle (None: nothing covered yet)."""
        return self.idle_s / self.covered_s if self.covered_s > 0 else None

    @property
    def idle_waiting_share(self) -> float | None:
        """The share of the covered wall time the GPU was idle while the loop waited for data."""
        return self.idle_waiting_s / self.covered_s if self.covered_s > 0 else None

    @property
    def coverage(self) -> float | None:
        """The share of the batches' wall time the samples cover (None: not known)."""
        return min(self.covered_s / self.wall_s, 1.0) if self.wall_s > 0 else None

    def line(self) -> str:
        """In words: ``"GPU 0 idle 41% of the time, 38% while waiting for data"`` (both shares of the wall time),
        and how much of the batches' time the samples cover where that is under ``FULL_COVERAGE``."""
        idle, waiting = self.idle_share, self.idle_waiting_share
        if idle is None or waiting is None:
            return f"GPU {self.gpu} idle: no utilisation samples cover these batches yet"
        text = f"GPU {self.gpu} idle {idle:.0%} of the time, {waiting:.0%} while waiting for data"
        coverage = self.coverage
        if coverage is not None and coverage < FULL_COVERAGE:
            text += f" (samples cover {coverage:.0%} of it)"
        return text

    def to_wire(self) -> dict[str, Any]:
        """The figures as JSON (``--record``'s ``gpu_idle`` event, without ``"event"``), seconds rounded to µs."""
        idle, waiting = self.idle_share, self.idle_waiting_share
        return {
            "num_workers": self.num_workers,
            "gpu": self.gpu,
            "covered_s": round(self.covered_s, 6),
            "idle_s": round(self.idle_s, 6),
            "waiting_s": round(self.waiting_s, 6),
            "idle_waiting_s": round(self.idle_waiting_s, 6),
            "wall_s": round(self.wall_s, 6),
            "idle_share": None if idle is None else round(idle, 4),
            "idle_waiting_share": None if waiting is None else round(waiting, 4),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> GpuIdle:
        """Read ``to_wire``'s dict back (the shares are derived, not read).

        Raises:
            ValueError: a field missing or of the wrong type.
        """
        try:
            workers, gpu = data["num_workers"], data.get("gpu", 0)
            seconds = [data[name] for name in ("covered_s", "idle_s", "waiting_s", "idle_waiting_s")]
            seconds.append(data.get("wall_s", 0.0))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"gpu_idle figures: missing {exc}") from None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (workers, gpu)):
            raise ValueError("gpu_idle figures: num_workers and gpu must be integers")
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in seconds):
            raise ValueError("gpu_idle figures: the seconds must be numbers >= 0")
        covered, idle, waiting, idle_waiting, wall = (float(v) for v in seconds)
        return cls(workers, covered, idle, waiting, idle_waiting, gpu=gpu, wall_s=wall)
