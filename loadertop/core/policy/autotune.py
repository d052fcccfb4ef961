"""Live autotune: find the best worker count while training runs, hold it, and tune again when things change.

``AutoTuner`` is pure logic, fed what is measured and answering with changes; whoever runs
the loader applies them (``loadertop.core.probe.autotune_host.AutotuneHost``, for the built-in run and for
scripts alike). One **round** of tuning:

1. **Measure** the running count: steady batches (the warm-up after a switch left out) until
   the throughput's noise (two standard errors, from block means as the sweep reads them) is
   under ``TARGET_NOISE``, at least ``min_batches``, at most ``max_batches``.
2. **Model, then jump**: fit ``loadertop.core.policy.model`` to what was measured (the workers' CPU and
   wait per batch apart from the training process's CPU and step) and go straight to the fewest
   workers predicted within ``within`` of the best prediction (under the CPU and memory budgets,
   ``/dev/shm`` never past 80%).
3. **Verify where the model was unsure**: measure there and fit again (the curve now passes
   through the measurement, its neighbours scaled by how far off the prediction was); while the
   model's pick is a count not yet measured, go there (at most ``MAX_VISITS`` counts a round), so
   a count that the model and the measurements put more than ``within`` below the best is never
   tried. Where the CPU budget stops the fastest measured count with cores idle (workers blocked
   on the queues leave them so, by an amount this model cannot know), it measures as many workers
   more as there are cores, once, to see whether they fill them. **Settle** on the fewest workers
   surely within ``within`` of the fastest measured, the noise counted against them (measured
   slower by at most ``within`` less two standard errors of the ratio); where the noise cannot
   tell, the faster count is kept (never a count that may be materially slower).
4. **Hold**: keep measuring windows at the settled count against a reference: the settling
   measurement pooled with every held window since that did not move (the settled count was the
   fastest of its round, so its first figure is lucky more often than not: pooled, the luck washes
   out). A window moved when its samples/s differs from the reference by more than the larger of
   its noise, ``RETUNE_SHIFT`` and two standard deviations of the held windows' figures (a shared
   machine's noise comes in spells longer than a window's blocks, which its own noise cannot see);
   ``RETUNE_STRIKES`` windows in a row moved the same way start a new round from their pooled
   figures. A window moved the other way from the one before is noise both ways: pooled in.

Every change carries its reason in words, with the figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loadertop.core.measure.store import block_size, throughput_sem
from loadertop.core.policy.advice import NOISE_Z, RECOMMEND_WITHIN, ratio_with_error
from loadertop.core.policy.model import Model, Point, fit
from loadertop.core.protocol.messages import ChangeKind, TunerState

TARGET_NOISE = 0.05
"""A count is measured until two standard errors of its samples/s are within this share (or ``max_batches``)."""
IDLE_SHARE = 0.02
"""Cores idle beyond this share of the budget are worth filling with more workers (where the CPU is the limit)."""
RETUNE_SHIFT = 0.15
"""Held: samples/s must move by more than this share (and the noise) to tune again."""
RETUNE_STRIKES = 2
"""...in this many windows in a row, the same way."""
SPREAD_WINDOWS = 3
"""The held windows' spread counts once this many were pooled into the reference..."""
SPREAD_OF_LAST = 20
"""...the spread of the latest this many (a spell of noise long past ages out)."""
WARMUP_PER_WORKER = 3
"""Batches per worker left out after a switch: those the new workers made ahead (see ``_start_visit``)."""
MAX_VISITS = 6
"""A round measures at most this many counts, then settles on the best of them."""
SHM_LIMIT = 0.8
"""``/dev/shm`` fuller than this share: never more workers."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One batch of the tuned loader, as the loop received it.

    Attributes:
        num_workers: workers of the generation that delivered it.
        samples: samples in the batch.
        load_s: seconds the loop waited for it in ``next()``.
        step_s: seconds of the loop's step with it.
        time: wall-clock time (UNIX seconds) when it was delivered.
        refill: among the first batches of an epoch (the pipeline refills): a stratum of its own in the noise.
    """

    num_workers: int
    samples: int
    load_s: float
    step_s: float
    time: float
    refill: bool = False


