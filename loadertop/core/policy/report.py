"""The comparison as text: a plain table, Markdown, CSV and JSON, with the advice."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadertop.core.measure.memory import SOURCE_RSS, SOURCE_SMAPS
from loadertop.core.measure.store import ConfigSummary
from loadertop.core.policy.advice import Advice, MachineFacts, recommend, speed_cell, verdict
from loadertop.core.policy.stages import to_wire as stages_to_wire
from loadertop.core.policy.stages import verdict as stage_verdict
from loadertop.core.protocol.config import describe_workers
from loadertop.core.protocol.gpu_idle import GpuIdle
from loadertop.core.protocol.stages import StageFigures, describe_io, describe_tails
from loadertop.core.protocol.stages import describe as describe_stages

# DESIGN.md's JSON row fields, in order (``rss_mb`` is kept for scripts that read it: the peak of the summed RSS),
# then the accounted cost, the throughput's standard error and the memory as the kernel accounts it (PSS, USS).
ROW_FIELDS = (
    "num_workers",
    "batches",
    "load_ms_mean",
    "load_ms_p95",
    "compute_ms_mean",
    "iter_ms_mean",
    "samples_per_s",
    "startup_ms",
    "cpu_percent",
    "rss_mb",
    "samples_per_s_sem",
    "wall_s",
    "cpu_s",
    "cpu_s_per_sample",
    "worker_cpu_share",
    "pss_mb",
    "pss_mb_peak",
    "worker_uss_mb",
    "worker_uss_growth_mb_per_min",
    "extra_mb_per_worker",
    "memory_source",
)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the plain and Markdown tables: a heading and how to show one summary's cell."""

    heading: str
    cell: Callable[[ConfigSummary], str]


def _cell(value: float, digits: int, scale: float = 1.0) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value * scale:.{digits}f}" if isinstance(value, float) else str(value)


COLUMNS = (
    Column("batches", lambda s: str(s.batches)),
    Column("load ms", lambda s: _cell(s.load_ms_mean, 1)),
    Column("compute ms", lambda s: _cell(s.compute_ms_mean, 1)),
    Column("iter ms", lambda s: _cell(s.iter_ms_mean, 1)),
    Column("samples/s", speed_cell),
    Column("start ms", lambda s: _cell(s.startup_ms, 0)),
    Column("wall s", lambda s: _cell(s.wall_s, 1)),
    Column("CPU s", lambda s: _cell(s.cpu_s, 2)),
    Column("ms/sample", lambda s: _cell(s.cpu_s_per_sample, 2, 1000.0)),
    Column("wkr share", lambda s: _cell(s.worker_cpu_share, 0, 100.0) + ("%" if s.worker_cpu_share >= 0 else "")),
    Column("CPU %", lambda s: _cell(s.cpu_percent, 0)),
    Column("PSS MB", lambda s: _cell(s.pss_mb, 0)),
    Column("peak", lambda s: _cell(s.pss_mb_peak, 0)),
    Column("USS/wkr", lambda s: _cell(s.worker_uss_mb, 0)),
    Column("USS MB/min", lambda s: _cell(s.worker_uss_growth_mb_per_min, 1)),
    Column("+MB/wkr", lambda s: _cell(s.extra_mb_per_worker, 0)),
    Column("sum RSS", lambda s: _cell(s.rss_mb, 0)),
)
LEGEND = (
    "* fastest (most samples/s)  + recommended  ± two standard errors  warm-up batches after each (re)start "
    "excluded\nCPU accounted for the whole process tree (exited workers included): CPU s in all, CPU ms per "
    "delivered sample,\nthe share in worker processes, CPU % = 100 x CPU s / wall s (100 = one core)\n"
    "memory of the whole tree: PSS MB its mean PSS (each page once), peak its peak; USS/wkr what one worker "
    "alone holds,\nUSS MB/min its growth (copy-on-write), +MB/wkr PSS added per worker over the fewest workers; "
    "sum RSS the peak of the summed RSS\n(counts the pages workers share with the main process once per worker)"
)


