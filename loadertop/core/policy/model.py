"""One model of what a worker count delivers: the sweep's predicted curve and the autotuner's jumps.

From what is measured at one or more worker counts it predicts the samples/s of every count under
a CPU budget (cores) and a memory budget. It keeps apart what the **workers** spend on a batch
(their CPU, and their wall time waiting on storage) from what the **training process** spends
(its CPU per batch, the loop's step), because more workers multiply only the first:

- with 0 workers the loop makes each batch itself: iteration = step + the time to make a batch;
- with n workers, three limits: the workers deliver ``n / make_s`` batches a second, where a
  worker's wall time per batch ``make_s`` = its wait + its CPU; the loop takes at most ``1 / step_s``;
  the CPU budget carries at most ``cores / (worker CPU + main CPU per batch)`` (the **ceiling**).
  They combine smoothly (a soft minimum): near the knee the batches come unevenly and the loop
  still waits a little, which more workers (more batches in flight) absorb;
- what a count measured and the limits predicted for it give its **efficiency** (measured /
  predicted: contention, overheads the limits do not see); a count not measured is predicted with
  the efficiency of the measured count nearest to it, so the curve passes through the measurements.
  One exception: past the most workers measured, where the CPU budget is what stops that count, the
  shortfall is taken as cores left idle while workers block (on the queues, on each other), which
  more workers fill: it shrinks as ``measured workers / workers``;
- a count whose workers would pass the memory budget is not predicted (``None``): each worker adds its
  USS (what only it holds: the pages it shares with the main process are not new), grown for
  ``MEMORY_HORIZON_S`` more at its measured rate.

Where the figures come from: the workers' CPU per batch and the main process's, from CPU-time
readings of the tree (``children`` and ``main``) over a measured count with workers; a worker's
wait per batch = its wall time per batch (``n x iteration`` where the loop waits, every worker
then busy) minus its CPU; at 0 workers the loop waits exactly the time to make a batch, and the
loader's stage figures (``probe.stages``: the CPU of each sample's fetch and collate, measured in the
loop's thread) split the tree's CPU per batch into making the batch and the rest; without them the
tree's CPU per batch stands for both until a count with workers is measured. The predictions use the
CPU per batch in all and the wall time to make one, so the split changes what the model says of the
costs (``describe``: waiting apart from CPU), not the counts it predicts. Measured counts are never
predicted over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

INPUT_BOUND_SHARE = 0.10
"""A step that waits for data more than this share of its iteration is input-bound."""
SOFTNESS = 4.0
"""The exponent of the soft minimum of the three limits (larger: sharper, a roofline at infinity)."""
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
        main_cpu_s_per_batch: CPU-seconds of the training process per batch (NaN: unknown).
        worker_cpu_s_per_batch: CPU-seconds of the workers per batch, all together (NaN: unknown).
        stage_cpu_s_per_sample: CPU-seconds of a sample's stages (fetch and collate), measured inside the loader
            (``probe.stages``; NaN: unknown): at 0 workers, what the loop spent making the batch apart from its step.
        stage_wall_s_per_sample: the wall time of those stages a sample (NaN: unknown): with workers, what a worker
            took to make it, its waiting included, whether or not the loop waited for it.
    """

    num_workers: int
    samples_per_s: float
    load_s: float
    step_s: float
    samples_per_batch: float
    cpu_s_per_sample: float = math.nan
    worker_uss_bytes: float = math.nan
    worker_uss_growth_bytes_per_s: float = math.nan
    main_cpu_s_per_batch: float = math.nan
    worker_cpu_s_per_batch: float = math.nan
    stage_cpu_s_per_sample: float = math.nan
    stage_wall_s_per_sample: float = math.nan

    @property
    def input_bound(self) -> bool:
        """The loop waits for data more than ``INPUT_BOUND_SHARE`` of its iteration."""
        total = self.load_s + self.step_s
        return total > 0 and self.load_s / total > INPUT_BOUND_SHARE

    @property
    def batches_per_s(self) -> float:
        return self.samples_per_s / self.samples_per_batch if self.samples_per_batch > 0 else math.nan

    @property
    def split(self) -> bool:
        """Whether the workers' CPU and the main process's are known apart (a count with workers)."""
        return (
            self.num_workers > 0
            and math.isfinite(self.main_cpu_s_per_batch)
            and math.isfinite(self.worker_cpu_s_per_batch)
        )


