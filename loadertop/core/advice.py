"""Reading the measurements: input-bound or compute-bound, the fastest configuration, recent-batch statistics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadertop.core.records import BatchRecord
from loadertop.core.store import ConfigSummary, percentile

INPUT_BOUND_SHARE = 0.10
"""A step that waits for data more than this share of its iteration is input-bound."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Which side limits the iteration.

    Attributes:
        input_bound: the step waits for data more than ``INPUT_BOUND_SHARE`` of the time.
        load_share: load / (load + compute), 0..1.
    """

    input_bound: bool
    load_share: float

    @property
    def label(self) -> str:
        """``"input-bound"`` or ``"compute-bound"``."""
        return "input-bound" if self.input_bound else "compute-bound"

    def sentence(self) -> str:
        """The verdict in words, e.g. ``input-bound: the step waits for data 44% of the time``."""
        return f"{self.label}: the step waits for data {self.load_share * 100:.0f}% of the time"


def verdict(load_ms: float, compute_ms: float) -> Verdict | None:
    """The verdict for mean load and compute times; None when they are unknown."""
    total = load_ms + compute_ms
    if math.isnan(total) or total <= 0:
        return None
    share = load_ms / total
    return Verdict(input_bound=share > INPUT_BOUND_SHARE, load_share=share)


def fastest(summaries: Iterable[ConfigSummary]) -> ConfigSummary | None:
    """The configuration with the most samples per second (None before any measured batch)."""
    return max(
        (s for s in summaries if s.batches and not math.isnan(s.samples_per_s)),
        key=lambda s: s.samples_per_s,
        default=None,
    )


@dataclass(frozen=True, slots=True)
class RecentStats:
    """Load and compute over the latest steady-state batches of one configuration."""

    batches: int
    load_ms_mean: float
    load_ms_p95: float
    compute_ms_mean: float
    compute_ms_p95: float
    samples_per_s: float

    @property
    def verdict(self) -> Verdict | None:
        """Input-bound or compute-bound over these batches."""
        return verdict(self.load_ms_mean, self.compute_ms_mean)


def recent_stats(records: Sequence[BatchRecord], config_key: str, *, window: int = 50) -> RecentStats:
    """Rolling mean and p95 over the last ``window`` non-warm-up batches of ``config_key``.

    Only the batches since the configuration last started count, so a switch shows
    its own figures at once instead of a blend with the previous worker count.
    """
    chosen: list[BatchRecord] = []
    for record in reversed(records):
        if record.config_key != config_key:
            break
        if not record.warmup:
            chosen.append(record)
            if len(chosen) == window:
                break
    load = [r.load_s * 1000 for r in chosen]
    compute = [r.compute_s * 1000 for r in chosen]
    busy_s = sum(r.iter_s for r in chosen)
    return RecentStats(
        batches=len(chosen),
        load_ms_mean=sum(load) / len(load) if load else math.nan,
        load_ms_p95=percentile(load, 95),
        compute_ms_mean=sum(compute) / len(compute) if compute else math.nan,
        compute_ms_p95=percentile(compute, 95),
        samples_per_s=sum(r.samples for r in chosen) / busy_s if busy_s > 0 else math.nan,
    )