def _marks(summary: ConfigSummary, advice: Advice) -> str:
    return ("*" if advice.is_fastest(summary) else "") + ("+" if advice.is_recommended(summary) else "")


def _label(summary: ConfigSummary, show_config: bool) -> str:
    return summary.key if show_config else str(summary.num_workers)


def settings_differ(summaries: Sequence[ConfigSummary]) -> bool:
    """Whether the configurations differ in more than the worker count (then rows are named by key)."""
    return len({s.config.with_workers(0) for s in summaries}) > 1


def format_table(summaries: Sequence[ConfigSummary], advice: Advice | None = None) -> str:
    """The comparison as aligned plain text, marks first (``*`` fastest, ``+`` recommended)."""
    advice = advice or recommend(summaries)
    show_config = settings_differ(summaries)
    header = ("", "config" if show_config else "workers", *(c.heading for c in COLUMNS), "verdict")
    rows = [header]
    for s in summaries:
        v = verdict(s.load_ms_mean, s.compute_ms_mean)
        rows.append((_marks(s, advice), _label(s, show_config), *(c.cell(s) for c in COLUMNS), v.label if v else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:-1], widths[2:-1], strict=True)]
        cells.append(row[-1].ljust(widths[-1]))
        lines.append("  ".join(cells).rstrip())
    if advice.fastest is not None:
        lines.append(LEGEND)
    return "\n".join(lines)


def advice_lines(advice: Advice) -> list[str]:
    """The recommendation and each warning, one line each."""
    lines = [f"recommended: {advice.reason}"]
    lines += [f"warning: {w}" for w in advice.warnings]
    return lines


def markdown_table(summaries: Sequence[ConfigSummary], advice: Advice | None = None) -> str:
    """A Markdown table (marks as bold and a trailing note), for an issue or a notebook."""
    advice = advice or recommend(summaries)
    show_config = settings_differ(summaries)
    head = ("config" if show_config else "workers", *(c.heading for c in COLUMNS), "verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "--:|" * (len(head) - 1) + ":--|"]
    for s in summaries:
        v = verdict(s.load_ms_mean, s.compute_ms_mean)
        label = _label(s, show_config)
        marks = []
        if advice.is_fastest(s):
            marks.append("fastest")
        if advice.is_recommended(s):
            marks.append("recommended")
        if marks:
            label = f"**{label}** ({', '.join(marks)})"
        lines.append("| " + " | ".join([label, *(c.cell(s) for c in COLUMNS), v.label if v else "-"]) + " |")
    lines.append("")
    lines.append(f"Recommended: {advice.reason}.")
    lines += [f"- {w}" for w in advice.warnings]
    lines += ["", LEGEND.replace("\n", " ") + "."]
    return "\n".join(lines) + "\n"


def csv_text(summaries: Sequence[ConfigSummary], advice: Advice | None = None) -> str:
    """CSV with DESIGN.md's row fields, the other settings, the verdict and the marks."""
    advice = advice or recommend(summaries)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ROW_FIELDS, "config", "verdict", "fastest", "recommended"])
    for s in summaries:
        v = verdict(s.load_ms_mean, s.compute_ms_mean)
        writer.writerow(
            [
                *(_csv_value(getattr(s, f)) for f in ROW_FIELDS),
                s.key,
                v.label if v else "",
                int(advice.is_fastest(s)),
                int(advice.is_recommended(s)),
            ]
        )
    return out.getvalue()


def _csv_value(value: float) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def report_json(
    summaries: Sequence[ConfigSummary],
    advice: Advice,
    machine: MachineFacts,
    stages: Sequence[StageFigures] = (),
    **meta: Any,
) -> dict[str, Any]:
    """DESIGN.md's JSON: ``rows`` and ``recommended_num_workers``, plus the advice and the machine; each row has
    its worker count's ``stages`` (``StageFigures.to_wire`` and the verdict; null where none were timed)."""
    return {
        **meta,
        "rows": rows_json(summaries, stages, machine.usable_cores),
        "recommended_num_workers": advice.recommended_num_workers,
        "fastest_num_workers": advice.fastest.num_workers if advice.fastest is not None else None,
        "recommendation": advice.reason,
        "undecided_num_workers": [s.num_workers for s in summaries if s.key in advice.undecided],
        "warnings": list(advice.warnings),
        "predicted": [
            {"num_workers": n, "samples_per_s": None if v is None or math.isnan(v) else round(v, 1)}
            for n, v in advice.predicted
        ],
        "ceiling_samples_per_s": round(advice.ceiling, 1) if math.isfinite(advice.ceiling) else None,
        **memory_fields(summaries),
        "machine": {
            "usable_cores": _cores_number(machine.usable_cores),
            "memory_total_mb": round(machine.memory_total_bytes / (1024 * 1024)),
            "start_method": machine.start_method,
            **(machine.limits.to_json() if machine.limits is not None else {}),
        },
    }


