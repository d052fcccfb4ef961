"""The ``loadertop`` argument parser: its options, their types (``--switch``'s grammar among them) and the one-line
usage errors (exit 2); imports nothing heavy, so that ``--help`` answers at once."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import NamedTuple, NoReturn

EXIT_USAGE = 2
MONITOR_EPOCHS = 100
HEADLESS_EPOCHS = 5
SWEEP_BATCHES = 100  # as loadertop.core.drive.sweep.DEFAULT_BATCHES, without importing torch for --help


class UsageError(Exception):
    """Bad input from the command line: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


class _Switch(NamedTuple):
    """A ``--switch``: which rank (None: every rank) and loader (None: the training one), after which step, to what."""

    rank: int | None
    loader: str | None
    step: int
    workers: int

    @property
    def key(self) -> str:
        """Its key in the probe's settings: ``[rankR:][LOADER@]STEP`` (``protocol.environment.ProbeSettings``)."""
        key = f"{self.loader}@{self.step}" if self.loader else str(self.step)
        return f"rank{self.rank}:{key}" if self.rank is not None else key


SWITCH_FORM = "[rankR:][LOADER@]STEP:WORKERS"


_RANK_PREFIX = re.compile(r"rank(\d+):")


def _switch(text: str) -> _Switch:
    """``[rankR:][LOADER@]STEP:WORKERS``; LOADER (a script's loader name, e.g. ``train.py:48``) may hold ``:``."""
    named = _RANK_PREFIX.match(text)  # one rank of a torchrun job (a STEP is a number, never "rank...")
    rank, rest_text = (int(named.group(1)), text[named.end() :]) if named else (None, text)
    loader, at, rest = rest_text.rpartition("@")
    step_text, sep, workers_text = rest.partition(":")
    try:
        if not sep or (at and not loader):
            raise ValueError
        step, workers = int(step_text), int(workers_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be {SWITCH_FORM} (e.g. 100:2, or rank1:100:2 for rank 1 of a torchrun job), got {text!r}"
        ) from None
    if step < 1 or workers < 0:
        raise argparse.ArgumentTypeError(f"needs STEP >= 1 and WORKERS >= 0, got {text!r}")
    return _Switch(rank, loader or None, step, workers)


def _count_list(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be worker counts separated by commas (e.g. 0,1,2,4), got {text!r}"
        ) from None
    if not counts or any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"needs one or more counts >= 0 (e.g. 0,1,2,4), got {text!r}")
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"lists a count twice: {text!r}")
    return counts


