"""Command line: ``loadertop`` (the monitor), ``loadertop run --headless``; bad input exits 2 with one line.

``main`` parses (``parser``) and hands the arguments to the command's module: ``run_command`` (``loadertop run``, the
built-in training or a script after ``--``), ``sweep``, ``attach``; ``training`` and ``monitor`` hold what several
commands share, ``headless`` the lines of --headless runs and sweeps.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import IO, NoReturn

from loadertop.cli import attach, history, report, run_command, sweep
from loadertop.cli.parser import EXIT_USAGE, UsageError, build_parser
from loadertop.cli.parser import _switch as _switch  # tests read the --switch grammar here


def _fail(message: str, err: IO[str]) -> int:
    print(f"loadertop: error: {message}", file=err)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loadertop`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = None
    if "--" in argv:  # loadertop run [options] -- COMMAND [ARGS...]: the command is not ours to parse
        split = argv.index("--")
        argv, script = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    err = sys.stderr
    try:
        if (getattr(args, "cpu_budget", None) or getattr(args, "memory_budget", None)) and not getattr(
            args, "autotune", False
        ):  # a script's run or the built-in one
            raise UsageError("--cpu-budget and --memory-budget are the autotuner's budgets: add --autotune")
        if script is not None:
            workers_given = any(a == "--workers" or a.startswith("--workers=") for a in argv)
            return run_command.launch_script(args, script, parser, workers_given=workers_given)
        return _dispatch(args)
    except UsageError as exc:
        return _fail(str(exc), err)


def run() -> NoReturn:
    """The console script: ``main``, then exit at once, without the interpreter's teardown.

    By then workers are shut down and reaped and every file is closed. What is skipped is
    waiting on a training thread still stuck in a batch (a ``__getitem__`` that hangs in the
    training thread itself, with 0 workers, would hold the exit) and tearing torch's modules
    down, which costs about a second of CPU after every run.
    """
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "attach":  # the monitor of a script: no torch in this process
        return attach.command(args)
    if args.command == "sweep":
        return sweep.command(args)
    if args.command == "history":  # the store only: no torch
        return history.command(args)
    if args.command == "report":
        return report.command(args)
    return run_command.command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
