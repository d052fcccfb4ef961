"""Reading the measurements: input- or compute-bound, the fastest configuration, the recommendation and warnings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from loadertop.core.measure.limits import Limits, current_limits, usable_cores_phrase, whole_cores
from loadertop.core.measure.memory import SOURCE_RSS
from loadertop.core.measure.store import ConfigSummary, percentile
from loadertop.core.measure.system import SystemSnapshot
from loadertop.core.policy.model import INPUT_BOUND_SHARE, Point, fit
from loadertop.core.protocol.records import BatchRecord


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


RECOMMEND_WITHIN = 0.05
"""The recommendation: the fewest workers whose measured throughput is within this share of the fastest.
Noise never stretches it: a count measured further below the fastest is not recommended."""
NOISE_Z = 2.0
"""How many standard errors a measurement must clear to be told apart from the ``RECOMMEND_WITHIN`` line."""
MIN_BATCHES = 10
"""Configurations with fewer steady batches are too noisy to judge."""
SHM_WARN_SHARE = 0.8
MEMORY_WARN_SHARE = 0.5
"""The tree's peak PSS past this share of the memory: a warning."""
MEMORY_GROWTH_WARN_SHARE = 0.1
"""Workers whose USS, growing as measured for an hour, would take this share of the memory: a warning."""
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What the advice needs to know about the machine.

    Attributes:
        usable_cores: cores this process may use: min(CPU affinity, cgroup cpuset, cgroup CPU quota),
            fractional under a fractional quota.
        memory_total_bytes: the memory limit where a cgroup confines the process, else system memory.
        shm_used_bytes, shm_total_bytes: ``/dev/shm`` (None where there is none).
        start_method: the multiprocessing start method the DataLoader workers use.
        ranks_on_node: training processes sharing these cores (a torchrun job's ranks on this node).
        limits: where the cores and memory came from (None for facts not read from this machine).
    """

    usable_cores: float
    memory_total_bytes: int
    shm_used_bytes: int | None = None
    shm_total_bytes: int | None = None
    start_method: str = "fork"
    ranks_on_node: int = 1
    limits: Limits | None = None

    @property
    def core_count(self) -> int:
        """``usable_cores`` as a whole number, for counts (rounded up, at least 1)."""
        return whole_cores(self.usable_cores)

    def cores_text(self) -> str:
        """``4 usable cores``; where a limit confines them ``1.5 usable cores (1.5 of 64 cores: cgroup v2 quota)``."""
        return usable_cores_phrase(self.usable_cores, self.limits)

    def with_system(self, system: SystemSnapshot | None) -> MachineFacts:
        """These facts brought up to date: the limits read again (at most once a second; facts read from this
        machine only), ``/dev/shm`` and the system memory as the latest sample read them (the memory limit
        where one confines the process)."""
        facts = self
        if self.limits is not None:
            limits = current_limits()
            facts = replace(
                self, usable_cores=limits.cores, memory_total_bytes=limits.memory_total_bytes, limits=limits
            )
        if system is None:
            return facts
        total = system.memory_total_bytes
        if facts.limits is not None and facts.limits.memory_confined:
            total = min(total, facts.limits.memory_total_bytes)
        return replace(
            facts,
            memory_total_bytes=total,
            shm_used_bytes=system.shm_used_bytes,
            shm_total_bytes=system.shm_total_bytes,
        )


def machine_facts(system: SystemSnapshot | None = None) -> MachineFacts:
    """This machine's facts as this process may use it (``measure.limits``); ``/dev/shm`` from ``system``."""
    import multiprocessing

    limits = current_limits()
    return MachineFacts(
        usable_cores=limits.cores,
        memory_total_bytes=limits.memory_total_bytes,
        start_method=multiprocessing.get_start_method(allow_none=True) or "fork",
        limits=limits,
    ).with_system(system)


@dataclass(frozen=True, slots=True)
class Advice:
    """What the measurements say.

    Attributes:
        fastest: the configuration with the most samples/s (None before any can be judged).
        recommended: the fewest workers within ``RECOMMEND_WITHIN`` of the fastest, same other settings.
        reason: the recommendation in one sentence.
        warnings: each a sentence saying what to look at and why.
        undecided: keys of the configurations the measurement cannot yet place on either side of the
            ``RECOMMEND_WITHIN`` line (the fastest among them): measuring them longer would settle it.
        predicted: the model's samples/s per worker count (``loadertop.core.policy.model``; the measured figure
            where there is one, None past the memory budget), for the fastest one's other settings.
        ceiling: the samples/s the cores allow at most (CPU per sample); inf when it is not known.
    """

    fastest: ConfigSummary | None
    recommended: ConfigSummary | None
    reason: str
    warnings: tuple[str, ...]
    undecided: tuple[str, ...] = ()
    predicted: tuple[tuple[int, float | None], ...] = ()
    ceiling: float = math.inf

    def is_fastest(self, summary: ConfigSummary) -> bool:
        """Whether ``summary`` is the fastest configuration (by key: summaries are rebuilt on every pull)."""
        return self.fastest is not None and summary.key == self.fastest.key

    def is_recommended(self, summary: ConfigSummary) -> bool:
        """Whether ``summary`` is the recommended configuration."""
        return self.recommended is not None and summary.key == self.recommended.key

    @property
    def recommended_num_workers(self) -> int | None:
        """The recommended worker count, if any."""
        return self.recommended.num_workers if self.recommended is not None else None

    @property
    def decided(self) -> bool:
        """True when the measurements separate every count that matters for the recommendation."""
        return not self.undecided


def ratio_with_error(speed: float, speed_sem: float, best: float, best_sem: float) -> tuple[float, float]:
    """``speed / best`` and the standard error of that ratio (NaN: unknown); the one notion of noise of
    the sweep, the advice and the autotuner."""
    ratio = speed / best
    return ratio, ratio * math.hypot(speed_sem / speed, best_sem / best)


def relative_to(summary: ConfigSummary, best: ConfigSummary) -> tuple[float, float]:
    """``summary``'s throughput as a share of ``best``'s, and the standard error of that share (NaN: unknown)."""
    if summary.key == best.key:
        return 1.0, 0.0
    return ratio_with_error(
        summary.samples_per_s, summary.samples_per_s_sem, best.samples_per_s, best.samples_per_s_sem
    )


def undecided_against(summary: ConfigSummary, best: ConfigSummary, *, within: float = RECOMMEND_WITHIN) -> bool:
    """Whether the measurement cannot tell if ``summary`` is within ``within`` of ``best`` (either way)."""
    ratio, error = relative_to(summary, best)
    if math.isnan(error):
        return True
    return abs(ratio - (1 - within)) < NOISE_Z * error


def recommend(summaries: Sequence[ConfigSummary], *, within: float = RECOMMEND_WITHIN) -> Advice:
    """The fastest configuration and the recommendation, without machine warnings.

    The recommendation is the fewest workers whose measured samples/s is at least
    ``1 - within`` of the fastest's. Counts at or below it whose side of that line is within
    ``NOISE_Z`` standard errors are ``undecided``: the reason says so, with the figures.
    """
    judged = [s for s in summaries if s.batches >= MIN_BATCHES and not math.isnan(s.samples_per_s)]
    best = fastest(judged)
    if best is None:
        return Advice(None, None, f"not enough batches yet (at least {MIN_BATCHES} steady per configuration)", ())
    siblings = [s for s in judged if s.config.with_workers(0) == best.config.with_workers(0)]
    good = [s for s in siblings if s.samples_per_s >= (1 - within) * best.samples_per_s]
    chosen = min(good, key=lambda s: (s.num_workers, -s.samples_per_s))
    if chosen is best:
        reason = f"{_workers(best.num_workers)}: the fastest measured ({speed_text(best)})"
        if len(siblings) == 1:
            reason += "; try other worker counts to compare"
    else:
        gap = 1 - chosen.samples_per_s / best.samples_per_s
        reason = (
            f"{_workers(chosen.num_workers)}: {speed_text(chosen)} is within {gap * 100:.0f}% of the fastest "
            f"({_workers(best.num_workers)}, {speed_text(best)}); fewer workers cost less CPU and memory"
        )
    unsure = [
        s
        for s in siblings
        if s.num_workers <= chosen.num_workers and s.key != best.key and undecided_against(s, best, within=within)
    ]
    if unsure:
        names = ", ".join(f"{_workers(s.num_workers)} ({speed_text(s)})" for s in unsure)
        reason += (
            f"; but the measurement cannot yet tell whether {names} "
            f"{'is' if len(unsure) == 1 else 'are'} within {within * 100:.0f}% of "
            f"{_workers(best.num_workers)}: measure longer (more batches) to be sure"
        )
    undecided = tuple(s.key for s in (*unsure, best)) if unsure else ()
    return Advice(best, chosen, reason, (), undecided)


def speed_cell(summary: ConfigSummary) -> str:
    """``1,210 ±40`` for tables: samples/s and, once it can be told, two standard errors."""
    if math.isnan(summary.samples_per_s):
        return "-"
    spread = NOISE_Z * summary.samples_per_s_sem
    return f"{summary.samples_per_s:,.0f}" + ("" if math.isnan(spread) else f" ±{spread:,.0f}")


def speed_text(summary: ConfigSummary) -> str:
    """``1,210 ± 40 samples/s`` (two standard errors), or without the ± when it is unknown."""
    spread = NOISE_Z * summary.samples_per_s_sem
    if math.isnan(spread):
        return f"{summary.samples_per_s:,.0f} samples/s"
    return f"{summary.samples_per_s:,.0f} ± {spread:,.0f} samples/s"


NODE_CPU_LIMIT = 0.9
"""Ranks that together need this share of the node's cores at their speed are limited by its CPU."""


def _rank_warnings(advice: Advice, judged: Sequence[ConfigSummary], most: int, machine: MachineFacts) -> list[str]:
    """For one rank of several on this node: its share of the cores, and what all ranks need of them.

    Not a fixed formula: what the ranks need is measured, this rank's CPU per sample (its whole
    process tree, workers included) times its samples/s, for every rank alike.
    """
    ranks, cores = machine.ranks_on_node, machine.usable_cores
    warnings = []
    share = cores / ranks
    if most > share:
        warnings.append(
            f"{_workers(most)} per rank x {ranks} ranks on {machine.cores_text()} "
            f"({share:.1f} a rank): workers past a rank's share compete with the other ranks for CPU"
        )
    best = advice.recommended or advice.fastest
    if best is not None and math.isfinite(best.cpu_s_per_sample) and math.isfinite(best.samples_per_s):
        needed = best.cpu_s_per_sample * best.samples_per_s * ranks
        if needed >= NODE_CPU_LIMIT * cores:
            warnings.append(
                f"the {ranks} ranks on this node need about {needed:.1f} of its {round(cores, 2):g} "
                "cores at "
                f"{_workers(best.num_workers)} ({best.cpu_s_per_sample * 1000:.2f} ms of CPU a sample, "
                f"{best.samples_per_s:,.0f} samples/s a rank): the node's CPU is the limit, more "
                "workers cannot make a rank faster"
            )
    return warnings


def advise(summaries: Sequence[ConfigSummary], machine: MachineFacts, *, within: float = RECOMMEND_WITHIN) -> Advice:
    """The recommendation plus warnings about cores, memory, ``/dev/shm``, input-bound runs and the start method."""
    advice = recommend(summaries, within=within)
    warnings: list[str] = []
    judged = [s for s in summaries if s.batches >= MIN_BATCHES]
    most = max((s.num_workers for s in judged), default=0)
    if machine.ranks_on_node > 1:
        warnings.extend(_rank_warnings(advice, judged, most, machine))
    elif most > machine.usable_cores:
        warnings.append(
            f"{_workers(most)} on {machine.cores_text()}: workers past the core count compete "
            "with each other and with the training step for CPU"
        )
    warnings.extend(memory_warnings(judged, machine))
    if machine.limits is not None:
        warnings.extend(machine.limits.notes)
    if machine.shm_total_bytes and machine.shm_used_bytes is not None:
        shm_share = machine.shm_used_bytes / machine.shm_total_bytes
        if shm_share > SHM_WARN_SHARE:
            warnings.append(
                f"/dev/shm is {shm_share * 100:.0f}% full: workers hand batches over through it and die with a "
                "bus error when it fills (in Docker raise --shm-size; or lower batch size or prefetch_factor)"
            )
    best = advice.fastest
    if best is not None:
        v = verdict(best.load_ms_mean, best.compute_ms_mean)
        if v is not None and v.input_bound:
            warnings.append(
                f"still input-bound at the fastest count ({_workers(best.num_workers)}: the step waits for data "
                f"{v.load_share * 100:.0f}% of the time): faster storage, a larger prefetch_factor, cheaper "
                "transforms or more cores would help more than workers"
            )
        if machine.start_method != "fork" and best.num_workers and not best.config.persistent_workers:
            warnings.append(
                f"workers start with '{machine.start_method}': each start imports and pickles the dataset again "
                f"(start-up {best.startup_ms:,.0f} ms); persistent_workers keeps them across epochs"
            )
    predicted, ceiling = predicted_curve(judged, advice.fastest, machine)
    return Advice(
        advice.fastest, advice.recommended, advice.reason, tuple(warnings), advice.undecided, predicted, ceiling
    )


def memory_warnings(judged: Sequence[ConfigSummary], machine: MachineFacts) -> list[str]:
    """The tree's PSS past ``MEMORY_WARN_SHARE`` of the memory, workers whose USS grows fast, figures that are RSS."""
    warnings = []
    total = machine.memory_total_bytes
    for s in judged:
        if not s.num_workers or math.isnan(s.pss_mb_peak):
            continue
        share = s.pss_mb_peak * MIB / total
        if share > MEMORY_WARN_SHARE:
            each = (
                f"; each worker holds {s.worker_uss_mb:,.0f} MB of its own (USS)"
                if not math.isnan(s.worker_uss_mb)
                else ""
            )
            warnings.append(
                f"memory: {_workers(s.num_workers)} peaked at {s.pss_mb_peak:,.0f} MB of PSS, "
                f"{share * 100:.0f}% of {_memory_words(machine)}{each}"
            )
    growing = [
        s
        for s in judged
        if s.num_workers
        and not math.isnan(s.worker_uss_growth_mb_per_min)
        and s.num_workers * s.worker_uss_growth_mb_per_min * 60 * MIB > MEMORY_GROWTH_WARN_SHARE * total
    ]
    if growing:
        s = max(growing, key=lambda g: g.worker_uss_growth_mb_per_min)
        warnings.append(
            f"memory: each worker's own memory (USS) grows {s.worker_uss_growth_mb_per_min:,.1f} MB a minute at "
            f"{_workers(s.num_workers)}: workers copy the pages of the dataset they touch (copy-on-write; a Python "
            "list or dict of objects does, through reference counts); hold it as numpy arrays or tensors"
        )
    inexact = next((s for s in judged if s.memory_source == SOURCE_RSS), None)
    if inexact is not None:
        warnings.append(
            f"memory: {inexact.memory_note}: those figures are RSS, upper bounds (a page shared with "
            "the main process counts once per worker)"
        )
    return warnings


def point_of(summary: ConfigSummary) -> Point:
    """What the model reads off a configuration's summary."""
    return Point(
        summary.num_workers,
        summary.samples_per_s,
        summary.load_ms_mean / 1000,
        summary.compute_ms_mean / 1000,
        summary.samples / summary.batches if summary.batches else math.nan,
        summary.cpu_s_per_sample,
    )


def predicted_curve(
    judged: Sequence[ConfigSummary], best: ConfigSummary | None, machine: MachineFacts
) -> tuple[tuple[tuple[int, float | None], ...], float]:
    """The model's curve over 0..twice the cores (and every measured count) and its CPU ceiling."""
    if best is None:
        return (), math.inf
    siblings = [s for s in judged if s.config.with_workers(0) == best.config.with_workers(0)]
    cores = machine.usable_cores / max(machine.ranks_on_node, 1)
    model = fit([point_of(s) for s in siblings], cores=cores)
    if model is None:
        return (), math.inf
    counts = sorted(set(range(2 * machine.core_count + 1)) | {s.num_workers for s in siblings})
    return model.curve(counts), model.ceiling


def default_counts(cores: int) -> tuple[int, ...]:
    """0, 1, 2, 4, ... up to twice the cores (twice the cores itself included)."""
    counts = [0, 1]
    n = 2
    while n < 2 * cores:
        counts.append(n)
        n *= 2
    if 2 * cores not in counts:
        counts.append(2 * cores)
    return tuple(counts)


def _memory_words(machine: MachineFacts) -> str:
    """``RAM``, or where a limit confines the process ``the 3.0 GiB it may use (cgroup v1 memory limit)``."""
    limits = machine.limits
    if limits is None or not limits.memory_confined:
        return "RAM"
    return f"the {machine.memory_total_bytes / 1024**3:.1f} GiB it may use ({limits.memory_source})"


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"