def _add_common(parser: argparse.ArgumentParser, *, with_defaults: bool = True, workers: bool = True) -> None:
    """The options every mode shares (DESIGN.md's public interface).

    On a subcommand they carry no defaults, so ``loadertop --workers 2 run`` keeps the 2.
    """

    def d(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    g = parser.add_argument_group("training")
    if workers:
        g.add_argument(
            "--workers",
            type=_int_at_least(0, "--workers"),
            default=d(0),
            metavar="N",
            help="DataLoader num_workers to start with (default 0)",
        )
    g.add_argument(
        "--batch-size",
        type=_int_at_least(1, "--batch-size"),
        default=d(32),
        metavar="N",
        help="samples per batch (default 32)",
    )
    g.add_argument(
        "--epochs",
        type=_int_at_least(1, "--epochs"),
        default=d(None),
        metavar="N",
        help=f"epochs to train (default {MONITOR_EPOCHS} in the monitor, a few minutes of the "
        f"built-in workload; {HEADLESS_EPOCHS} headless)",
    )
    g.add_argument(
        "--device",
        default=d("auto"),
        metavar="auto|cpu|cuda",
        help="where to train; auto picks CUDA when available (default auto)",
    )
    g.add_argument(
        "--workload",
        default=d(None),
        metavar="MODULE:CALLABLE",
        help="a factory returning loadertop.Workload (default: the built-in image workload); "
        "one with a data_dir parameter receives --data",
    )
    g.add_argument(
        "--dataset",
        default=d(None),
        metavar="NAME",
        help="a torchvision dataset already on disk under --data (default ./data): "
        "cifar10, cifar100, mnist, fashionmnist",
    )
    g.add_argument("--pin-memory", action="store_true", default=d(False), help="DataLoader pin_memory (CUDA only)")
    g.add_argument("--persistent-workers", action="store_true", default=d(False), help="DataLoader persistent_workers")
    g.add_argument(
        "--no-stages",
        action="store_true",
        default=d(False),
        help="do not time each sample's stages in the workers (decode, transforms, collate): fetch exactly as torch",
    )
    g.add_argument(
        "--prefetch-factor",
        type=_int_at_least(1, "--prefetch-factor"),
        default=d(None),
        metavar="N",
        help="DataLoader prefetch_factor (batches per worker loaded ahead; needs workers)",
    )
    g.add_argument(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        default=d(None),
        help="how DataLoader workers start (default: the platform's; spawn and forkserver need a picklable dataset)",
    )
    g.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=d(0.0),
        metavar="SECONDS",
        help="DataLoader timeout: fail when the workers deliver no batch for this long (default: "
        "60 in the monitor, 0 = wait forever headless; needs workers)",
    )
    g.add_argument(
        "--on-nan",
        choices=("stop", "continue"),
        default=d("stop"),
        help="when the loss becomes NaN or infinite: stop with an error naming the step, or flag it "
        "and go on (default stop)",
    )
    g.add_argument(
        "--threads",
        type=_int_at_least(1, "--threads"),
        default=d(None),
        metavar="N",
        help="PyTorch threads for the training step (default: the workload's choice, "
        "1 for the built-in one, else PyTorch's default)",
    )
    g.add_argument(
        "--seed",
        type=_int_at_least(0, "--seed"),
        default=d(0),
        metavar="N",
        help="seeds the data order, the built-in images and the model (default 0)",
    )
    b = parser.add_argument_group("data")
    b.add_argument(
        "--data",
        default=d(None),
        metavar="DIR",
        help="the data folder: for the built-in images (generated there once; default "
        "~/.cache/loadertop), a --dataset's root, or passed to a --workload factory as data_dir",
    )
    b.add_argument(
        "--io-latency-ms",
        type=_non_negative_float,
        default=d(0.0),
        metavar="MS",
        help="simulated storage latency per sample, as on a network file system (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``loadertop`` argument parser."""
    parser = _Parser(
        prog="loadertop",
        description="top for your PyTorch DataLoader: train in the background and watch load vs compute time.",
    )
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="train with the monitor, or with --headless print progress lines")
    _add_common(run, with_defaults=False)
    h = run.add_argument_group("run")
    h.add_argument("--headless", action="store_true", help="no TUI: progress lines on stdout")
    h.add_argument(
        "--max-batches",
        type=_int_at_least(1, "--max-batches"),
        default=None,
        metavar="N",
        help="stop after N batches in all",
    )
    h.add_argument(
        "--switch",
        type=_switch,
        action="append",
        default=[],
        metavar=SWITCH_FORM,
        help="hot-restart to WORKERS workers once STEP batches have run (repeatable); with a script, "
        "its training loader's or LOADER's (a name as loadertop lists it, e.g. train.py:48); "
        "under torchrun every rank's, or with rankR: rank R's only (e.g. rank1:100:2)",
    )
    h.add_argument(
        "--record", default=None, metavar="FILE.jsonl", help="write one JSON object per batch (flushed as it goes)"
    )
    h.add_argument(
        "--autotune",
        action="store_true",
        help="find and hold the best worker count while training runs (a toggles it in the monitor); "
        "every change is logged with its reason",
    )
    h.add_argument(
        "--cpu-budget",
        type=_positive_float,
        default=None,
        metavar="CORES",
        help="autotune: the cores the loader and the loop may use (default: the usable cores, shared "
        "among a torchrun job's ranks on the node)",
    )
    h.add_argument(
        "--memory-budget",
        type=_positive_float,
        default=None,
        metavar="GIB",
        help="autotune: the memory all workers together may hold (default: half the available memory)",
    )
    h.add_argument(
        "--forget",
        action="store_true",
        help="autotune: do not start where this loader settled last on this machine (the run is still "
        "remembered; loadertop history lists what is)",
    )
    h.add_argument(
        "--progress-interval",
        type=_non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="headless: longest gap between progress lines within an epoch (default 5)",
    )
    sweep = sub.add_parser("sweep", help="measure each worker count in turn and recommend one")
    w = sweep.add_argument_group("sweep")
    w.add_argument(
        "--workers",
        dest="counts",
        type=_count_list,
        default=None,
        metavar="LIST",
        help="worker counts to measure, in order (default 0,1,2,4,... up to twice the usable cores)",
    )
    w.add_argument(
        "--batches",
        type=_int_at_least(1, "--batches"),
        default=SWEEP_BATCHES,
        metavar="N",
        help=f"steady batches measured per count, after each restart's warm-up (default {SWEEP_BATCHES})",
    )
    w.add_argument(
        "--json", default=None, metavar="FILE", help="write the rows and the recommendation as JSON ('-': stdout)"
    )
    w.add_argument("--csv", default=None, metavar="FILE", help="write the rows as CSV ('-': stdout)")
    w.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help="write the table as Markdown, for an issue or a notebook ('-': stdout)",
    )
    _add_common(sweep, with_defaults=False, workers=False)
    history = sub.add_parser(
        "history",
        help="past runs, newest first, with their best worker counts (the store: $LOADERTOP_HOME, else "
        "~/.local/share/loadertop)",
    )
    history.add_argument("--loader", default=None, metavar="NAME", help="one loader's runs, compared")
    history.add_argument("--json", action="store_true", help="the runs as JSON on stdout")
    history.add_argument(
        "--limit", type=_int_at_least(1, "--limit"), default=50, metavar="N", help="the newest N (default 50)"
    )
    report = sub.add_parser(
        "report", help="an HTML page (and --png a picture) of a run: a --record file or a run of loadertop history"
    )
    report.add_argument(
        "run", metavar="RUN", help="a --record FILE.jsonl, or a run number that loadertop history lists"
    )
    report.add_argument(
        "--out", default=None, metavar="FILE.html", help="where the page goes (default: RUN's name .html)"
    )
    report.add_argument("--png", default=None, metavar="FILE.png", help="also draw the plots as one PNG")
    attach = sub.add_parser("attach", help="watch a script that loadertop run started (after d, from another terminal)")
    attach.add_argument(
        "pid",
        nargs="?",
        type=_int_at_least(1, "PID"),
        default=None,
        metavar="PID",
        help="the script's pid (needed when several runs are going)",
    )
    attach.add_argument("--list", action="store_true", help="print the runs going now, one a line, and exit")
    for p, default in (
        (parser, 1.0),
        (run, argparse.SUPPRESS),
        (sweep, argparse.SUPPRESS),
        (attach, argparse.SUPPRESS),
    ):
        p.add_argument(
            "--sample-interval",
            type=_positive_float,
            default=default,
            metavar="SECONDS",
            help="seconds between system samples: cores, workers, memory, GPUs (default 1)",
        )
    return parser
