"""``loadertop history``: past runs from the run history (``loadertop.core.measure.history``), newest first, with
their best counts and samples/s; ``--loader NAME`` one loader's runs compared; ``--json`` the same as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import IO

from loadertop.cli.parser import UsageError
from loadertop.core.measure.history import History, LoaderRun


def command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out if out is not None else sys.stdout
    problems: list[str] = []
    history = History(on_problem=problems.append)
    runs = history.loader_runs(name=args.loader, limit=args.limit)
    for line in problems:
        print(f"loadertop: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps([run.to_wire() for run in runs], indent=2), file=out)
        return 0
    if not runs:
        if args.loader is not None and history.loader_runs(limit=1):
            raise UsageError(f"--loader {args.loader}: no run has a loader of that name (loadertop history lists them)")
        print(f"no runs remembered yet in {history.path}", file=out)
        return 0
    print(f"{history.path}: {len(runs)} loader run{'s' if len(runs) != 1 else ''}, newest first", file=out)
    for line in table(runs, compare=args.loader is not None):
        print(line, file=out)
    return 0


def table(runs: list[LoaderRun], *, compare: bool) -> list[str]:
    """One line a loader run: when, the run, the loader, its best count and samples/s, the settled count; with
    ``compare`` (one loader) each run's samples/s per worker count measured."""
    lines = []
    header = f"{'started':<16} {'run':>4}  {'loader':<24} {'best':>12} {'samples/s':>10} {'settled':>8}  program"
    lines.append(header)
    for run in runs:
        best = run.best
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started))
        best_text = f"{best[0]} workers" if best else "-"
        speed = f"{best[1]:,.0f}" if best else "-"
        settled = str(run.settled_workers) if run.settled_workers is not None else "-"
        lines.append(
            f"{started:<16} {run.run_id:>4}  {run.name[:24]:<24} {best_text:>12} {speed:>10} {settled:>8}  "
            + run.program
        )
        if compare and run.rows:
            per_count = ", ".join(
                f"{row['num_workers']}: {row['samples_per_s']:,.0f}" for row in run.rows if row.get("samples_per_s")
            )
            lines.append(f"{'':<16} {'':>4}  samples/s by workers: {per_count}")
    return lines