def rows_json(summaries: Sequence[ConfigSummary], stages: Sequence[StageFigures], cores: float) -> list[dict[str, Any]]:
    """The comparison's rows as JSON (``report_json``'s ``rows``, the run history's), each with its worker count's
    ``stages`` (null where none were timed)."""
    staged = {f.num_workers: f for f in stages if f.samples or f.off}

    def number(value: float | str) -> float | int | str | None:
        return None if (isinstance(value, float) and math.isnan(value)) or value == "" else value

    rows = []
    for s in summaries:
        v = verdict(s.load_ms_mean, s.compute_ms_mean)
        row: dict[str, Any] = {f: number(getattr(s, f)) for f in ROW_FIELDS}
        row.update(
            config=s.key,
            batch_size=s.config.batch_size,
            warmup_batches=s.warmup_batches,
            compute_ms_p95=number(s.compute_ms_p95),
            iter_ms_p95=number(s.iter_ms_p95),
            load_share=number(v.load_share) if v else None,
            verdict=v.label if v else None,
        )
        figures = staged.get(s.num_workers)
        row["stages"] = None if figures is None else stages_to_wire(figures, cores)
        rows.append(row)
    return rows


def _cores_number(cores: float) -> float | int:
    """Whole cores as an integer (``2``), a fractional quota as it is (``1.5``)."""
    rounded = round(cores, 4)
    return int(rounded) if rounded == int(rounded) else rounded


def memory_fields(summaries: Sequence[ConfigSummary]) -> dict[str, Any]:
    """``memory_source`` (``"smaps_rollup"``: PSS and USS read exactly; ``"rss"``: some fell back to RSS, upper
    bounds; null: no memory sample) and ``memory_note`` (why not exact, null when it is) for the whole report."""
    sources = {s.memory_source for s in summaries if s.memory_source}
    source = SOURCE_RSS if SOURCE_RSS in sources else (SOURCE_SMAPS if sources else None)
    note = next((s.memory_note for s in summaries if s.memory_note), None)
    return {"memory_source": source, "memory_note": note}


def dumps(document: dict[str, Any]) -> str:
    """JSON text (no NaN: missing figures are null)."""
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def format_stages(figures: Sequence[StageFigures], cores: float) -> list[str]:
    """Where a sample's time went, per worker count: the stages, slowest first, and the verdict (no lines: none)."""
    timed = [f for f in figures if f.samples or f.off]
    if not timed:
        return []
    lines = ["where a sample's time goes (wall per sample, CPU in brackets):"]
    for f in timed:
        lines.append(f"  {describe_workers(f.num_workers)}: {describe_stages(f, top=12)}")
        if (io := describe_io(f)) is not None:
            lines.append(f"    {io}")
        if (tails := describe_tails(f)) is not None:
            lines.append(f"    {tails}")
        lines.append(f"    {stage_verdict(f, cores)}")
    return lines


def format_gpu_idle(figures: Sequence[GpuIdle], note: str | None = None) -> list[str]:
    """The training GPU's idle time per worker count, both shares of the wall time (no lines: no figure, no note)."""
    lines = [f"  {describe_workers(f.num_workers)}: {f.line()}" for f in figures if f.covered_s > 0]
    if lines:
        return ["GPU idle (NVML's utilisation samples over the batches' wall time):", *lines]
    return [f"GPU idle: not measured: {note}"] if note else []
