"""Thread-safe metrics: recent batch records and per-configuration aggregates."""

from __future__ import annotations

import math
import statistics
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from loadertop.core.config import LoaderConfig
from loadertop.core.records import BatchRecord, StartEvent


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True, slots=True)
class ConfigSummary:
    """Steady-state figures of one loader configuration over the whole run.

    Warm-up batches (the first ``max(1, num_workers)`` after each start or hot
    restart, made while the workers started) are counted apart and excluded from
    every mean and percentile. Epoch boundaries are included: every epoch pays
    for them. ``startup_ms`` is the mean time from ``iter(loader)`` to the first
    batch over the starts and restarts of this configuration. ``cpu_percent`` is
    the process tree's mean CPU (100 = one core) and ``rss_mb`` its peak resident
    memory while this configuration ran, from the system sampler (NaN without one).
    ``iter_ms_std`` is the standard deviation of the iteration time (for noise estimates).
    """

    key: str
    config: LoaderConfig
    batches: int
    warmup_batches: int
    samples: int
    load_ms_mean: float
    load_ms_p95: float
    compute_ms_mean: float
    compute_ms_p95: float
    iter_ms_mean: float
    iter_ms_p95: float
    samples_per_s: float
    startup_ms: float
    starts: int
    cpu_percent: float = math.nan
    rss_mb: float = math.nan
    iter_ms_std: float = math.nan

    @property
    def num_workers(self) -> int:
        """The configuration's worker count."""
        return self.config.num_workers

    @property
    def iter_ms_sem(self) -> float:
        """Standard error of the mean iteration time (NaN with fewer than 2 batches)."""
        return self.iter_ms_std / math.sqrt(self.batches) if self.batches > 1 else math.nan

    @property
    def load_share(self) -> float:
        """Share of the iteration spent waiting for data (0..1), NaN before any batch."""
        if not self.batches or not self.iter_ms_mean:
            return math.nan
        return self.load_ms_mean / self.iter_ms_mean


class _ConfigAccumulator:
    """Mutable per-configuration totals; only touched under the store's lock."""

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.load_s = array("d")
        self.compute_s = array("d")
        self.samples = 0
        self.warmup_batches = 0
        self.startup_s = array("d")
        self.cpu_percent_sum = 0.0
        self.cpu_samples = 0
        self.rss_peak_bytes = 0

    def add(self, record: BatchRecord) -> None:
        if record.warmup:
            self.warmup_batches += 1
            return
        self.load_s.append(record.load_s)
        self.compute_s.append(record.compute_s)
        self.samples += record.samples

    def copy(self) -> _ConfigAccumulator:
        """A private copy (arrays copy as one memcpy), so summaries are computed outside the lock."""
        twin = _ConfigAccumulator(self.config)
        twin.load_s = array("d", self.load_s)
        twin.compute_s = array("d", self.compute_s)
        twin.samples = self.samples
        twin.warmup_batches = self.warmup_batches
        twin.startup_s = array("d", self.startup_s)
        twin.cpu_percent_sum = self.cpu_percent_sum
        twin.cpu_samples = self.cpu_samples
        twin.rss_peak_bytes = self.rss_peak_bytes
        return twin

    def summary(self) -> ConfigSummary:
        loads = self.load_s
        computes = self.compute_s
        iters = [a + b for a, b in zip(loads, computes, strict=True)]
        total_s = sum(iters)
        return ConfigSummary(
            key=self.config.key,
            config=self.config,
            batches=len(loads),
            warmup_batches=self.warmup_batches,
            samples=self.samples,
            load_ms_mean=_mean(loads) * 1000.0,
            load_ms_p95=percentile(loads, 95) * 1000.0,
            compute_ms_mean=_mean(computes) * 1000.0,
            compute_ms_p95=percentile(computes, 95) * 1000.0,
            iter_ms_mean=_mean(iters) * 1000.0,
            iter_ms_p95=percentile(iters, 95) * 1000.0,
            samples_per_s=self.samples / total_s if total_s > 0 else math.nan,
            startup_ms=_mean(self.startup_s) * 1000.0,
            starts=len(self.startup_s),
            cpu_percent=self.cpu_percent_sum / self.cpu_samples if self.cpu_samples else math.nan,
            rss_mb=self.rss_peak_bytes / (1024 * 1024) if self.cpu_samples else math.nan,
            iter_ms_std=statistics.stdev(iters) * 1000.0 if len(iters) > 1 else math.nan,
        )


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """An immutable view of the store, safe to hand to another thread."""

    records: tuple[BatchRecord, ...]
    starts: tuple[StartEvent, ...]
    summaries: tuple[ConfigSummary, ...]
    total_batches: int
    version: int


class MetricsStore:
    """Collects records from the training thread; any thread may take snapshots.

    Args:
        max_recent: how many of the latest batch records to keep (older ones
            still count in the per-configuration aggregates).
    """

    def __init__(self, *, max_recent: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._recent: deque[BatchRecord] = deque(maxlen=max_recent)
        self._starts: list[StartEvent] = []
        self._configs: dict[str, _ConfigAccumulator] = {}
        self._total = 0
        self._version = 0

    def _accumulator(self, config: LoaderConfig) -> _ConfigAccumulator:
        acc = self._configs.get(config.key)
        if acc is None:
            acc = self._configs[config.key] = _ConfigAccumulator(config)
        return acc

    def add_start(self, event: StartEvent) -> None:
        """Record a loader (re)start and its start-up time."""
        with self._lock:
            self._starts.append(event)
            if event.reason != "epoch":  # epoch boundaries are part of the steady state
                self._accumulator(event.config).startup_s.append(event.startup_s)
            self._version += 1

    def add_cost(self, config: LoaderConfig, cpu_percent: float, rss_bytes: int) -> None:
        """Account one system sample (process-tree CPU% and RSS) to ``config``."""
        with self._lock:
            acc = self._accumulator(config)
            acc.cpu_percent_sum += cpu_percent
            acc.cpu_samples += 1
            acc.rss_peak_bytes = max(acc.rss_peak_bytes, rss_bytes)
            self._version += 1

    def add(self, record: BatchRecord, config: LoaderConfig) -> None:
        """Record one batch measured under ``config``."""
        with self._lock:
            self._recent.append(record)
            self._accumulator(config).add(record)
            self._total += 1
            self._version += 1

    @property
    def version(self) -> int:
        """Grows with every change; lets a reader skip redrawing when nothing is new."""
        return self._version

    def starts(self) -> tuple[StartEvent, ...]:
        """Every loader (re)start so far, oldest first."""
        with self._lock:
            return tuple(self._starts)

    def summaries(self) -> tuple[ConfigSummary, ...]:
        """One summary per configuration, in the order they were first used."""
        with self._lock:
            accs = [acc.copy() for acc in self._configs.values()]
        return tuple(acc.summary() for acc in accs)

    def snapshot(self, *, last: int | None = None) -> StoreSnapshot:
        """Copy the recent records (the ``last`` ones, or all kept), the starts and the summaries."""
        with self._lock:
            if last is None or last >= len(self._recent):
                records = tuple(self._recent)
            else:
                records = tuple(list(self._recent)[-last:])
            starts = tuple(self._starts)
            accs = [acc.copy() for acc in self._configs.values()]
            total, version = self._total, self._version
        return StoreSnapshot(
            records=records,
            starts=starts,
            summaries=tuple(acc.summary() for acc in accs),
            total_batches=total,
            version=version,
        )