@dataclass(frozen=True, slots=True)
class Reading:
    """The process tree at one moment.

    Attributes:
        time: wall-clock time (UNIX seconds).
        cpu_s: CPU-seconds of the whole training process tree so far (reaped workers included).
        workers: live worker processes of the tuned loader.
        worker_uss_bytes: their unique memory (USS) together: what they add to the tree (``measure.memory``;
            their RSS, an upper bound, where ``smaps_rollup`` cannot be read).
        shm_share: how full ``/dev/shm`` is (None where there is none).
        main_cpu_s: of ``cpu_s``, the training process's own (NaN: not read apart).
        stage_cpu_s_per_sample: the CPU a sample's stages took (its fetch and collate: what a worker spends on
            it), measured inside the tuned loader at the running count so far (``probe.stages``; NaN: unknown).
        stage_wall_s_per_sample: the wall time of those stages a sample (what a worker takes to make it, its
            waiting included), measured the same way (NaN: unknown).
    """

    time: float
    cpu_s: float
    workers: int = 0
    worker_uss_bytes: int = 0
    shm_share: float | None = None
    main_cpu_s: float = math.nan
    stage_cpu_s_per_sample: float = math.nan
    stage_wall_s_per_sample: float = math.nan


@dataclass(frozen=True, slots=True)
class Budget:
    """What the tuner may spend.

    Attributes:
        cores: CPU budget (usable cores, or a rank's share of its node's).
        memory_bytes: what all workers together may hold (None: no limit).
        max_workers: the most workers it tries.
    """

    cores: float
    memory_bytes: float | None = None
    max_workers: int = 8


@dataclass(frozen=True, slots=True)
class Change:
    """A decision of the tuner.

    Attributes:
        kind: ``jump`` (the model's pick), ``step`` (one more or one fewer, to verify), ``settle``,
            ``retune`` (the measurements changed), ``memory`` (a budget forces fewer workers).
        from_workers, to_workers: the worker counts (equal when it settles where it is).
        reason: why, with the figures.
        predicted: the model's samples/s per worker count at that moment (None: past the memory budget).
        ceiling: the CPU budget's samples/s limit (inf: unknown).
    """

    kind: ChangeKind
    from_workers: int
    to_workers: int
    reason: str
    predicted: tuple[tuple[int, float | None], ...] = ()
    ceiling: float = math.inf

    def line(self) -> str:
        """``reason: 2 -> 3 workers`` (or ``...: stays at 3 workers``)."""
        if self.to_workers == self.from_workers:
            return f"{self.reason}: stays at {_workers(self.to_workers)}"
        return f"{self.reason}: {self.from_workers} -> {_workers(self.to_workers)}"

    def to_event(self) -> dict[str, Any]:
        """The ``--record`` line: ``{"event": "autotune", ...}``."""
        return {
            "event": "autotune",
            "change": self.kind,
            "from": self.from_workers,
            "to": self.to_workers,
            "reason": self.reason,
            **curve_fields(self.predicted, self.ceiling),
        }


