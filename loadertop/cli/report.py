"""``loadertop report RUN``: one self-contained HTML page of a run (a ``--record`` file, or a run number of
``loadertop history``), and ``--png`` a picture of it (``loadertop.report``; matplotlib from ``loadertop[report]``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadertop.cli.parser import UsageError


def command(args: argparse.Namespace) -> int:
    from loadertop.report.draw import html, png
    from loadertop.report.read import ReportError, source_of

    try:
        run = source_of(args.run)
        for line in run.problems:
            print(f"loadertop: report: {args.run}: {line}", file=sys.stderr)
        if not run.parts:
            raise ReportError(f"{args.run}: no batches or figures to draw")
        stem = f"run-{args.run}" if args.run.isdigit() and not Path(args.run).exists() else Path(args.run).stem
        out = Path(args.out) if args.out else Path(f"{stem}.html")
        out.write_text(html(run), encoding="utf-8")
        print(f"loadertop: report: {out}", file=sys.stderr)
        if args.png:
            png(run, Path(args.png))
            print(f"loadertop: report: {args.png}", file=sys.stderr)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"report: {exc.filename or ''}: {exc.strerror or exc}") from None
    return 0
