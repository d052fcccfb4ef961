"""The report's plots (matplotlib, from ``loadertop[report]``) and the page around them.

``html(run)`` is one self-contained page: every plot an inline SVG (no script, no network at view time), the
comparison and the stages as tables, the lines the record could not give. ``png(run, path)`` draws the same
plots of the first part in one picture, to paste into an issue.
"""

from __future__ import annotations

import html as html_text
import io
import math
from pathlib import Path
from typing import Any

from loadertop.core.protocol.config import describe_workers
from loadertop.report.read import Part, ReportError, Run, losses

SWITCH_COLOR = "#999999"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError("the report needs matplotlib: pip install 'loadertop[report]'") from None
    matplotlib.use("Agg")  # no screen: draw to files
    import matplotlib.pyplot as plt

    return plt


def _mark_switches(ax: Any, part: Part) -> None:
    for step, before, after in part.switches():
        ax.axvline(step, color=SWITCH_COLOR, linestyle="--", linewidth=0.8)
        ax.annotate(
            f"{before}→{after}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="#555555",
            ha="left",
            va="top",
        )


def plot_loss(ax: Any, part: Part) -> bool:
    points = losses(part)
    if not points:
        return False
    ax.plot([s for s, _ in points], [v for _, v in points], color="#1f77b4", linewidth=1.0, label="loss")
    ax.set(title="loss", xlabel="batch (step)", ylabel="loss")
    _mark_switches(ax, part)
    return True


def plot_load_vs_step(ax: Any, part: Part) -> bool:
    if not part.batches:
        return False
    steps = [b.step for b in part.batches]
    ax.plot(steps, [b.load_ms for b in part.batches], color="#d62728", linewidth=0.8, label="load (waiting for data)")
    ax.plot(
        steps,
        [b.step_ms if b.step_ms is not None else math.nan for b in part.batches],
        color="#2ca02c",
        linewidth=0.8,
        label="step (compute)",
    )
    ax.set(title="load vs step per batch (switches dashed)", xlabel="batch (step)", ylabel="ms")
    ax.legend(fontsize=7, loc="upper right")
    _mark_switches(ax, part)
    return True


def plot_throughput(ax: Any, part: Part) -> bool:
    rows = sorted(part.rows, key=lambda r: r.num_workers)
    if not rows:
        return False
    errors = [0.0 if math.isnan(r.error) else r.error for r in rows]
    ax.errorbar(
        [r.num_workers for r in rows],
        [r.samples_per_s for r in rows],
        yerr=errors,
        fmt="o",
        color="#1f77b4",
        capsize=4,
        label="measured (± two standard errors)",
    )
    predicted = part.predicted()
    if predicted:
        ax.plot(
            [n for n, _ in predicted],
            [v for _, v in predicted],
            color="#ff7f0e",
            linewidth=1.0,
            label="the model's prediction",
        )
    ax.set(title="samples/s per worker count", xlabel="num_workers", ylabel="samples/s")
    ax.set_ylim(bottom=0)
    _integer_ticks(ax)
    ax.legend(fontsize=7, loc="lower right")
    return True


def plot_cpu(ax: Any, part: Part) -> bool:
    rows = sorted((r for r in part.rows if r.cpu_percent is not None), key=lambda r: r.num_workers)
    if not rows:
        return False
    counts = [r.num_workers for r in rows]
    bars = ax.bar(counts, [r.cpu_percent or 0.0 for r in rows], width=0.6, color="#9467bd")
    for bar, row in zip(bars, rows, strict=True):
        if row.cpu_ms_per_sample is not None:
            ax.annotate(
                f"{row.cpu_ms_per_sample:.2f} ms/sample",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set(title="CPU per worker count (the process tree; 100% = one core)", xlabel="num_workers", ylabel="CPU %")
    _integer_ticks(ax)
    return True


def plot_memory(ax: Any, part: Part) -> bool:
    rows = sorted((r for r in part.rows if r.pss_mb is not None), key=lambda r: r.num_workers)
    if not rows:
        return False
    counts = [r.num_workers for r in rows]
    ax.bar([c - 0.2 for c in counts], [r.pss_mb or 0.0 for r in rows], width=0.4, label="PSS of the tree (MB)")
    ax.bar([c + 0.2 for c in counts], [r.worker_uss_mb or 0.0 for r in rows], width=0.4, label="USS of one worker (MB)")
    ax.set(title="memory per worker count", xlabel="num_workers", ylabel="MB")
    _integer_ticks(ax)
    ax.legend(fontsize=7)
    return True


def plot_stages(ax: Any, part: Part) -> bool:
    timed = [s for s in part.stages if s.get("stages") and not s.get("off")]
    if not timed:
        return False
    timed.sort(key=lambda s: s["num_workers"])
    names: list[str] = []  # in a sample's order: the figures with the most stages first
    for figures in sorted(timed, key=lambda f: -len(f["stages"])):
        for stage in figures["stages"]:
            if stage["name"] not in names:
                names.append(stage["name"])
    colors = _pyplot().get_cmap("tab20")
    labelled: set[str] = set()
    for y, figures in enumerate(timed):
        left = 0.0
        walls = {stage["name"]: float(stage["wall_ms_per_sample"]) for stage in figures["stages"]}
        for i, name in enumerate(names):
            width = walls.get(name, 0.0)
            if width <= 0:
                continue
            label = None if name in labelled else name.replace("__getitem__ (rest)", "rest of __getitem__")
            ax.barh(y, width, left=left, color=colors(i % 20), label=label)  # a label starting "_" is hidden
            labelled.add(name)
            left += width
    ax.set_yticks(range(len(timed)), [describe_workers(int(f["num_workers"])) for f in timed])
    ax.set(title="where a sample's time goes (wall ms per sample)", xlabel="ms per sample")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return True


PLOTS = (plot_loss, plot_load_vs_step, plot_throughput, plot_cpu, plot_memory, plot_stages)


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _svg(plot: Any, part: Part) -> str | None:
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 3.2))
    try:
        if not plot(ax, part):
            return None
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg")
        text = out.getvalue()
        return text[text.index("<svg") :]
    finally:
        plt.close(figure)