@dataclass(slots=True)
class Visit:
    """Steady batches of one worker count since it started (or since a hold window began)."""

    num_workers: int
    iters: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    refill: list[int] = field(default_factory=list)
    samples: int = 0
    delivered: list[tuple[float, int]] = field(default_factory=list)  # (time, samples) of every batch
    readings: list[Reading] = field(default_factory=list)

    def extend(self, other: Visit) -> None:
        """Pool ``other``'s batches and readings (of the same count, measured later) into this one."""
        self.iters += other.iters
        self.loads += other.loads
        self.steps += other.steps
        self.refill += other.refill
        self.samples += other.samples
        self.delivered += other.delivered
        self.readings += other.readings

    def add(self, obs: Observation) -> None:
        self.iters.append(obs.load_s + obs.step_s)
        self.loads.append(obs.load_s)
        self.steps.append(obs.step_s)
        self.refill.append(int(obs.refill))
        self.samples += obs.samples
        self.delivered.append((obs.time, obs.samples))

    @property
    def batches(self) -> int:
        return len(self.iters)

    @property
    def seconds(self) -> float:
        return sum(self.iters)

    @property
    def samples_per_s(self) -> float:
        total = self.seconds
        return self.samples / total if total > 0 else math.nan

    @property
    def sem(self) -> float:
        return throughput_sem(self.iters, self.refill, self.samples, block_size(self.num_workers))

    @property
    def noise(self) -> float:
        """Two standard errors of samples/s as a share of it (NaN: too few batches to tell)."""
        return NOISE_Z * self.sem / self.samples_per_s

    def _between_readings(self) -> tuple[Reading, Reading, int, int] | None:
        """The first and latest readings and the batches and samples delivered between them."""
        if len(self.readings) < 2:
            return None
        first, last = self.readings[0], self.readings[-1]
        inside = [n for t, n in self.delivered if first.time < t <= last.time]
        return (first, last, len(inside), sum(inside)) if inside else None

    @property
    def cpu_s_per_sample(self) -> float:
        """CPU-seconds of the tree per sample delivered between the visit's first and latest readings."""
        span = self._between_readings()
        if span is None:
            return math.nan
        first, last, _, samples = span
        return (last.cpu_s - first.cpu_s) / samples

    @property
    def main_cpu_s_per_batch(self) -> float:
        """CPU-seconds of the training process per batch (NaN: unknown, or not read apart)."""
        return self._per_batch(lambda r: r.main_cpu_s)

    @property
    def worker_cpu_s_per_batch(self) -> float:
        """CPU-seconds of the workers (the tree but the training process) per batch (NaN: unknown)."""
        return self._per_batch(lambda r: r.cpu_s - r.main_cpu_s)

    def _per_batch(self, seconds: Callable[[Reading], float]) -> float:
        """How much ``seconds`` of the readings grew per batch delivered between the first and latest (NaN: unknown)."""
        span = self._between_readings()
        if span is None:
            return math.nan
        first, last, batches, _ = span
        return (seconds(last) - seconds(first)) / batches

    @property
    def cores_used(self) -> float:
        """Cores the tree used while this count ran (NaN: unknown)."""
        if len(self.readings) < 2 or self.readings[-1].time <= self.readings[0].time:
            return math.nan
        first, last = self.readings[0], self.readings[-1]
        return (last.cpu_s - first.cpu_s) / (last.time - first.time)

    def _own_readings(self) -> list[Reading]:
        return [r for r in self.readings if r.workers == self.num_workers and r.workers > 0]

    @property
    def worker_uss_bytes(self) -> float:
        """The most one worker held of its own (USS) while this count ran (NaN: no reading with its workers)."""
        own = self._own_readings()
        return max(r.worker_uss_bytes / r.workers for r in own) if own else math.nan

    @property
    def worker_uss_growth_bytes_per_s(self) -> float:
        """How fast one worker's USS grew between the first and the latest reading with its workers (NaN: unknown)."""
        own = self._own_readings()
        if len(own) < 2 or own[-1].time <= own[0].time:
            return math.nan
        first, last = own[0], own[-1]
        grown = last.worker_uss_bytes / last.workers - first.worker_uss_bytes / first.workers
        return grown / (last.time - first.time)

    @property
    def stage_cpu_s_per_sample(self) -> float:
        """The latest stage figure of this count's samples' CPU (NaN: none read)."""
        return self._latest_stage_figure("stage_cpu_s_per_sample")

    @property
    def stage_wall_s_per_sample(self) -> float:
        """The latest stage figure of this count's samples' wall time (NaN: none read)."""
        return self._latest_stage_figure("stage_wall_s_per_sample")

    def _latest_stage_figure(self, name: str) -> float:
        for reading in reversed(self.readings):
            value = getattr(reading, name)
            if reading.workers == self.num_workers and math.isfinite(value):
                return float(value)
        return math.nan

    def point(self) -> Point:
        n = self.batches
        return Point(
            self.num_workers,
            self.samples_per_s,
            sum(self.loads) / n,
            sum(self.steps) / n,
            self.samples / n,
            self.cpu_s_per_sample,
            self.worker_uss_bytes,
            self.worker_uss_growth_bytes_per_s,
            main_cpu_s_per_batch=self.main_cpu_s_per_batch,
            worker_cpu_s_per_batch=self.worker_cpu_s_per_batch,
            stage_cpu_s_per_sample=self.stage_cpu_s_per_sample,
            stage_wall_s_per_sample=self.stage_wall_s_per_sample,
        )


@dataclass(frozen=True, slots=True)
class TunerStatus:
    """Where the tuner stands, for the monitor's header and the table.

    Attributes:
        state: ``off``, ``measuring`` (a count, before the model's jump or a step), ``switching``
            (waiting for the loader to run the chosen count), ``settled``.
        workers: the count being measured or held.
        changes: every change so far, oldest first.
        predicted: the latest model's curve, ``(count, samples/s)``.
        ceiling: the latest model's CPU ceiling in samples/s.
    """

    state: TunerState
    workers: int | None
    changes: tuple[Change, ...]
    predicted: tuple[tuple[int, float | None], ...]
    ceiling: float


