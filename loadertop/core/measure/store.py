"""Thread-safe metrics: recent batch records and per-configuration aggregates."""

from __future__ import annotations

import math
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from loadertop.core.measure.cost import TreeCpu
from loadertop.core.measure.memory import SOURCE_RSS, SOURCE_SMAPS, TreeMemory
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.records import BatchRecord, StartEvent


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


def _variance(values: Sequence[float]) -> float:
    """Sample variance in floats (``statistics.variance`` is exact and slow: this runs at every redraw)."""
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


@dataclass(frozen=True, slots=True)
class ConfigSummary:
    """Steady-state figures of one loader configuration over the whole run.

    Warm-up batches (the first ``max(1, num_workers)`` after each start or hot
    restart, made while the workers started) are counted apart and excluded from
    every mean and percentile. Epoch boundaries are included: every epoch pays
    for them. ``startup_ms`` is the mean time from ``iter(loader)`` to the first
    batch over the starts and restarts of this configuration.

    The cost comes from CPU accounting at the configuration's boundaries (start, hot
    restart, pause, stop), not from samples: ``cpu_s`` is every CPU-second the training
    process tree spent while it ran (its workers' start-up and warm-up included, and
    workers that exited, reaped children being counted by the kernel), ``wall_s`` the
    wall time it ran, ``cpu_percent`` their ratio (100 = one core), ``cpu_s_per_sample``
    what one delivered sample cost the whole tree (loading and training together), and
    ``worker_cpu_share`` the share of ``cpu_s`` spent in child processes (the workers).
    Memory comes from the system samples (``loadertop.core.measure.memory``): ``pss_mb`` is THE memory figure,
    the tree's mean PSS (each page counted once, however many workers share it) over the samples
    taken with all the configuration's workers up, ``pss_mb_peak`` its peak over every sample;
    ``worker_uss_mb`` is the mean USS of one worker (what only it holds: what one more costs), and
    ``worker_uss_growth_mb_per_min`` how fast a worker's USS grew over its life (copy-on-write of the
    pages it shares with the main process, in MB a minute: USS change over the time between its first
    and latest readings, summed over the workers read at least ``GROWTH_MIN_SPAN_S`` apart).
    ``extra_mb_per_worker`` is measured against the configuration with the fewest workers and the
    same other settings: the rise in mean PSS per added worker (NaN for that one itself).
    ``memory_source`` is ``"smaps_rollup"`` when every sample read PSS and USS exactly, ``"rss"`` when
    some process's could not be read (then those figures are its RSS, upper bounds; ``memory_note``
    says why), empty before any sample. ``rss_mb`` is the tree's peak summed RSS (kept for comparison: it
    counts the pages workers share with the main process once per worker), read at each system sample
    and at each boundary. ``samples_per_s_sem`` is the standard error of ``samples_per_s``: block means
    of the steady batches, with the pipeline refill at epoch starts as its own stratum.
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
    wall_s: float = math.nan
    cpu_s: float = math.nan
    cpu_s_per_sample: float = math.nan
    worker_cpu_share: float = math.nan
    samples_per_s_sem: float = math.nan
    pss_mb: float = math.nan
    pss_mb_peak: float = math.nan
    worker_uss_mb: float = math.nan
    worker_uss_growth_mb_per_min: float = math.nan
    extra_mb_per_worker: float = math.nan
    memory_source: str = ""
    memory_note: str = ""

    @property
    def num_workers(self) -> int:
        """The configuration's worker count."""
        return self.config.num_workers

    @property
    def load_share(self) -> float:
        """Share of the iteration spent waiting for data (0..1), NaN before any batch."""
        if not self.batches or not self.iter_ms_mean:
            return math.nan
        return self.load_ms_mean / self.iter_ms_mean


MIB = 1024 * 1024
GROWTH_MIN_SPAN_S = 2.0
"""A worker's USS growth counts once two of its readings are at least this far apart."""


def refill_batches(num_workers: int) -> int:
    """Batches at the start of an epoch that carry the pipeline's refill (a new epoch's first batches)."""
    return max(1, num_workers)


def block_size(num_workers: int) -> int:
    """Steady batches per block for the batch-means error: workers deliver in turns, so a block spans them."""
    return max(5, num_workers)


