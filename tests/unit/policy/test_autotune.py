"""The autotuner's logic on simulated landscapes: known cost per sample, known best count, seeded noise."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import pytest

from loadertop.core.policy.autotune import AutoTuner, Budget, Change, Observation, Reading
from loadertop.core.policy.model import Point, fit, soft_min


@dataclass
class Landscape:
    """A loader and loop whose truth is known: each worker makes a batch in ``make_s`` (of which
    ``cpu_s`` on a core), the loop steps in ``step_s`` (on a core), on ``cores`` cores; past the
    cores, workers and the loop share them (each extra runnable process slows all a little)."""

    make_s: float
    cpu_s: float
    step_s: float
    cores: float = 2.0
    batch: int = 8
    noise: float = 0.05
    overhead_s: float = 0.001  # CPU per batch of handing it from a worker to the loop
    gap: float = 0.0  # share of the cores left idle at as many workers as cores (workers blocked on the queues)

    def rate(self, n: int) -> float:
        """True batches per second at ``n`` workers."""
        if n == 0:
            return 1.0 / (self.make_s + self.step_s)
        cpu_per_batch = self.cpu_s + self.step_s + self.overhead_s
        limit = self.cores / cpu_per_batch * (1 - self.gap * self.cores / max(n, self.cores))
        crowd = max(0, n + 1 - self.cores) * 0.01 if n + 1 > self.cores else 0.0  # context switches
        return min(n / self.make_s, 1.0 / self.step_s, limit) / (1 + crowd)

    def best(self, counts: range) -> float:
        return max(self.rate(n) for n in counts)


class Simulation:
    """Runs a tuner against a landscape batch by batch, with a CPU clock and readings every 0.25 s."""

    def __init__(
        self, land: Landscape, tuner: AutoTuner, workers: int = 0, seed: int = 1, *, staged: bool = False
    ) -> None:
        self.land = land
        self.staged = staged  # the readings carry the loader's stage figures (what a worker takes a sample)
        self.tuner = tuner
        self.workers = workers
        self.rng = random.Random(seed)
        self.time = 1000.0
        self.cpu = 0.0
        self.main_cpu = 0.0
        self.next_reading = self.time
        self.pending: tuple[int, int] | None = None  # (count, batches until the old ones are delivered)
        self.batches = 0
        self.samples = 0
        self.trace: list[int] = []
        self.changes: list[Change] = []
        self.changed_at: list[int] = []  # the batch at which each change came
        self.slow = 1.0  # the machine's spell: every batch takes this many times as long

    def run(self, batches: int) -> None:
        for _ in range(batches):
            self.step()

    def step(self) -> None:
        land = self.land
        n = self.workers
        rate = land.rate(n)
        iteration = self.rng.gauss(1.0, land.noise) / rate * self.slow
        step = min(land.step_s * self.rng.gauss(1.0, land.noise), iteration)
        load = max(iteration - step, 0.0)
        self.time += iteration
        self.cpu += land.cpu_s + land.step_s + (land.overhead_s if n else 0.0)
        self.main_cpu += land.step_s + (land.overhead_s if n else land.cpu_s)  # the workers' CPU is theirs
        self.batches += 1
        self.samples += land.batch
        self.trace.append(n)
        known = len(self.tuner.changes)
        change = self.tuner.observe(
            Observation(n, land.batch, load, step, self.time, refill=self.batches % 100 < max(1, n))
        )
        self.changes += self.tuner.changes[known:]
        self.changed_at += [self.batches] * (len(self.tuner.changes) - known)
        if change is not None and change.to_workers != n:
            self.pending = (change.to_workers, 2)  # the old workers deliver two more batches
        if self.pending is not None:
            count, left = self.pending
            if left == 0:
                self.workers, self.pending = count, None
            else:
                self.pending = (count, left - 1)
        if self.time >= self.next_reading:
            reading = Reading(self.time, self.cpu, self.workers, self.workers * 50_000_000, main_cpu_s=self.main_cpu)
            if self.staged:
                reading = replace(
                    reading,
                    stage_wall_s_per_sample=land.make_s / land.batch,
                    stage_cpu_s_per_sample=land.cpu_s / land.batch,
                )
            self.tuner.read(reading)
            self.next_reading = self.time + 0.25

    def settled_at(self) -> int | None:
        status = self.tuner.status()
        return status.workers if status.state == "settled" else None


COUNTS = range(9)


def tuned(land: Landscape, *, start: int = 0, batches: int = 1500, seed: int = 1, staged: bool = False) -> Simulation:
    sim = Simulation(land, AutoTuner(Budget(cores=land.cores, max_workers=8)), workers=start, seed=seed, staged=staged)
    sim.run(batches)
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_storage_bound_loader_settles_above_the_core_count_within_5_percent_of_the_best(seed: int) -> None:
    # 8 samples x 2 ms of storage wait + 0.5 ms of CPU each: 20 ms a batch, the loop steps in 4 ms.
    land = Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004)
    sim = tuned(land, seed=seed)
    settled = sim.settled_at()
    assert settled is not None and settled > land.cores
    assert land.rate(settled) >= 0.95 * land.best(COUNTS)
    assert sim.changes[0].kind == "jump"  # the model's pick first, not a walk from 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_cpu_bound_loader_settles_near_the_usable_cores(seed: int) -> None:
    # All CPU: 30 ms of a core per batch, the loop 5 ms: two cores carry 2 / 36 ms batches at most.
    land = Landscape(make_s=0.030, cpu_s=0.030, step_s=0.005)
    sim = tuned(land, seed=seed)
    settled = sim.settled_at()
    assert settled is not None and land.rate(settled) >= 0.95 * land.best(COUNTS)
    # The model's soft knee (batches come unevenly where two limits meet) may want one worker past the cores.
    assert settled <= land.cores + 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_cpu_bound_loader_whose_workers_leave_cores_idle_settles_where_more_workers_fill_them(seed: int) -> None:
    # As on a 2-core VM (benchmarks/autotune.py, cpu_bound: 3 workers 0.87 of 6's): 2 or 3 workers leave cores
    # idle while they block on the queues, more workers fill them: the best is past the cores.
    land = Landscape(make_s=0.016, cpu_s=0.016, step_s=0.002, gap=0.25)
    sim = tuned(land, seed=seed)
    settled = sim.settled_at()
    assert settled is not None and land.rate(settled) >= 0.95 * land.best(COUNTS), [c.line() for c in sim.changes]
    assert settled > land.cores


@pytest.mark.parametrize("start", [0, 4])
def test_a_compute_bound_loop_settles_at_0_or_1_worker(start: int) -> None:
    land = Landscape(make_s=0.001, cpu_s=0.001, step_s=0.040)
    sim = tuned(land, start=start, batches=600)
    assert sim.settled_at() in (0, 1)


@pytest.mark.parametrize(
    "land",
    [Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004), Landscape(make_s=0.030, cpu_s=0.030, step_s=0.005)],
    ids=["storage", "cpu"],
)
def test_it_settles_in_a_third_of_the_batches_of_a_full_sweep(land: Landscape) -> None:
    sim = tuned(land, batches=1000)
    settled_at = sim.changed_at[next(i for i, c in enumerate(sim.changes) if c.kind == "settle")]
    sweep = 5 * 100  # 0..2x cores at the sweep's default 100 steady batches each
    assert settled_at <= sweep / 3


def test_a_phase_change_is_tuned_again_and_a_steady_run_is_not() -> None:
    land = Landscape(make_s=0.010, cpu_s=0.002, step_s=0.005)
    sim = tuned(land, batches=800)
    first = sim.settled_at()
    assert first is not None
    before = len(sim.changes)
    sim.run(1500)  # nothing changes: it holds, no oscillation
    assert len(sim.changes) == before and sim.settled_at() == first
    sim.land = Landscape(make_s=0.030, cpu_s=0.006, step_s=0.005)  # each sample now costs three times as much
    sim.run(2000)
    kinds = [c.kind for c in sim.changes[before:]]
    assert kinds[0] == "retune"
    second = sim.settled_at()
    assert second is not None and second > first
    assert sim.land.rate(second) >= 0.95 * sim.land.best(COUNTS)


def held_window(sim: Simulation, slow: float) -> None:
    """One hold window of the settled count with every batch ``slow`` times as long (a spell of the machine)."""
    sim.slow = slow
    window = sim.tuner._visit  # the window being measured: run until the tuner starts the next one
    for _ in range(2000):
        sim.step()
        if sim.tuner._visit is not window or sim.tuner.status().state != "settled":
            return
    raise AssertionError("the window never ended")


def settled_quietly() -> tuple[Simulation, int]:
    land = Landscape(make_s=0.010, cpu_s=0.002, step_s=0.005, noise=0.0)
    sim = tuned(land, batches=800)
    for _ in range(3):  # the settling measurement and three held windows at its figure: the spread is 0
        held_window(sim, 1.0)
    settled = sim.settled_at()
    assert settled is not None
    return sim, len(sim.changes)


def test_spells_of_noise_both_ways_are_not_a_change_and_a_lasting_one_is() -> None:
    sim, before = settled_quietly()
    for spell in [1.3, 0.75] * 6:  # each window 23-30% off, the other way from the one before
        held_window(sim, spell)
    assert len(sim.changes) == before, [c.line() for c in sim.changes[before:]]
    for _ in range(2):
        held_window(sim, 2.5)  # 60% fewer samples/s, twice: past this machine's spread (about ±50%)
    retune = sim.changes[before]
    assert retune.kind == "retune" and re.search(r"\(-6\d% over 2 windows", retune.reason), retune.reason


def test_on_a_noisy_machine_the_bar_is_its_spread_between_windows() -> None:
    sim, before = settled_quietly()
    for spell in [1.14, 0.88, 1.12, 0.87, 1.13, 0.89, 1.14, 0.88] * 3:  # each within 15%: pooled, 2 SD 26%
        held_window(sim, spell)
    assert len(sim.changes) == before
    for _ in range(2):
        held_window(sim, 1.22)  # 18% fewer samples/s twice: past 15%, within this machine's spread
    assert len(sim.changes) == before, [c.line() for c in sim.changes[before:]]
    quiet, before = settled_quietly()
    for _ in range(2):
        held_window(quiet, 1.22)  # the same two windows where held windows never moved: a change
    assert quiet.changes[before].kind == "retune"


def test_every_change_says_why_with_figures_and_records_as_an_event() -> None:
    sim = tuned(Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004), batches=1000)
    jump = sim.changes[0]
    assert jump.line().startswith("load ") and " ms > step " in jump.line() and "cores idle" in jump.line()
    assert jump.line().endswith(f"0 -> {jump.to_workers} workers")
    event = jump.to_event()
    assert event["event"] == "autotune" and event["from"] == 0 and event["to"] == jump.to_workers
    assert set(event["predicted"]) == {str(n) for n in COUNTS}
    settle = next(c for c in sim.changes if c.kind == "settle")
    assert settle.reason.startswith(f"settled: {settle.to_workers} workers at ")


def test_the_memory_budget_caps_the_count() -> None:
    land = Landscape(make_s=0.040, cpu_s=0.002, step_s=0.004)  # would want 8+ workers
    tuner = AutoTuner(Budget(cores=2, memory_bytes=3 * 50_000_000, max_workers=8))  # 50 MB a worker: 3 fit
    sim = Simulation(land, tuner, workers=1)
    sim.run(1200)
    assert max(sim.trace) <= 3 and sim.settled_at() == 3


def test_the_model_reads_the_time_to_make_a_batch_off_zero_workers_and_caps_at_the_cpu_ceiling() -> None:
    zero = Point(
        0, samples_per_s=8 / 0.024, load_s=0.020, step_s=0.004, samples_per_batch=8, cpu_s_per_sample=0.008 / 8
    )
    model = fit([zero], cores=2)
    assert model is not None and model.make_s == 0.020
    assert model.ceiling == pytest.approx(2 / 0.008 * 8)  # cores / CPU per sample
    assert model.predict(0) == zero.samples_per_s  # measured: never predicted over
    # The three limits (workers, the loop, the CPU) combine as a soft minimum.
    assert model.predict(1) == pytest.approx(8 * soft_min([1 / 0.020, 1 / 0.004, 2 / 0.008]))
    assert soft_min([50.0, 250.0, 250.0]) == pytest.approx((50.0**-4 + 2 * 250.0**-4) ** -0.25)
    assert model.predict(5) < 8 / 0.004 == model.ceiling  # at the knee the loop still waits a little
    assert model.predict(8) > model.predict(5)  # ...and more batches in flight absorb it
    assert model.workers_to_stop_waiting() == pytest.approx(5)
    assert 5 < model.smallest_enough(range(9), within=0.05) <= 8  # past the knee, where the soft minimum flattens


# Measured on this 2-core VM (benchmarks' calibrated dataset: 2 ms of storage wait and 0.5 ms of CPU a
# sample, batch 32, a 4 ms step that waits): at 0 workers 347 samples/s, the loop waits 86.5 ms, the
# tree spends 21.8 ms of CPU a batch; at 6 workers 1,894 samples/s, the loop waits 10.6 ms, the training
# process spends 3.8 ms of CPU a batch and the workers 22.8 ms; 8 workers gave 1,940 samples/s.
ZERO = Point(0, samples_per_s=347, load_s=0.0865, step_s=0.0057, samples_per_batch=32, cpu_s_per_sample=0.0218 / 32)
SIX = Point(
    6,
    samples_per_s=1894,
    load_s=0.0106,
    step_s=0.0063,
    samples_per_batch=32,
    cpu_s_per_sample=(0.0038 + 0.0228) / 32,
    main_cpu_s_per_batch=0.0038,
    worker_cpu_s_per_batch=0.0228,
)


def test_the_model_keeps_the_workers_cpu_and_wait_apart_from_the_training_process() -> None:
    model = fit([ZERO, SIX], cores=2)
    assert model is not None
    assert model.worker_cpu_s == 0.0228 and model.main_cpu_s == 0.0038
    assert model.cpu_s_per_batch == pytest.approx(0.0228 + 0.0038)  # the ceiling counts both
    # A worker's wall time a batch: the 0-worker wait with its CPU there (21.8 - 3.8 ms) replaced by a worker's.
    assert model.make_s == pytest.approx(0.0865 - (0.0218 - 0.0038) + 0.0228)
    assert model.wait_s == pytest.approx(model.make_s - 0.0228)
    assert model.describe().startswith("a worker 2.14 ms waiting + 0.71 ms CPU, the loop 0.12 ms CPU a sample")


def test_stage_figures_at_zero_workers_split_its_cpu_and_leave_the_predictions_as_they_were() -> None:
    # The loader measured 0.55 ms of CPU in each sample's fetch and collate (17.6 ms a batch of 32) of the
    # tree's 21.8: the rest (4.2 ms) is the loop's step and bookkeeping.
    staged = replace(ZERO, stage_cpu_s_per_sample=0.00055)
    model, plain = fit([staged], cores=2), fit([ZERO], cores=2)
    assert model is not None and plain is not None
    assert model.worker_cpu_s == pytest.approx(0.0176) and model.main_cpu_s == pytest.approx(0.0218 - 0.0176)
    assert model.make_s == pytest.approx(0.0865) and model.wait_s == pytest.approx(0.0865 - 0.0176)
    assert model.describe() == "a worker 2.15 ms waiting + 0.55 ms CPU, the loop 0.13 ms CPU a sample"
    assert plain.describe() == "2.70 ms to make a sample, 0.68 ms CPU"
    assert model.curve(range(9)) == plain.curve(range(9))  # the limits use the totals alone


def test_the_curve_passes_through_the_measurements_and_scales_their_neighbours() -> None:
    model = fit([ZERO, SIX], cores=2)
    assert model is not None
    assert model.predict(6) == 1894 and model.predict(0) == 347
    efficiency = 1894 / model.limits(6)
    assert dict(model.efficiency) == {6: pytest.approx(efficiency)}
    assert model.predict(8) == pytest.approx(model.limits(8) * efficiency)
    assert model.predict(3) == pytest.approx(model.limits(3) * efficiency)
    # 8 workers measured 1,940 here (their CPU a batch grows with the crowd: 28.9 ms): the model says 12% more,
    # past the 5% it is asked to be sure within, so the tuner measures there instead of settling on a guess.
    assert model.predict(8) == pytest.approx(2174, rel=0.01)
    assert model.smallest_enough(range(9), within=0.05) in (7, 8)


def test_past_the_most_workers_measured_a_cpu_bound_shortfall_shrinks_as_more_workers_fill_the_idle_cores() -> None:
    # 16 ms of CPU a batch at 0 workers; 3 workers deliver 60 batches/s where 2 cores / 20 ms a batch carry 100.
    zero = Point(0, 8 / 0.018, load_s=0.016, step_s=0.002, samples_per_batch=8, cpu_s_per_sample=0.018 / 8)
    three = Point(
        3,
        480.0,
        load_s=0.0147,
        step_s=0.002,
        samples_per_batch=8,
        main_cpu_s_per_batch=0.003,
        worker_cpu_s_per_batch=0.017,
    )
    model = fit([zero, three], cores=2)
    assert model is not None and model.cpu_bound(3) and not model.cpu_bound(0)
    ((_, measured_efficiency),) = model.efficiency
    assert measured_efficiency < 1
    assert model.efficiency_at(6) == pytest.approx(1 - (1 - measured_efficiency) * 3 / 6)
    assert model.predict(6) > model.predict(4) > 480.0
    # Where the loop's step stops the most workers measured, more workers cannot fill anything: the same efficiency.
    step_bound = fit(
        [
            Point(
                5,
                800.0,
                load_s=0.002,
                step_s=0.008,
                samples_per_batch=8,
                main_cpu_s_per_batch=0.001,
                worker_cpu_s_per_batch=0.001,
            )
        ],
        cores=2,
    )
    assert step_bound is not None and not step_bound.cpu_bound(5)
    assert step_bound.efficiency_at(8) == dict(step_bound.efficiency)[5]


def test_the_jump_from_zero_goes_past_the_cores_to_the_predicted_best_on_storage_latency() -> None:
    model = fit([ZERO], cores=2)
    assert model is not None
    # The 0-worker figures alone: the CPU ceiling (2 cores / 21.8 ms a batch) is not what stops six workers.
    assert model.ceiling == pytest.approx(2 / 0.0218 * 32)
    assert model.smallest_enough(range(9), within=0.05) >= 6


def test_no_count_is_tried_that_the_model_put_more_than_5_percent_below_its_best() -> None:
    lands = [
        Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004),
        Landscape(make_s=0.030, cpu_s=0.030, step_s=0.005),
        Landscape(make_s=0.001, cpu_s=0.001, step_s=0.040),
        Landscape(make_s=0.040, cpu_s=0.012, step_s=0.006),
    ]
    tried = 0
    for land in lands:
        for seed in (1, 2, 3):
            for start in (0, 3):
                sim = tuned(land, start=start, seed=seed, batches=800)
                for change in sim.changes:
                    if change.kind in ("jump", "step"):
                        tried += 1
                        curve = {n: s for n, s in change.predicted if s is not None}
                        assert curve[change.to_workers] >= 0.95 * max(curve.values()), change.line()
    assert tried >= 12


STORAGE = Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004)  # best above the cores (see the first test)


def remembered_run(land: Landscape, *, at: int, samples_per_s: float, seed: int = 1) -> Simulation:
    tuner = AutoTuner(Budget(cores=land.cores, max_workers=8))
    tuner.start_at(at, samples_per_s, "settled there on 2026-11-30 for this loader on this machine")
    sim = Simulation(land, tuner, workers=0, seed=seed)
    sim.run(1500)
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_remembered_count_is_gone_to_at_once_and_verified_in_fewer_batches_than_a_search(seed: int) -> None:
    searched = tuned(STORAGE, seed=seed)
    best = searched.settled_at()
    assert best is not None
    settle_of = [
        at for change, at in zip(searched.changes, searched.changed_at, strict=True) if change.kind == "settle"
    ]
    sim = remembered_run(STORAGE, at=best, samples_per_s=STORAGE.rate(best) * STORAGE.batch, seed=seed)
    first = sim.changes[0]
    assert (first.kind, first.from_workers, first.to_workers) == ("jump", 0, best)
    assert first.reason == f"starting at {best} workers: settled there on 2026-11-30 for this loader on this machine"
    settle = sim.changes[1]
    assert settle.kind == "settle" and settle.to_workers == best and settle.reason.startswith(f"verified: {best} ")
    assert sim.changed_at[1] < settle_of[0]  # one count measured, not a search
    assert sim.settled_at() == best


def test_a_remembered_count_that_measures_slower_now_is_searched_from() -> None:
    # Remembered at 2 workers twice as fast as 2 workers run now (the machine or the data changed): search.
    sim = remembered_run(STORAGE, at=2, samples_per_s=2 * STORAGE.rate(2) * STORAGE.batch)
    assert [c.kind for c in sim.changes[:2]] == ["jump", "jump"]  # to 2, then the model's pick from there
    settled = sim.settled_at()
    assert settled is not None and STORAGE.rate(settled) >= 0.95 * STORAGE.best(COUNTS)
    assert not any(c.reason.startswith("verified") for c in sim.changes)


def test_a_remembered_count_past_the_budget_is_ignored() -> None:
    tuner = AutoTuner(Budget(cores=2, max_workers=4))
    tuner.start_at(9, 1000.0, "settled there on a bigger machine")
    sim = Simulation(STORAGE, tuner, workers=0)
    sim.run(400)
    assert not any("starting at" in c.reason for c in sim.changes)


LATENCY_BOUND = [
    Landscape(make_s=0.040, cpu_s=0.004, step_s=0.010),  # a worker waits 36 ms a batch: 4 keep up with the step
    Landscape(make_s=0.060, cpu_s=0.003, step_s=0.008, cores=4),  # 8 keep up
]


@pytest.mark.parametrize("land", LATENCY_BOUND)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stage_figures_let_a_start_above_the_need_jump_to_a_count_near_the_best_at_once(
    land: Landscape, seed: int
) -> None:
    # Started at 8 workers (a script's own count, or one remembered) where the loop does not wait for data: the
    # workers' stage figures say how long making a batch takes them, waiting included, so the first jump goes
    # where enough workers keep up; a worker's CPU alone (without them) is the least it can take.
    sim = tuned(land, start=8, seed=seed, staged=True, batches=600)
    best = land.best(COUNTS)
    assert sim.changes and land.rate(sim.changes[0].to_workers) >= 0.95 * best
    settled = sim.settled_at()
    assert settled is not None and land.rate(settled) >= 0.95 * best


def test_the_stage_wall_time_is_a_workers_time_to_make_a_batch_where_no_count_waits_for_data() -> None:
    # 8 workers, the loop never waiting: a worker's CPU is 0.5 ms a sample, its stages took 5 ms a sample.
    eight = Point(8, 800.0, 0.0001, 0.010, 8.0, 0.0015, worker_cpu_s_per_batch=0.004, main_cpu_s_per_batch=0.008)
    plain, staged = fit([eight], cores=2), fit([replace(eight, stage_wall_s_per_sample=0.005)], cores=2)
    assert plain is not None and staged is not None
    assert plain.make_s == 0.004  # at least its CPU: the fewest workers it allows
    assert staged.make_s == pytest.approx(0.040)  # what the workers measured: 4 of them keep up with the step
    assert staged.wait_s == pytest.approx(0.036)
