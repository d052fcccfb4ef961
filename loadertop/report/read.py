"""A run to report on: a ``--record`` file read line by line, or a run of the run history; no plotting here.

``read_record(path)`` keeps every line it can read and says which it could not (``Run.problems``: a line that
is not JSON, a truncated last line of a killed run, a line of another program); a file with no loadertop line
at all is refused (``ReportError``). What it keeps, per *part* of the run (a rank's loader; the built-in run
is one part): each batch (step, workers, load, step, loss, samples), the switches (where the worker count
changed), the autotune changes, the memory samples and the stage figures; and per worker count the
comparison's figures: samples/s with two standard errors (the sweep's batch means), load and step per batch,
PSS and a worker's USS, and the autotuner's latest predicted curve.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadertop.core.measure.history import History, LoaderRun
from loadertop.core.measure.store import block_size, throughput_sem
from loadertop.core.policy.advice import NOISE_Z


class ReportError(ValueError):
    """The run cannot be reported on (one line, what to do)."""


@dataclass
class Batch:
    step: int
    num_workers: int
    samples: int
    load_ms: float
    step_ms: float | None
    loss: float | None
    time: float
    warmup: bool
    refill: bool


@dataclass
class CountFigures:
    """One worker count of a part: what the comparison table says of it."""

    num_workers: int
    batches: int
    samples_per_s: float
    error: float  # two standard errors of samples_per_s (NaN: too few batches to tell)
    load_ms: float
    step_ms: float
    pss_mb: float | None
    worker_uss_mb: float | None
    cpu_percent: float | None = None  # the tree's CPU over the count's wall time (100 = one core)
    cpu_ms_per_sample: float | None = None


@dataclass
class Part:
    """One loader of one rank (the built-in run: one part)."""

    name: str
    rank: int | None = None
    batches: list[Batch] = field(default_factory=list)
    autotune: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    logged: list[tuple[int, float]] = field(default_factory=list)  # a script's loadertop.log(loss=...) by step
    summaries: list[dict[str, Any]] = field(default_factory=list)  # the built-in run's table, at its end
    model: dict[str, Any] = field(default_factory=dict)  # the built-in run's model curve, at its end
    rows: list[CountFigures] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.name if self.rank is None else f"rank {self.rank}: {self.name}"

    def switches(self) -> list[tuple[int, int, int]]:
        """``(step, from, to)`` wherever the worker count changed between two batches."""
        found = []
        for before, after in zip(self.batches, self.batches[1:], strict=False):
            if after.num_workers != before.num_workers:
                found.append((after.step, before.num_workers, after.num_workers))
        return found

    def predicted(self) -> list[tuple[int, float]]:
        """The model's curve, ``(count, samples/s)``: the one through the whole run (its end's ``model`` event),
        else the autotuner's latest; empty where there is neither."""
        for source in (self.model, *reversed(self.autotune)):
            curve = source.get("predicted") or {}
            points = [(int(n), float(v)) for n, v in curve.items() if isinstance(v, (int, float))]
            if points:
                return sorted(points)
        return []


@dataclass
class Run:
    """What a report draws: its source, its parts, and the lines it could not read."""

    source: str
    parts: list[Part]
    problems: list[str] = field(default_factory=list)