def throughput_sem(iters: Sequence[float], refill: Sequence[int], samples: int, block: int) -> float:
    """Standard error of ``samples / sum(iters)`` (NaN when it cannot be told: fewer than 3 blocks).

    Steady batches are grouped into blocks of consecutive batches whose means are close
    to independent (batch means); batches that refill the pipeline at an epoch start are
    a stratum of their own, so their size does not pass for noise. Where epoch starts fall
    in the measured window is itself uncertain (one more or one fewer): that adds a
    quarter of one refill's extra cost squared to the variance of the total.
    """
    steady = [t for t, r in zip(iters, refill, strict=True) if not r]
    refills = [t for t, r in zip(iters, refill, strict=True) if r]
    total = sum(iters)
    blocks = [sum(steady[i : i + block]) / block for i in range(0, len(steady) - block + 1, block)]
    if len(blocks) < 3 or total <= 0:
        return math.nan
    var_total = len(steady) ** 2 * _variance(blocks) / len(blocks)
    if len(refills) > 1:
        var_total += len(refills) * _variance(refills)
    if refills:
        epoch_starts = max(1, len([1 for a, b in zip((0, *refill), refill, strict=False) if b and not a]))
        extra = (sum(refills) - len(refills) * _mean(steady)) / epoch_starts
        var_total += 0.25 * extra**2
    return samples * math.sqrt(var_total) / total**2  # d(samples / total) = samples / total**2 * d(total)


class _ConfigAccumulator:
    """Mutable per-configuration totals; only touched under the store's lock."""

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.load_s = array("d")
        self.compute_s = array("d")
        self.refill = array("b")  # 1 for a steady batch that refills the pipeline at an epoch start
        self.samples = 0
        self.all_samples = 0  # warm-up batches included: what the accounted CPU paid for
        self.warmup_batches = 0
        self.startup_s = array("d")
        self.rss_peak_bytes = 0
        self.cpu_s = 0.0
        self.children_cpu_s = 0.0
        self.wall_s = 0.0
        self.accounted = False  # a boundary reading was taken at least once
        self.pss_peak_bytes = 0
        self.pss_sum_bytes = 0.0  # over the samples with all workers up
        self.pss_samples = 0
        self.uss_sum_bytes = 0.0  # the mean worker's USS, summed over those samples
        self.uss_first: dict[int, tuple[float, int]] = {}  # worker pid -> (measured_at, USS) of its first reading
        self.uss_last: dict[int, tuple[float, int]] = {}  # ... and of its latest
        self.memory_inexact = False
        self.memory_note = ""

    def add(self, record: BatchRecord) -> None:
        self.all_samples += record.samples
        if record.warmup:
            self.warmup_batches += 1
            return
        self.load_s.append(record.load_s)
        self.compute_s.append(record.compute_s)
        self.refill.append(int(record.batch_in_epoch <= refill_batches(record.num_workers)))
        self.samples += record.samples

    def credit(self, start: TreeCpu, end: TreeCpu) -> None:
        """Add the CPU and wall time between two readings."""
        self.cpu_s += max(end.total_s - start.total_s, 0.0)
        self.children_cpu_s += max(end.children_s - start.children_s, 0.0)
        self.wall_s += max(end.time - start.time, 0.0)
        self.rss_peak_bytes = max(self.rss_peak_bytes, start.rss_bytes, end.rss_bytes)
        self.accounted = True

    def add_memory(self, memory: TreeMemory) -> None:
        """A system sample's memory of the tree while this configuration ran."""
        self.pss_peak_bytes = max(self.pss_peak_bytes, memory.pss_bytes)
        if not memory.exact:
            self.memory_inexact = True
            self.memory_note = memory.note
        for worker in memory.workers:  # each worker's growth over its life, from its first reading on
            self.uss_first.setdefault(worker.pid, (worker.measured_at, worker.uss_bytes))
            self.uss_last[worker.pid] = (worker.measured_at, worker.uss_bytes)
        if len(memory.workers) != self.config.num_workers:
            return  # workers starting or exiting (a switch, an epoch's end): not this configuration's steady state
        self.pss_sum_bytes += memory.pss_bytes
        self.pss_samples += 1
        if memory.workers:
            self.uss_sum_bytes += sum(w.uss_bytes for w in memory.workers) / len(memory.workers)

    def uss_growth_bytes_per_s(self) -> float:
        """The workers' USS growth: its change over the time between first and latest readings, summed (NaN: none)."""
        grown = spent = 0.0
        for pid, (t0, uss0) in self.uss_first.items():
            t1, uss1 = self.uss_last[pid]
            if t1 - t0 >= GROWTH_MIN_SPAN_S:
                grown += uss1 - uss0
                spent += t1 - t0
        return grown / spent if spent else math.nan

    def signature(self) -> tuple[float, ...]:
        """What the summary depends on, in a few numbers: equal signatures, equal summaries."""
        return (
            len(self.load_s),
            self.warmup_batches,
            self.all_samples,
            len(self.startup_s),
            self.rss_peak_bytes,
            self.cpu_s,
            self.children_cpu_s,
            self.wall_s,
            self.accounted,
            self.pss_peak_bytes,
            self.pss_samples,
            self.memory_inexact,
            len(self.uss_first),
            sum(t for t, _ in self.uss_last.values()),
        )

    def copy(self) -> _ConfigAccumulator:
        """A private copy (arrays copy as one memcpy), so summaries are computed outside the lock."""
        twin = _ConfigAccumulator(self.config)
        for name, value in vars(self).items():
            if isinstance(value, array):
                value = array(value.typecode, value)
            elif isinstance(value, dict):
                value = dict(value)
            setattr(twin, name, value)
        return twin

    def summary(self) -> ConfigSummary:
        loads = self.load_s
        computes = self.compute_s
        iters = [a + b for a, b in zip(loads, computes, strict=True)]
        total_s = sum(iters)
        cost = self.accounted and self.wall_s > 0
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
            cpu_percent=100.0 * self.cpu_s / self.wall_s if cost else math.nan,
            rss_mb=self.rss_peak_bytes / (1024 * 1024) if self.rss_peak_bytes else math.nan,
            wall_s=self.wall_s if cost else math.nan,
            cpu_s=self.cpu_s if cost else math.nan,
            cpu_s_per_sample=self.cpu_s / self.all_samples if cost and self.all_samples else math.nan,
            worker_cpu_share=self.children_cpu_s / self.cpu_s if cost and self.cpu_s > 0 else math.nan,
            samples_per_s_sem=throughput_sem(iters, self.refill, self.samples, block_size(self.config.num_workers)),
            pss_mb=self.pss_sum_bytes / self.pss_samples / MIB if self.pss_samples else math.nan,
            pss_mb_peak=self.pss_peak_bytes / MIB if self.pss_peak_bytes else math.nan,
            worker_uss_mb=(
                self.uss_sum_bytes / self.pss_samples / MIB
                if self.pss_samples and self.config.num_workers
                else math.nan
            ),
            worker_uss_growth_mb_per_min=self.uss_growth_bytes_per_s() * 60 / MIB,
            memory_source=(SOURCE_RSS if self.memory_inexact else SOURCE_SMAPS) if self.pss_peak_bytes else "",
            memory_note=self.memory_note,
        )