class AutoTuner:
    """See the module's docstring. Feed ``observe`` every batch and ``read`` the tree now and then.

    Args:
        budget: the CPU and memory budgets and the most workers to try.
        within: the share of the fastest a slower count may lose and still be preferred for costing less
            (the recommendation's 5%; the tuner narrows it to the measurement's noise).
        min_batches, max_batches: steady batches measured per count.
        min_seconds: and at least this long.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        within: float = RECOMMEND_WITHIN,
        min_batches: int = 20,
        max_batches: int = 60,
        min_seconds: float = 0.0,
    ) -> None:
        self.budget = budget
        self.within = within
        self.min_batches = min_batches
        self.max_batches = max_batches
        self.min_seconds = min_seconds
        self.changes: list[Change] = []
        self._round: dict[int, Visit] = {}  # this round's measured counts
        self._order: list[int] = []  # in the order measured
        self._visit: Visit | None = None
        self._waiting_for: int | None = None  # a switch was asked for: its batches are not in yet
        self._warmup_left = 0
        self._settled: Visit | None = None  # the settled count's measurement (held)
        self._reference: Visit | None = None  # it, pooled with the held windows that did not move
        self._held: list[float] = []  # the samples/s of every window pooled into the reference
        self._struck: list[Visit] = []  # the latest windows in a row that moved, the same way
        self._model: Model | None = None
        self._shm: float | None = None
        self._jumped = False
        self._reads = False  # readings come (a driver reads the tree): the first count waits for two
        self._remembered: tuple[int, float, str] | None = None  # a count a past run settled on, to verify first

    def start_at(self, workers: int, samples_per_s: float, reason: str) -> None:
        """Begin at ``workers``, where a past run of the same loader on this machine settled at ``samples_per_s``
        (``reason`` says so): the first round goes there at once and, where it measures as fast (within
        ``within`` and its noise), settles without searching; slower, the round searches from there as ever."""
        self._remembered = (workers, samples_per_s, reason) if 0 <= workers <= self.budget.max_workers else None

    @property
    def settled_samples_per_s(self) -> float | None:
        """The settled count's samples/s (its reference's: the settling measurement and the held windows pooled)."""
        reference = self._reference if self._reference is not None else self._settled
        return reference.samples_per_s if reference is not None and self._settled is not None else None

    # ------------------------------------------------------------------ input

    def read(self, reading: Reading) -> None:
        """A reading of the tree (CPU, worker memory, ``/dev/shm``)."""
        self._shm = reading.shm_share
        self._reads = True
        if self._visit is not None and not self._warmup_left and self._waiting_for is None:
            self._visit.readings.append(reading)  # the warm-up's CPU is not what a steady batch costs

    def observe(self, obs: Observation) -> Change | None:
        """One delivered batch; returns a change to apply (switch to ``to_workers``), or None."""
        if self._waiting_for is not None:
            if obs.num_workers != self._waiting_for:
                return None  # the old workers' last batches
            self._start_visit(obs.num_workers, warmup=True)
        if self._visit is None:
            self._start_visit(obs.num_workers, warmup=False)
            remembered = self._remembered
            if remembered is not None and remembered[0] != obs.num_workers:
                return self._switch(
                    ChangeKind.JUMP, remembered[0], f"starting at {_workers(remembered[0])}: {remembered[2]}"
                )
        visit = self._visit
        assert visit is not None
        if obs.num_workers != visit.num_workers:  # switched by someone else: measure the new count afresh
            self._start_visit(obs.num_workers, warmup=True)
            self._round.clear()
            self._order.clear()
            self._settled = None
            self._jumped = False
            return None
        if self._warmup_left:
            self._warmup_left -= 1
            return None
        visit.add(obs)
        if not self._enough(visit):
            return None
        if self._settled is not None:
            return self._hold(visit)
        return self._measured(visit)

    def restart(self) -> None:
        """Forget the round and the settled count: tune again from the running count (its next batches)."""
        self._visit = None
        self._waiting_for = None
        self._settled = None
        self._round_done()

    # ------------------------------------------------------------------ output

    def status(self) -> TunerStatus:
        """A frozen view."""
        workers: int | None
        if self._waiting_for is not None:
            state, workers = TunerState.SWITCHING, self._waiting_for
        elif self._settled is not None:
            state, workers = TunerState.SETTLED, self._settled.num_workers
        else:
            visit = self._visit
            state, workers = TunerState.MEASURING, visit.num_workers if visit is not None else None
        model = self._model
        return TunerStatus(
            state,
            workers,
            tuple(self.changes),
            model.curve(self.counts()) if model else (),
            model.ceiling if model else math.inf,
        )

    def counts(self) -> range:
        """The worker counts the tuner considers."""
        return range(self.budget.max_workers + 1)

    # ------------------------------------------------------------------ inside

    def _start_visit(self, num_workers: int, *, warmup: bool) -> None:
        self._visit = Visit(num_workers)
        self._waiting_for = None
        # After a switch the new workers' first batches were made ahead (prefetch_factor each, 2 by default,
        # and one in hand): they arrive without a wait, and would pass for speed.
        self._warmup_left = max(1, WARMUP_PER_WORKER * num_workers) if warmup else 0

    def _enough(self, visit: Visit) -> bool:
        need = max(self.min_batches, 3 * block_size(visit.num_workers))  # three blocks: the least that tells noise
        if visit.batches < need or visit.seconds < self.min_seconds:
            return False
        verifying = self._remembered is not None and self._remembered[0] == visit.num_workers
        if self._reads and not self._round and len(visit.readings) < 2 and not verifying:
            return False  # a round's first count (or a held window): its CPU per sample gives the model its ceiling
        noise = visit.noise
        return visit.batches >= self.max_batches or (math.isfinite(noise) and noise <= TARGET_NOISE)

    def _switch(self, kind: ChangeKind, to: int, reason: str) -> Change:
        current = self._visit.num_workers if self._visit else to
        model = self._model
        change = Change(
            kind, current, to, reason, model.curve(self.counts()) if model else (), model.ceiling if model else math.inf
        )
        self.changes.append(change)
        if to != current:
            self._waiting_for = to
            self._visit = None
        return change

    def _measured(self, visit: Visit) -> Change | None:
        """A count of this round is measured: go to the model's pick if it is not measured yet, else settle (at
        once where it is the remembered count and measures as fast as it did)."""
        remembered, self._remembered = self._remembered, None
        if remembered is not None and remembered[0] == visit.num_workers:
            noise = visit.noise if math.isfinite(visit.noise) else 0.0
            if visit.samples_per_s >= remembered[1] * (1 - self.within - noise):
                self._round[visit.num_workers] = visit
                self._order.append(visit.num_workers)
                change = self._settle()
                verified = (
                    f"verified: {_workers(visit.num_workers)} at {visit.samples_per_s:,.0f} samples/s, as fast as "
                    f"remembered: {remembered[2]}"
                )
                self.changes[-1] = change = replace(change, reason=verified)
                return change
            if self._reads and len(visit.readings) < 2:
                return None  # slower than remembered: a search from here, once its CPU per sample is read
        self._round[visit.num_workers] = visit
        if visit.num_workers in self._order:
            self._order.remove(visit.num_workers)
        self._order.append(visit.num_workers)
        before = self._model
        model = fit(
            [self._round[n].point() for n in self._order],
            cores=self.budget.cores,
            memory_budget_bytes=self.budget.memory_bytes,
        )
        self._model = model
        assert model is not None
        allowed = [n for n in self.counts() if self._allowed(n, visit.num_workers)]
        pick = model.smallest_enough(allowed, within=self.within)
        first, self._jumped = not self._jumped, True
        if pick is not None and pick not in self._round and len(self._round) < MAX_VISITS:
            if first:
                return self._switch(ChangeKind.JUMP, pick, self._jump_reason(visit, model, pick))
            return self._switch(ChangeKind.STEP, pick, self._step_reason(visit, before, model, pick))
        fill = self._fill_idle_cores(model, allowed)
        if fill is not None:
            return self._switch(ChangeKind.STEP, *fill)
        return self._settle()

    def _fill_idle_cores(self, model: Model, allowed: Sequence[int]) -> tuple[int, str] | None:
        """Where the CPU budget stops the fastest measured count and its readings show cores idle (its workers
        blocked on the queues), and no count above it is measured this round: ``(its count + the cores, why)``,
        to see whether more workers fill them (the model cannot tell how many cores blocked workers leave idle)."""
        best = max(self._round.values(), key=lambda v: v.samples_per_s)
        idle = self._idle_cores(best)
        target = best.num_workers + math.ceil(self.budget.cores)
        if (
            best.num_workers == 0
            or not model.cpu_bound(best.num_workers)
            or not math.isfinite(idle)
            or idle <= IDLE_SHARE * self.budget.cores
            or any(n > best.num_workers for n in self._round)
            or target not in allowed
            or len(self._round) >= MAX_VISITS
        ):
            return None
        return target, (
            f"{_workers(best.num_workers)}: {best.samples_per_s:,.0f} samples/s, the CPU the limit with "
            f"{idle:.1f} of {self.budget.cores:g} cores idle (workers blocked on the queues): "
            f"trying {target} to fill them"
        )

    def _allowed(self, n: int, current: int) -> bool:
        """Within the budgets: memory (predicted), ``/dev/shm`` (never more workers when it is full)."""
        if n > self.budget.max_workers:
            return False
        if self._shm is not None and self._shm > SHM_LIMIT and n > current:
            return False
        return self._model is None or self._model.fits_memory(n)

    def _tolerance(self, visit: Visit, best: Visit) -> float:
        """How much slower than ``best`` a count with fewer workers may be measured and still be preferred:
        ``within`` less two standard errors of the ratio (0 where the noise is unknown or wider)."""
        if visit is best:
            return 0.0
        _, error = ratio_with_error(visit.samples_per_s, visit.sem, best.samples_per_s, best.sem)
        noise = NOISE_Z * error
        if not math.isfinite(noise):
            return 0.0
        return max(self.within - noise, 0.0)  # surely within `within`, the noise counted against the fewer

    def _settle(self) -> Change:
        """Settle on the fewest measured workers surely within ``within`` of the fastest (see ``_tolerance``)."""
        visits = self._round
        best = max(visits.values(), key=lambda v: v.samples_per_s)
        anchor = min(
            (v for v in visits.values() if v.samples_per_s >= best.samples_per_s * (1 - self._tolerance(v, best))),
            key=lambda v: v.num_workers,
        )
        here = self._visit.num_workers if self._visit else best.num_workers
        self._settled = anchor
        self._reference = Visit(anchor.num_workers)
        self._reference.extend(anchor)
        self._held = []
        self._struck = []
        change = self._switch(ChangeKind.SETTLE, anchor.num_workers, self._settle_reason(anchor, best))
        if anchor.num_workers == here and self._visit is not None:
            self._visit = Visit(anchor.num_workers)  # the first hold window
        self._round_done()
        return change

    def _round_done(self) -> None:
        self._round = {}
        self._order = []
        self._jumped = False

    def _hold(self, window: Visit) -> Change | None:
        """A window at the settled count: pooled into the reference, or a strike; tune again after
        ``RETUNE_STRIKES`` in a row the same way (see the module's docstring)."""
        reference = self._reference
        assert self._settled is not None and reference is not None
        if self._shm is not None and self._shm > SHM_LIMIT and window.num_workers > 0:
            self._settled = None
            return self._switch(
                ChangeKind.MEMORY,
                window.num_workers - 1,
                f"/dev/shm is {self._shm * 100:.0f}% full (the limit is {SHM_LIMIT * 100:.0f}%)",
            )
        ratio, bar = self._moved(window, reference)
        if abs(ratio - 1) <= bar:
            self._pool([*self._struck, window])  # a spell that did not last: the machine's noise
            self._struck = []
            self._visit = Visit(window.num_workers)
            return None
        if self._struck and (ratio > 1) != (self._struck[-1].samples_per_s > reference.samples_per_s):
            self._pool(self._struck)  # moved the other way from the one before: noise both ways
            self._struck = []
        self._struck.append(window)
        if len(self._struck) < RETUNE_STRIKES:
            self._visit = Visit(window.num_workers)
            return None
        moved = Visit(window.num_workers)
        for struck in self._struck:
            moved.extend(struck)
        ratio, bar = self._moved(moved, reference)
        self._settled = self._reference = None
        self._struck = []
        change = Change(
            ChangeKind.RETUNE,
            window.num_workers,
            window.num_workers,
            f"samples/s moved {reference.samples_per_s:,.0f} -> {moved.samples_per_s:,.0f} "
            f"({(ratio - 1) * 100:+.0f}% over {RETUNE_STRIKES} windows, beyond the noise "
            f"±{bar * 100:.0f}%): tuning again",
        )
        self.changes.append(change)
        followed = self._measured(moved)  # the windows that moved are this round's first measurement
        return followed or change

    def _moved(self, window: Visit, reference: Visit) -> tuple[float, float]:
        """``window``'s samples/s as a share of ``reference``'s, and the bar a move must pass: the larger of
        the ratio's noise, ``RETUNE_SHIFT`` and two standard deviations of the held windows' figures."""
        ratio, error = ratio_with_error(window.samples_per_s, window.sem, reference.samples_per_s, reference.sem)
        bar = max(NOISE_Z * error if math.isfinite(error) else 0.0, RETUNE_SHIFT)
        held = self._held[-SPREAD_OF_LAST:]
        if len(held) >= SPREAD_WINDOWS:
            spread = NOISE_Z * statistics.stdev(held) / statistics.fmean(held)
            bar = max(bar, spread)
        return ratio, bar

    def _pool(self, windows: Sequence[Visit]) -> None:
        reference = self._reference
        assert reference is not None
        for window in windows:
            reference.extend(window)
            self._held.append(window.samples_per_s)

    def _idle_cores(self, visit: Visit) -> float:
        return self.budget.cores - visit.cores_used

    def _jump_reason(self, visit: Visit, model: Model, target: int) -> str:
        point = visit.point()
        idle = self._idle_cores(visit)
        said = [
            (
                f"load {point.load_s * 1000:.1f} ms "
                f"{'>' if point.load_s > point.step_s else '<='} step {point.step_s * 1000:.1f} ms"
            )
        ]
        if math.isfinite(idle):
            said.append(f"{max(idle, 0):.1f} cores idle")
        return " and ".join(said) + self._model_said(model, target)

    def _step_reason(self, visit: Visit, before: Model | None, model: Model, target: int) -> str:
        """``6 workers: 1,894 samples/s (predicted 2,145); model: 7 workers ~2,030 samples/s (...)``."""
        said = f"{_workers(visit.num_workers)}: {visit.samples_per_s:,.0f} samples/s"
        expected = before.predict(visit.num_workers) if before is not None else None
        if expected is not None and math.isfinite(expected):
            said += f" (predicted {expected:,.0f})"
        return said + self._model_said(model, target)

    @staticmethod
    def _model_said(model: Model, target: int) -> str:
        predicted = model.predict(target)
        if predicted is None or not math.isfinite(predicted):
            return ""
        said = f"; model: {_workers(target)} ~{predicted:,.0f} samples/s"
        described = model.describe()
        details = [described] if described else []
        if math.isfinite(model.ceiling):
            details.append(f"CPU ceiling {model.ceiling:,.0f}")
        return said + (f" ({'; '.join(details)})" if details else "")

    def _settle_reason(self, anchor: Visit, best: Visit) -> str:
        others = sorted(v for v in self._round if v != anchor.num_workers)
        told = []
        for n in others:
            v = self._round[n]
            told.append(f"{n}: {(v.samples_per_s / anchor.samples_per_s - 1) * 100:+.0f}%")
        noise = anchor.noise
        text = f"settled: {_workers(anchor.num_workers)} at {anchor.samples_per_s:,.0f} samples/s"
        if math.isfinite(noise):
            text += f" (±{noise * 100:.0f}%)"
        if told:
            text += "; measured " + ", ".join(told)
        if best is not anchor:
            text += f" (within the noise of {best.num_workers}: fewer workers cost less)"
        return text


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


def curve_fields(predicted: Sequence[tuple[int, float | None]], ceiling: float) -> dict[str, Any]:
    """A model's curve as JSON carries it (a record's event, the protocol's status): ``predicted``
    ``{count: samples/s}`` and ``ceiling``, unknown and infinite figures as null."""
    return {"predicted": {str(n): _finite(s) for n, s in predicted}, "ceiling": _finite(ceiling)}


def curve_of(value: Any) -> tuple[tuple[int, float | None], ...]:
    """``curve_fields``' ``predicted`` read back (``{"count": samples/s or null}``) as ``TunerStatus.predicted``."""
    if not isinstance(value, dict):
        return ()
    curve = []
    for count, rate in value.items():
        if str(count).isdigit():
            curve.append(
                (int(count), float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None)
            )
    return tuple(sorted(curve))


def ceiling_of(value: Any) -> float:
    """``curve_fields``' ``ceiling`` read back (null: unknown, infinite)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.inf


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)
