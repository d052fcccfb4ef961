"""One model of what a worker count delivers: the sweep's predicted curve and the autotuner's jumps.

From what is measured at one or more worker counts — the loop's step, the wait in ``next()``,
the CPU-seconds the whole process tree spends per sample, the memory each worker adds (its USS and
how fast that grows) — it
predicts the samples/s of every worker count under a CPU budget (cores) and a memory budget:

- with 0 workers the loop loads each batch itself: iteration = step + the time to make a batch;
- with n workers, n batches are made at once: the loop gets at most ``n / make_s`` batches a
  second, at most ``1 / step_s`` (the loop's own pace), and at most ``cores / cpu_per_batch``
  (the **ceiling**: every batch costs the tree that much CPU, loading and training together);
- a count whose workers would pass the memory budget is not predicted (``None``): each worker adds its
  USS (what only it holds: the pages it shares with the main process are not new), grown for
  ``MEMORY_HORIZON_S`` more at its measured rate.

``make_s``, the wall time one worker takes for a batch (its CPU and its waits on storage), is read
straight off a 0-worker measurement (the loop then waits exactly that long in ``next()``), or off
an input-bound one (n workers that keep the loop waiting deliver ``n / make_s`` batches a second);
a count that does not keep the loop waiting only bounds it from above. Measured counts are never
predicted over: a prediction is for counts not yet measured, and to choose where to measure next.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

INPUT_BOUND_SHARE = 0.10
"""A step that waits for data more than this share of its iteration is input-bound."""
MEMORY_HORIZON_S = 600.0
"""The memory budget counts what a worker will hold this much later, at its measured USS growth."""


@dataclass(frozen=True, slots=True)
class Point:
    """What was measured at one worker count.

    Attributes:
        num_workers: the count.
        samples_per_s: samples delivered per second of steady iteration.
        load_s: mean seconds a batch was waited for in ``next()``.
        step_s: mean seconds of the loop's step per batch.
        samples_per_batch: mean samples per batch.
        cpu_s_per_sample: CPU-seconds of the whole process tree per delivered sample (NaN: unknown).
        worker_uss_bytes: unique memory (USS) of one worker: what it adds (NaN: unknown, or no workers).
        worker_uss_growth_bytes_per_s: how fast that grows (copy-on-write; NaN: unknown).
    """

    num_workers: int
    samples_per_s: float
    load_s: float
    step_s: float
    samples_per_batch: float
    cpu_s_per_sample: float = math.nan
    worker_uss_bytes: float = math.nan
    worker_uss_growth_bytes_per_s: float = math.nan

    @property
    def input_bound(self) -> bool:
        """The loop waits for data more than ``INPUT_BOUND_SHARE`` of its iteration."""
        total = self.load_s + self.step_s
        return total > 0 and self.load_s / total > INPUT_BOUND_SHARE


@dataclass(frozen=True, slots=True)
class Model:
    """Predicted samples/s per worker count, fitted from measured ``Point`` s.

    Attributes:
        cores: the CPU budget (usable cores, or a rank's share of them).
        make_s: wall seconds one worker takes to make a batch (NaN: unknown).
        step_s: seconds of the loop's step per batch.
        samples_per_batch: samples per batch.
        cpu_s_per_batch: CPU-seconds of the tree per batch (NaN: unknown, then no ceiling).
        worker_uss_bytes: what one worker adds, its USS (NaN: unknown, then no memory limit).
        worker_uss_growth_bytes_per_s: how fast a worker's USS grows (NaN: unknown, counted as 0).
        memory_budget_bytes: what all workers together may hold (None: no budget).
        measured: samples/s of the measured counts, which predictions never override.
    """

    cores: float
    make_s: float
    step_s: float
    samples_per_batch: float
    cpu_s_per_batch: float
    worker_uss_bytes: float
    worker_uss_growth_bytes_per_s: float
    memory_budget_bytes: float | None
    measured: tuple[tuple[int, float], ...]

    @property
    def ceiling(self) -> float:
        """Samples/s the CPU budget allows at most: cores / CPU per sample (inf when unknown)."""
        if not math.isfinite(self.cpu_s_per_batch) or self.cpu_s_per_batch <= 0:
            return math.inf
        return self.cores / self.cpu_s_per_batch * self.samples_per_batch

    @property
    def worker_bytes(self) -> float:
        """What one worker adds to the tree's memory: its USS, grown for ``MEMORY_HORIZON_S`` (NaN: unknown)."""
        growth = self.worker_uss_growth_bytes_per_s
        return self.worker_uss_bytes + (max(growth, 0.0) * MEMORY_HORIZON_S if math.isfinite(growth) else 0.0)

    def fits_memory(self, num_workers: int) -> bool:
        """Whether ``num_workers`` workers stay inside the memory budget (True when it cannot be told)."""
        if self.memory_budget_bytes is None or not math.isfinite(self.worker_bytes):
            return True
        return num_workers * self.worker_bytes <= self.memory_budget_bytes

    def predict(self, num_workers: int) -> float | None:
        """Samples/s at ``num_workers`` (the measured figure where there is one); None past the memory budget."""
        if not self.fits_memory(num_workers):
            return None
        for count, measured in self.measured:
            if count == num_workers:
                return measured
        if not math.isfinite(self.make_s) or self.step_s <= 0:
            return math.nan
        if num_workers == 0:
            batches_per_s = 1.0 / (self.step_s + self.make_s)
        else:
            batches_per_s = min(num_workers / self.make_s if self.make_s > 0 else math.inf, 1.0 / self.step_s)
        return min(batches_per_s * self.samples_per_batch, self.ceiling)

    def curve(self, counts: Iterable[int]) -> tuple[tuple[int, float | None], ...]:
        """``(count, predicted samples/s)`` for each count."""
        return tuple((n, self.predict(n)) for n in counts)

    def smallest_enough(self, counts: Sequence[int], *, within: float) -> int | None:
        """The fewest workers predicted within ``within`` of the best prediction among ``counts``."""
        curve = [(n, s) for n, s in self.curve(counts) if s is not None and not math.isnan(s)]
        if not curve:
            return None
        best = max(s for _, s in curve)
        return min(n for n, s in curve if s >= (1 - within) * best)

    def workers_to_stop_waiting(self) -> float:
        """How many workers make batches as fast as the loop steps: ``make_s / step_s`` (NaN: unknown)."""
        if not math.isfinite(self.make_s) or self.step_s <= 0:
            return math.nan
        return self.make_s / self.step_s


def fit(points: Sequence[Point], *, cores: float, memory_budget_bytes: float | None = None) -> Model | None:
    """The model for ``points`` (the latest measurement of each count first wins); None without any.

    The loop's step and the CPU per batch come from the most recent point (``points[-1]``):
    what the loop and the data cost now. The time to make a batch comes from a 0-worker point
    if there is one, else from the input-bound point with the most workers, else it is bounded
    from above by the point with the fewest workers (``n x iteration``).
    """
    usable = [p for p in points if math.isfinite(p.samples_per_s) and p.samples_per_s > 0]
    if not usable:
        return None
    latest = usable[-1]
    by_count: dict[int, Point] = {}
    for point in usable:
        by_count[point.num_workers] = point  # the latest measurement of each count
    make_s = math.nan
    if 0 in by_count:
        make_s = by_count[0].load_s
    else:
        bound = [p for p in by_count.values() if p.input_bound]
        chosen = max(bound, key=lambda p: p.num_workers) if bound else min(by_count.values(),
                                                                           key=lambda p: p.num_workers)
        make_s = chosen.num_workers * chosen.samples_per_batch / chosen.samples_per_s
    cpu = [p.cpu_s_per_sample for p in reversed(usable) if math.isfinite(p.cpu_s_per_sample)]
    uss = [p for p in reversed(usable) if math.isfinite(p.worker_uss_bytes)]
    step_s = latest.step_s if latest.num_workers else _step_with_workers(by_count, latest)
    return Model(
        cores=cores,
        make_s=make_s,
        step_s=step_s,
        samples_per_batch=latest.samples_per_batch,
        cpu_s_per_batch=cpu[0] * latest.samples_per_batch if cpu else math.nan,
        worker_uss_bytes=uss[0].worker_uss_bytes if uss else math.nan,
        worker_uss_growth_bytes_per_s=uss[0].worker_uss_growth_bytes_per_s if uss else math.nan,
        memory_budget_bytes=memory_budget_bytes,
        measured=tuple(sorted((n, p.samples_per_s) for n, p in by_count.items())),
    )


def _step_with_workers(by_count: dict[int, Point], latest: Point) -> float:
    """The loop's step with workers: measured at some count if any was, else the 0-worker step."""
    with_workers = [p for n, p in sorted(by_count.items()) if n > 0]
    return with_workers[0].step_s if with_workers else latest.step_s