@dataclass(frozen=True, slots=True)
class Model:
    """Predicted samples/s per worker count, fitted from measured ``Point`` s.

    Attributes:
        cores: the CPU budget (usable cores, or a rank's share of them).
        make_s: wall seconds one worker takes to make a batch: ``wait_s + worker_cpu_s`` (NaN: unknown).
        step_s: seconds of the loop's step per batch.
        samples_per_batch: samples per batch.
        cpu_s_per_batch: CPU-seconds of the tree per batch with workers (NaN: unknown, then no ceiling).
        worker_uss_bytes: what one worker adds, its USS (NaN: unknown, then no memory limit).
        worker_uss_growth_bytes_per_s: how fast a worker's USS grows (NaN: unknown, counted as 0).
        memory_budget_bytes: what all workers together may hold (None: no budget).
        measured: samples/s of the measured counts, which predictions never override.
        wait_s: a worker's wall seconds per batch spent not on a CPU (storage, locks; NaN: unknown).
        worker_cpu_s: a worker's CPU-seconds per batch (NaN: unknown).
        main_cpu_s: the training process's CPU-seconds per batch (NaN: unknown).
        efficiency: ``(count, measured / the limits' prediction)`` of each measured count with workers.
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
    wait_s: float = math.nan
    worker_cpu_s: float = math.nan
    main_cpu_s: float = math.nan
    efficiency: tuple[tuple[int, float], ...] = ()

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

    def limits(self, num_workers: int) -> float:
        """Samples/s the three limits allow at ``num_workers`` (no efficiency, nothing measured; NaN: unknown)."""
        if not math.isfinite(self.make_s) or self.step_s <= 0:
            return math.nan
        if num_workers == 0:
            return self.samples_per_batch / (self.step_s + self.make_s)
        return soft_min(self._rates(num_workers)) * self.samples_per_batch

    def _rates(self, num_workers: int) -> tuple[float, float, float]:
        """Batches/s each limit allows at ``num_workers`` (> 0): the workers, the loop, the CPU (inf: none known)."""
        workers = num_workers / self.make_s if math.isfinite(self.make_s) and self.make_s > 0 else math.inf
        loop = 1.0 / self.step_s if self.step_s > 0 else math.inf
        known = math.isfinite(self.cpu_s_per_batch) and self.cpu_s_per_batch > 0
        return workers, loop, self.cores / self.cpu_s_per_batch if known else math.inf

    def efficiency_at(self, num_workers: int) -> float:
        """The efficiency of the measured count with workers nearest to ``num_workers`` (1 without any);
        between two measured counts, the line between theirs; past the most workers measured, where the
        CPU budget stops that count, the shortfall shrinks as ``measured / num_workers`` (idle cores filled)."""
        if num_workers == 0 or not self.efficiency:
            return 1.0
        below = [(n, e) for n, e in self.efficiency if n <= num_workers]
        above = [(n, e) for n, e in self.efficiency if n >= num_workers]
        if below and above:
            (n0, e0), (n1, e1) = below[-1], above[0]
            return e0 if n1 == n0 else e0 + (e1 - e0) * (num_workers - n0) / (n1 - n0)
        if below:
            n0, e0 = below[-1]
            return 1.0 - (1.0 - e0) * n0 / num_workers if e0 < 1.0 and self.cpu_bound(n0) else e0
        return above[0][1]

    def cpu_bound(self, num_workers: int) -> bool:
        """Whether the CPU budget is the tightest of the three limits at ``num_workers`` (False when unknown)."""
        if num_workers == 0:
            return False
        workers, loop, ceiling = self._rates(num_workers)
        return math.isfinite(ceiling) and ceiling <= min(workers, loop)

    def predict(self, num_workers: int) -> float | None:
        """Samples/s at ``num_workers`` (the measured figure where there is one); None past the memory budget."""
        if not self.fits_memory(num_workers):
            return None
        for count, measured in self.measured:
            if count == num_workers:
                return measured
        return self.limits(num_workers) * self.efficiency_at(num_workers)

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

    def describe(self) -> str:
        """The fitted costs in words, per sample: ``workers 2.1 ms waiting + 0.5 ms CPU, the loop 0.2 ms CPU``."""
        per = self.samples_per_batch if self.samples_per_batch > 0 else 1.0
        if math.isfinite(self.wait_s) and math.isfinite(self.worker_cpu_s):
            said = f"a worker {self.wait_s / per * 1000:.2f} ms waiting + {self.worker_cpu_s / per * 1000:.2f} ms CPU"
            if math.isfinite(self.main_cpu_s):
                said += f", the loop {self.main_cpu_s / per * 1000:.2f} ms CPU"
            return said + " a sample"
        if math.isfinite(self.make_s):
            said = f"{self.make_s / per * 1000:.2f} ms to make a sample"
            if math.isfinite(self.cpu_s_per_batch):
                said += f", {self.cpu_s_per_batch / per * 1000:.2f} ms CPU"
            return said
        return ""


def soft_min(rates: Sequence[float]) -> float:
    """A smooth minimum of positive rates: ``(sum r^-p)^(-1/p)`` with ``p = SOFTNESS`` (inf: no limit)."""
    finite = [r for r in rates if math.isfinite(r)]
    if not finite:
        return math.inf
    if any(r <= 0 for r in finite):
        return 0.0
    return float(sum(r**-SOFTNESS for r in finite) ** (-1.0 / SOFTNESS))


def fit(points: Sequence[Point], *, cores: float, memory_budget_bytes: float | None = None) -> Model | None:
    """The model for ``points`` (the latest measurement of each count wins); None without any.

    - The loop's step: the latest count with workers (the 0-worker step where none has them).
    - CPU per batch, split: the count with workers measured with the most workers (the per-batch cost
      of handing batches over grows with them); without one, the tree's CPU per batch of the latest point.
    - A worker's wall time per batch: at 0 workers the loop's wait (one batch made, uncontended; its CPU
      there replaced by a worker's); else the input-bound count with the fewest workers (``n x iteration``:
      the least contended); where no count waits for data, the wall time the stages measured a batch in the
      fewest workers that measured it, else a worker's CPU per batch (the least it can be: so fewer workers are
      tried), or without the split the fewest workers' ``n x iteration`` (the most).
      The wait = that minus a worker's CPU.
    """
    usable = [p for p in points if math.isfinite(p.samples_per_s) and p.samples_per_s > 0]
    if not usable:
        return None
    latest = usable[-1]
    by_count: dict[int, Point] = {}
    for point in usable:
        by_count[point.num_workers] = point  # the latest measurement of each count
    with_workers = [p for n, p in sorted(by_count.items()) if n > 0]
    step_s = next((p.step_s for p in reversed(usable) if p.num_workers > 0), latest.step_s)
    spb = latest.samples_per_batch
    split = [p for p in with_workers if p.split]
    worker_cpu = main_cpu = math.nan
    zero = by_count.get(0)
    if split:
        widest = split[-1]
        worker_cpu = widest.worker_cpu_s_per_batch
        main_cpu = widest.main_cpu_s_per_batch
        cpu_per_batch = worker_cpu + main_cpu
    elif zero is not None and _stages_split(zero):
        # No count with workers yet, but the loader measured what making a batch cost at 0 workers: the
        # workers' CPU a batch is that, the training process's the rest of the tree's CPU a batch.
        cpu_per_batch = zero.cpu_s_per_sample * zero.samples_per_batch
        worker_cpu = min(zero.stage_cpu_s_per_sample * zero.samples_per_batch, cpu_per_batch)
        main_cpu = cpu_per_batch - worker_cpu
    else:
        cpu = [p.cpu_s_per_sample for p in reversed(usable) if math.isfinite(p.cpu_s_per_sample)]
        cpu_per_batch = cpu[0] * spb if cpu else math.nan
    if 0 in by_count:
        make_s = by_count[0].load_s
        if math.isfinite(worker_cpu):  # the workers' CPU a batch: in them it also pays for the hand-over
            make_s = max(make_s - _load_cpu_at_zero(by_count[0], main_cpu), 0.0) + worker_cpu
    elif bound := [p for p in with_workers if p.input_bound]:
        make_s = bound[0].num_workers / bound[0].batches_per_s  # every worker busy: n batches an n-th as often
    elif staged := [p for p in with_workers if math.isfinite(p.stage_wall_s_per_sample)]:
        # No count waits for data, but the workers timed how long making a batch took them (its waiting too):
        # how many the loop needs follows from that, not from a bound.
        make_s = staged[0].stage_wall_s_per_sample * staged[0].samples_per_batch
    elif math.isfinite(worker_cpu):
        make_s = worker_cpu  # no count waits for data: a worker needs at least its CPU (fewer may be as fast)
    else:
        make_s = with_workers[0].num_workers / with_workers[0].batches_per_s  # at most: workers idle part of it
    wait_s = max(make_s - worker_cpu, 0.0) if math.isfinite(worker_cpu) else math.nan
    uss = [p for p in reversed(usable) if math.isfinite(p.worker_uss_bytes)]
    model = Model(
        cores=cores,
        make_s=make_s,
        step_s=step_s,
        samples_per_batch=spb,
        cpu_s_per_batch=cpu_per_batch,
        worker_uss_bytes=uss[0].worker_uss_bytes if uss else math.nan,
        worker_uss_growth_bytes_per_s=uss[0].worker_uss_growth_bytes_per_s if uss else math.nan,
        memory_budget_bytes=memory_budget_bytes,
        measured=tuple(sorted((n, p.samples_per_s) for n, p in by_count.items())),
        wait_s=wait_s,
        worker_cpu_s=worker_cpu,
        main_cpu_s=main_cpu,
    )
    efficiency = []
    for point in with_workers:
        limit = model.limits(point.num_workers)
        if math.isfinite(limit) and limit > 0:
            efficiency.append((point.num_workers, point.samples_per_s / limit))
    return replace(model, efficiency=tuple(efficiency))


def _stages_split(zero: Point) -> bool:
    """Whether the 0-worker point's stage figures split its CPU into making batches and the rest."""
    return (
        math.isfinite(zero.stage_cpu_s_per_sample)
        and math.isfinite(zero.cpu_s_per_sample)
        and zero.stage_cpu_s_per_sample > 0
        and zero.cpu_s_per_sample > 0
    )


def _load_cpu_at_zero(zero: Point, main_cpu_with_workers: float) -> float:
    """The CPU the loop spent making a batch at 0 workers: the tree's CPU per batch then, less what the
    training process spends per batch when workers make them (its step and the hand-over), at least 0."""
    if not math.isfinite(zero.cpu_s_per_sample):
        return 0.0
    at_zero = zero.cpu_s_per_sample * zero.samples_per_batch
    return max(at_zero - (main_cpu_with_workers if math.isfinite(main_cpu_with_workers) else 0.0), 0.0)