def read_record(path: Path) -> Run:
    """A ``--record`` file (``ReportError`` where it cannot be read or holds no loadertop line)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(
            f"{path}: {exc.strerror or exc}: give a --record file or a run number of loadertop history"
        ) from None
    parts: dict[tuple[int | None, str], Part] = {}
    problems: list[str] = []
    ours = 0
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
            why = "cut off (a run that was killed?)" if last and not text.endswith("\n") else f"not JSON ({exc.msg})"
            problems.append(f"line {number}: {why}: left out")
            continue
        if not isinstance(item, dict) or item.get("schema") != 2:
            problems.append(f'line {number}: not a loadertop record line (no "schema": 2): left out')
            continue
        ours += 1
        try:
            _take(parts, item)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"line {number}: a field is missing or malformed ({type(exc).__name__}: {exc}): left out")
    if not ours:
        raise ReportError(f'{path}: not a loadertop --record file (no line has "schema": 2)')
    run = Run(str(path), [part for part in parts.values() if part.batches or part.stages], problems)
    for part in run.parts:
        part.rows = count_figures(part)
    return run


def _take(parts: dict[tuple[int | None, str], Part], item: dict[str, Any]) -> None:
    rank = item.get("rank")
    event = item.get("event")
    if event == "straggler":
        return
    name = str(item.get("loader") or "train")
    key = (rank if isinstance(rank, int) else None, name)
    part = parts.get(key)
    if part is None:
        part = parts[key] = Part(name, key[0])
    if event is None:
        step_ms = item["step_ms"]
        part.batches.append(
            Batch(
                step=int(item["step"]),
                num_workers=int(item["num_workers"]),
                samples=int(item["samples"]),
                load_ms=float(item["load_ms"]),
                step_ms=None if step_ms is None else float(step_ms),
                loss=_finite(item.get("loss")),
                time=float(item["time"]),
                warmup=bool(item.get("warmup", False)),
                refill=int(item["batch"]) <= max(1, int(item["num_workers"])),
            )
        )
    elif event == "autotune":
        part.autotune.append(item)
    elif event == "memory":
        part.memory.append(item)
    elif event == "stages":
        part.stages.append(item)
    elif event == "summary":
        part.summaries.append(item)
    elif event == "model":
        part.model = item
    elif event == "log" and (loss := _finite(item.get("loss"))) is not None:
        part.logged.append((int(item["step"]), loss))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def count_figures(part: Part) -> list[CountFigures]:
    """Per worker count, in the order first run: the steady batches' samples/s with two standard errors, load
    and step per batch, mean PSS and a worker's mean USS (where memory was sampled)."""
    by_count: dict[int, list[Batch]] = {}
    for batch in part.batches:
        if not batch.warmup and batch.step_ms is not None:
            by_count.setdefault(batch.num_workers, []).append(batch)
    rows = []
    for count, batches in by_count.items():
        iters = [(b.load_ms + (b.step_ms or 0.0)) / 1000.0 for b in batches]
        samples = sum(b.samples for b in batches)
        total = sum(iters)
        if total <= 0:
            continue
        sem = throughput_sem(iters, [int(b.refill) for b in batches], samples, block_size(count))
        memory = [m for m in part.memory if m.get("num_workers") == count]
        uss = [sum(m["worker_uss_mb"]) / len(m["worker_uss_mb"]) for m in memory if m.get("worker_uss_mb")]
        summary = next((s for s in part.summaries if s.get("num_workers") == count), {})
        per_sample = _finite(summary.get("cpu_s_per_sample"))
        rows.append(
            CountFigures(
                count,
                len(batches),
                samples / total,
                NOISE_Z * sem,
                sum(b.load_ms for b in batches) / len(batches),
                sum(b.step_ms or 0.0 for b in batches) / len(batches),
                sum(float(m["pss_mb"]) for m in memory) / len(memory) if memory else None,
                sum(uss) / len(uss) if uss else None,
                _finite(summary.get("cpu_percent")),
                None if per_sample is None else 1000 * per_sample,
            )
        )
    return rows


def read_history_run(run_id: int, history: History | None = None) -> Run:
    """Run ``run_id`` of the run history: its loaders' rows and stages (no batches: a history keeps the table)."""
    history = history if history is not None else History()
    found = [r for r in history.loader_runs(limit=100_000) if r.run_id == run_id]
    if not found:
        raise ReportError(f"run {run_id}: not in the run history {history.path} (loadertop history lists the runs)")
    return Run(f"run {run_id} of {history.path}", [_history_part(r) for r in found])


def _history_part(run: LoaderRun) -> Part:
    part = Part(run.name)
    part.stages = list(run.stages)
    part.rows = [
        CountFigures(
            int(row["num_workers"]),
            int(row.get("batches") or 0),
            float(row["samples_per_s"]),
            2 * float(row["samples_per_s_sem"]) if isinstance(row.get("samples_per_s_sem"), (int, float)) else math.nan,
            float(row.get("load_ms_mean") or 0.0),
            float(row.get("compute_ms_mean") or 0.0),
            _finite(row.get("pss_mb")),
            _finite(row.get("worker_uss_mb")),
            _finite(row.get("cpu_percent")),
            None if (cpu := _finite(row.get("cpu_s_per_sample"))) is None else 1000 * cpu,
        )
        for row in run.rows
        if isinstance(row.get("samples_per_s"), (int, float))
    ]
    return part


def source_of(text: str, history: History | None = None) -> Run:
    """``loadertop report RUN``'s ``RUN``: a file, else a run number of the history."""
    path = Path(text)
    if path.exists() or not text.isdigit():
        return read_record(path)
    return read_history_run(int(text), history)


def losses(part: Part) -> Sequence[tuple[int, float]]:
    """``(step, loss)``: the batches' own (the built-in run's), else what the script logged."""
    own = [(b.step, b.loss) for b in part.batches if b.loss is not None]
    return own or part.logged
