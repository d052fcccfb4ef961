"""What a loader's stage figures say: the one verdict in words, with the change it implies. Pure logic, no torch."""

from __future__ import annotations

import math

from loadertop.core.protocol.stages import COLLATE, REST, StageFigures, ms

COLLATE_SHARE = 0.3
"""A collate taking this share of a sample's time is the verdict, whatever else is slow."""

WAITING_SHARE = 0.5
"""A sample that waits (wall less CPU) this share of its time is latency-bound: workers past the cores help."""

MAX_LATENCY_WORKERS = 64
"""The most workers a latency-bound verdict names (each one holds memory and a process)."""


def waiting_share(figures: StageFigures) -> float | None:
    """The share of a sample's wall time spent waiting, not computing (None where a stage's CPU was never read)."""
    total, cpu = figures.sample_ms, figures.sample_cpu_ms
    if cpu is None or total <= 0:
        return None
    return max(0.0, min(1.0, 1.0 - cpu / total))


def latency_bound_workers(figures: StageFigures, cores: float) -> int | None:
    """About the best count for a latency-bound loader: the cores times a sample's wall over its CPU."""
    total, cpu = figures.sample_ms, figures.sample_cpu_ms
    if cpu is None or cpu <= 0 or total <= 0:
        return None
    return max(1, min(MAX_LATENCY_WORKERS, math.ceil(cores * total / cpu)))


def verdict(figures: StageFigures, cores: float) -> str:
    """One sentence: which stage dominates a sample, waiting or computing, and the change it implies."""
    if figures.off:
        return f"stage timing is off: {figures.off}"
    if not figures.samples or not figures.stages:
        return "no samples timed yet"
    total = figures.sample_ms
    by_name = {stage.name: stage for stage in figures.stages}
    collate = by_name.get(COLLATE)
    if collate is not None and figures.share(collate) >= COLLATE_SHARE:
        return (
            f"collate {figures.share(collate):.0%} of each sample's time ({ms(figures.wall_ms(collate))} of "
            f"{ms(total)} ms): a cheaper collate_fn, or tensors made in the dataset"
        )
    waiting = waiting_share(figures)
    cores_text = f"{cores:g} usable core" + ("" if cores == 1 else "s")
    if waiting is not None and waiting >= WAITING_SHARE:
        slow = max(figures.stages, key=lambda stage: figures.wait_ms(stage) or 0.0)
        workers = latency_bound_workers(figures, cores)
        model = f" (about {workers} workers)" if workers is not None else ""
        storage = figures.mb_per_s(figures.storage_kb_per_sample) if figures.storage_bytes else None
        storage_text = f" (storage: {storage:.3g} MB/s a worker)" if storage else ""
        return (
            f"{waiting:.0%} of each sample is waiting{storage_text}, most in {_named(slow.name)}: latency-bound: "
            f"workers beyond the {cores_text} still help{model}"
        )
    slow = figures.slowest_first()[0]
    cpu, wall = figures.cpu_ms(slow), figures.wall_ms(slow)
    share = None if cpu is None or wall <= 0 else cpu / wall
    kind = "" if share is None else (", all CPU" if share >= 0.9 else f", {share:.0%} CPU")
    return (
        f"{_named(slow.name)} {ms(figures.wall_ms(slow))} of {ms(total)} ms per sample{kind}: more workers help up "
        f"to the {cores_text}; past that, make {_named(slow.name)} cheaper"
    )


def to_wire(figures: StageFigures, cores: float) -> dict[str, object]:
    """The figures as JSON with their verdict (``--record``'s ``stages`` event, a sweep row's ``stages``)."""
    return {**figures.to_wire(), "verdict": verdict(figures, cores)}


def _named(stage: str) -> str:
    return "the rest of __getitem__" if stage == REST else stage