def with_extra_memory(summaries: Sequence[ConfigSummary]) -> tuple[ConfigSummary, ...]:
    """The summaries with ``extra_mb_per_worker``: the rise in mean PSS per worker over the configuration with
    the fewest workers and the same other settings (measured: what the workers added to the whole tree)."""
    baselines: dict[LoaderConfig, ConfigSummary] = {}
    for s in summaries:
        if math.isnan(s.pss_mb):
            continue
        others = s.config.with_workers(0)
        if others not in baselines or s.num_workers < baselines[others].num_workers:
            baselines[others] = s
    out = []
    for s in summaries:
        base = baselines.get(s.config.with_workers(0))
        if base is not None and s.num_workers > base.num_workers and not math.isnan(s.pss_mb):
            s = replace(s, extra_mb_per_worker=(s.pss_mb - base.pss_mb) / (s.num_workers - base.num_workers))
        out.append(s)
    return tuple(out)


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
        self._open: tuple[str, TreeCpu] | None = None  # the configuration whose CPU is being accounted
        self._first_reading: TreeCpu | None = None
        self._latest_reading: TreeCpu | None = None
        self._samples_at_latest = 0  # the open configuration's samples when the latest reading was taken
        # key -> (signature, summary): a configuration that is not running is summed up once, not at every redraw.
        self._summary_cache: dict[str, tuple[tuple[float, ...], ConfigSummary]] = {}

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

    def open_cost(self, config: LoaderConfig, reading: TreeCpu) -> None:
        """``config`` starts running at ``reading``: its CPU is accounted from here until ``close_cost``."""
        with self._lock:
            self._accumulator(config)
            if self._first_reading is None:
                self._first_reading = reading
            self._open = (config.key, reading)
            self._latest_reading = reading
            self._samples_at_latest = self._configs[config.key].all_samples
            self._version += 1

    def close_cost(self, reading: TreeCpu) -> None:
        """The running configuration stops (a restart, a pause, the end): credit it up to ``reading``."""
        with self._lock:
            if self._open is None:
                return
            key, start = self._open
            self._configs[key].credit(start, reading)
            self._open = None
            self._latest_reading = reading
            self._version += 1

    def tick_memory(self, memory: TreeMemory) -> None:
        """A system sample's memory of the tree: counted toward the running configuration's figures."""
        with self._lock:
            if self._open is None:
                return
            self._configs[self._open[0]].add_memory(memory)
            self._version += 1

    def tick_cost(self, reading: TreeCpu) -> None:
        """A reading while running (the system sampler's): the open configuration's figures so far and peak RSS."""
        with self._lock:
            if self._open is None:
                return
            acc = self._configs[self._open[0]]
            acc.rss_peak_bytes = max(acc.rss_peak_bytes, reading.rss_bytes)
            self._latest_reading = reading
            self._samples_at_latest = acc.all_samples
            self._version += 1

    @property
    def cpu_before_first_config_s(self) -> float:
        """CPU-seconds the tree had used when the first configuration started (imports, set-up); NaN before."""
        reading = self._first_reading
        return reading.total_s if reading is not None else math.nan

    def _accumulators(self) -> list[_ConfigAccumulator]:
        """Private copies of every configuration's totals, the open one credited up to the latest reading."""
        accs = [acc.copy() for acc in self._configs.values()]
        if self._open is not None and self._latest_reading is not None:
            key, start = self._open
            if self._latest_reading.time > start.time:
                running = next(a for a in accs if a.config.key == key)
                running.credit(start, self._latest_reading)
                running.all_samples = self._samples_at_latest  # per-sample cost up to the reading, not past it
        return accs

    def add(self, record: BatchRecord, config: LoaderConfig) -> None:
        """Record one batch measured under ``config``."""
        with self._lock:
            self._recent.append(record)
            self._accumulator(config).add(record)
            self._total += 1
            self._version += 1

    def set_loss(self, step: int, loss: float, *, within: int = 1000) -> bool:
        """Give the record of ``step`` (among the latest ``within``) its loss, reported after it; False if not kept."""
        with self._lock:
            recent = self._recent
            for back in range(1, min(within, len(recent)) + 1):
                record = recent[-back]
                if record.step == step:
                    recent[-back] = replace(record, loss=loss)
                    self._version += 1
                    return True
                if record.step < step:
                    break
        return False

    @property
    def version(self) -> int:
        """Grows with every change; lets a reader skip redrawing when nothing is new."""
        return self._version

    def starts(self) -> tuple[StartEvent, ...]:
        """Every loader (re)start so far, oldest first."""
        with self._lock:
            return tuple(self._starts)

    def _summarize(self, accs: list[_ConfigAccumulator]) -> tuple[ConfigSummary, ...]:
        summaries = []
        for acc in accs:
            signature = acc.signature()
            cached = self._summary_cache.get(acc.config.key)
            if cached is None or cached[0] != signature:
                cached = self._summary_cache[acc.config.key] = (signature, acc.summary())
            summaries.append(cached[1])
        return with_extra_memory(summaries)

    def summaries(self) -> tuple[ConfigSummary, ...]:
        """One summary per configuration, in the order they were first used."""
        with self._lock:
            accs = self._accumulators()
        return self._summarize(accs)

    def snapshot(self, *, last: int | None = None) -> StoreSnapshot:
        """Copy the recent records (the ``last`` ones, or all kept), the starts and the summaries."""
        with self._lock:
            if last is None or last >= len(self._recent):
                records = tuple(self._recent)
            else:
                records = tuple(list(self._recent)[-last:])
            starts = tuple(self._starts)
            accs = self._accumulators()
            total, version = self._total, self._version
        return StoreSnapshot(
            records=records,
            starts=starts,
            summaries=self._summarize(accs),
            total_batches=total,
            version=version,
        )