def html(run: Run) -> str:
    """The page: a section per part with its plots, its comparison table and its stages."""
    e = html_text.escape
    body = [f"<h1>loadertop report</h1><p class='source'>{e(run.source)}</p>"]
    if run.problems:
        items = "".join(f"<li>{e(p)}</li>" for p in run.problems)
        body.append(f"<div class='problems'><p>Lines left out:</p><ul>{items}</ul></div>")
    for part in run.parts:
        body.append(f"<section class='part'><h2>{e(part.title)}</h2>")
        for plot in PLOTS:
            svg = _svg(plot, part)
            if svg is not None:
                body.append(f"<figure class='plot' data-plot='{plot.__name__[5:]}'>{svg}</figure>")
        body.append(_rows_table(part))
        body.append(_stages_table(part))
        body.append("</section>")
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f4f4f4}.problems{background:#fff4e5;padding:0.5em 1em}figure{margin:1em 0}"
        ".verdict{font-style:italic}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>loadertop report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _rows_table(part: Part) -> str:
    if not part.rows:
        return ""
    cells = []
    for r in sorted(part.rows, key=lambda r: r.num_workers):
        error = "" if math.isnan(r.error) else f" ± {r.error:,.0f}"
        cpu = "" if r.cpu_percent is None else f"{r.cpu_percent:.0f}"
        memory = "" if r.pss_mb is None else f"{r.pss_mb:,.0f}"
        uss = "" if r.worker_uss_mb is None else f"{r.worker_uss_mb:,.0f}"
        cells.append(
            f"<tr><td>{r.num_workers}</td><td>{r.batches}</td><td>{r.samples_per_s:,.0f}{error}</td>"
            f"<td>{r.load_ms:.1f}</td><td>{r.step_ms:.1f}</td><td>{cpu}</td><td>{memory}</td><td>{uss}</td></tr>"
        )
    return (
        "<table class='rows'><tr><th>workers</th><th>batches</th><th>samples/s</th><th>load ms</th>"
        f"<th>step ms</th><th>CPU %</th><th>PSS MB</th><th>USS/worker MB</th></tr>{''.join(cells)}</table>"
    )


def _stages_table(part: Part) -> str:
    e = html_text.escape
    out = []
    for figures in sorted(part.stages, key=lambda s: s["num_workers"]):
        if figures.get("off"):
            out.append(f"<p>{figures['num_workers']} workers: stage timing off: {e(str(figures['off']))}</p>")
            continue
        rows = "".join(
            f"<tr><td style='text-align:left'>{e(s['name'])}</td><td>{float(s['wall_ms_per_sample']):.3g}</td>"
            f"<td>{_ms(s.get('cpu_ms_per_sample'))}</td></tr>"
            for s in figures.get("stages", [])
        )
        out.append(
            f"<h3>{figures['num_workers']} workers: {figures.get('samples', 0):,} samples timed</h3>"
            f"<table class='stages'><tr><th>stage</th><th>wall ms/sample</th><th>CPU ms/sample</th></tr>{rows}</table>"
        )
        if figures.get("verdict"):
            out.append(f"<p class='verdict'>{e(str(figures['verdict']))}</p>")
    return "".join(out)


def _ms(value: Any) -> str:
    return "" if value is None else f"{float(value):.3g}"


def png(run: Run, path: Path) -> None:
    """The first part's plots, one under the other, as a PNG."""
    if not run.parts:
        raise ReportError(f"{run.source}: no batches or figures to draw")
    part = run.parts[0]
    plt = _pyplot()
    drawn = []
    figure = plt.figure(figsize=(8, 3.2 * len(PLOTS)))
    for plot in PLOTS:
        ax = figure.add_subplot(len(PLOTS), 1, len(drawn) + 1)
        if plot(ax, part):
            drawn.append(ax)
        else:
            figure.delaxes(ax)
    try:
        if not drawn:
            raise ReportError(f"{run.source}: no batches or figures to draw")
        figure.set_size_inches(8, 3.2 * len(drawn))
        for i, ax in enumerate(drawn):
            ax.set_subplotspec(figure.add_gridspec(len(drawn), 1)[i])
        figure.suptitle(f"loadertop: {part.title}", y=0.995)
        figure.tight_layout(rect=(0, 0, 1, 0.985))
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
