"""Command line: ``loadertop`` (the monitor), ``loadertop run --headless``; bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:
    from loadertop.core.protocol.config import LoaderConfig
    from loadertop.core.sessions.ranks import RanksSession
    from loadertop.core.sessions.remote import RemoteSession
    from loadertop.core.train.engine import Trainer
    from loadertop.core.train.workload import Workload

EXIT_USAGE = 2
MONITOR_EPOCHS = 100
HEADLESS_EPOCHS = 5
MONITOR_STALL_TIMEOUT_S = 60.0  # a hung worker ends in a message, not a frozen screen (unless --timeout)
SWEEP_BATCHES = 100  # as loadertop.core.drive.sweep.DEFAULT_BATCHES, without importing torch for --help
SWEEP_EPOCHS = 1_000_000  # a sweep ends when its last count is measured, not by epochs


class UsageError(Exception):
    """Bad input from the command line: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int, what: str):
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
            return _launch(args, script, parser, workers_given=workers_given)
        return _dispatch(args)
    except UsageError as exc:
        return _fail(str(exc), err)


# Options that shape the built-in training; a script's loaders keep the script's own settings.
_BUILT_IN_ONLY = (
    "batch_size",
    "epochs",
    "device",
    "workload",
    "dataset",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "start_method",
    "timeout",
    "on_nan",
    "threads",
    "seed",
    "data",
    "io_latency_ms",
    "max_batches",
)


def _launch(
    args: argparse.Namespace, script: list[str], parser: argparse.ArgumentParser, *, workers_given: bool
) -> int:
    """``loadertop run [--headless] [--workers N] [--switch S:N] [--record F] [--autotune [--cpu-budget C]
    [--memory-budget G]] -- COMMAND``."""
    from loadertop.core.drive.launcher import LaunchError, launch, spawn

    if args.command != "run":
        raise UsageError("a command after '--' goes with loadertop run: loadertop run --headless -- python train.py")
    defaults = parser.parse_args([])
    for name in _BUILT_IN_ONLY:
        if getattr(args, name, None) != getattr(defaults, name, None):
            option = "--" + name.replace("_", "-")
            raise UsageError(
                f"{option} applies to the built-in workload; a script's loaders keep its own settings "
                "(--workers, --switch, --record and --autotune act on them)"
            )
    switches = {switch.key: switch.workers for switch in args.switch}
    if len(switches) != len(args.switch):
        raise UsageError("--switch: each STEP may be given once (per loader and rank)")
    if args.record == "-":
        raise UsageError("--record needs a file with a script: its stdout is the script's")
    if args.record:
        _open_output(args.record, "--record").close()  # a bad path is refused here, in one line
    tuning = {"autotune": bool(args.autotune), "cpu_budget": args.cpu_budget, "memory_budget_gib": args.memory_budget}
    workers = args.workers if workers_given else None
    try:
        if args.headless:
            from loadertop.core.sessions.ranks import is_distributed_command

            watcher = None
            if is_distributed_command(script):  # torchrun: the input straggler named in the lines, as the monitor does
                from loadertop.core.sessions.straggler_watch import StragglerWatch

                watcher = StragglerWatch(record=args.record)
            return launch(
                script, workers=workers, switches=switches, record=args.record, tuning=tuning, watcher=watcher
            )
        _need_terminal("loadertop run --headless -- COMMAND")
        child, log = spawn(script, workers=workers, switches=switches, record=args.record, tuning=tuning)
    except LaunchError as exc:
        raise UsageError(str(exc)) from None
    from loadertop.core.sessions.ranks import RanksSession, is_distributed_command
    from loadertop.core.sessions.remote import RemoteSession

    if is_distributed_command(script):  # torchrun: every rank, side by side
        session: RemoteSession | RanksSession = RanksSession(
            child=child, log_path=log, command=script, sample_interval_s=args.sample_interval
        )
    else:
        session = RemoteSession(child=child, log_path=log, command=script, sample_interval_s=args.sample_interval)
    return _watch_script(session)


def _need_terminal(instead: str) -> None:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"the monitor needs a terminal (stdin and stderr); without one use: {instead}")


def _attach(args: argparse.Namespace) -> int:
    """``loadertop attach [PID]``: watch a script that ``loadertop run`` started."""
    from loadertop.core.protocol.runtime import RuntimeDirError, describe, live_runs
    from loadertop.core.sessions.ranks import torchrun_jobs
    from loadertop.core.sessions.remote import RemoteSession

    try:
        runs = live_runs()
    except RuntimeDirError as exc:
        raise UsageError(str(exc)) from None
    if args.list:
        for run in runs:
            print(describe(run))
        if not runs:
            print("loadertop: no loadertop run is running", file=sys.stderr)
        return 0
    jobs = torchrun_jobs(runs)  # the ranks of one torchrun job are one run to attach to
    if args.pid is not None:
        chosen = [r for r in runs if r.pid == args.pid]
        if not chosen:
            others = f"; running: {', '.join(str(r.pid) for r in runs)}" if runs else ""
            raise UsageError(f"no loadertop run with pid {args.pid}{others}")
    elif not runs:
        raise UsageError("no loadertop run is running: start one with loadertop run -- python train.py")
    elif len(runs) > 1 and not (len(jobs) == 1 and sum(len(ranks) for ranks in jobs.values()) == len(runs)):
        listed = "; ".join(describe(r) for r in runs)
        raise UsageError(f"{len(runs)} runs: say which, loadertop attach PID ({listed})")
    else:
        chosen = runs
    run = chosen[0]
    _need_terminal("loadertop attach --list")
    job = next((launcher for launcher, ranks in jobs.items() if run in ranks), None)
    if job is not None:  # a rank of a torchrun job: every rank of it, side by side
        from loadertop.core.sessions.ranks import RanksSession

        return _watch_script(
            RanksSession(pid=job, log_path=run.log_path, command=run.command, sample_interval_s=args.sample_interval)
        )
    session = RemoteSession(
        pid=run.pid,
        socket_path=run.socket_path,
        log_path=run.log_path,
        command=run.command,
        sample_interval_s=args.sample_interval,
    )
    return _watch_script(session)


def _watch_script(session: RemoteSession | RanksSession) -> int:
    """The monitor on a script; afterwards its exit code (or 0 after a detach), its traceback on stderr."""
    from loadertop.core.policy.report import format_table
    from loadertop.tui.app import LoaderTopApp

    app = LoaderTopApp(session)
    gc.freeze()  # Textual's and rich's objects out of the collector's reach: full collections stay short
    code = 0
    try:
        app.run()
        code = app.return_code or 0
    except KeyboardInterrupt:
        session.stop()
        code = 130
    except Exception:
        session.detach()  # the monitor failed, not the training: it runs on, to be watched again
        print(
            f"loadertop: the monitor failed; the script (pid {session.root_pid}) runs on: loadertop attach "
            "watches it again",
            file=sys.stderr,
        )
        raise
    finally:
        session.close()
    view = session.view()
    try:
        if session.detached:
            where = f"; its output goes to {session.log_path}" if session.log_path else ""
            print(
                f"loadertop: detached: pid {view.script.pid if view.script else session.root_pid} runs on"
                f"{where}; loadertop attach watches it again",
                file=sys.stderr,
            )
            return 0
        if view.store.summaries:
            print(format_table(view.store.summaries))
        stopped_by_us = session.stopping and "KeyboardInterrupt" in (session.traceback or "").strip()[-200:]
        if session.traceback and not stopped_by_us:
            sys.stderr.write(session.traceback if session.traceback.endswith("\n") else session.traceback + "\n")
        if view.script is not None and view.script.ended:
            output = f"; its output is in {session.log_path}" if session.log_path else ""
            print(f"loadertop: {view.script.ended}{output}", file=sys.stderr)
    except OSError:  # the terminal is gone
        pass
    if session.exit_code is not None:
        return session.exit_code
    return code


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
        return _attach(args)
    # Imported here so that --help and argument errors answer without loading torch.
    from loadertop.cli.headless import run_headless

    if args.command == "sweep":
        return _sweep(args)
    config = _config(args, args.workers)
    headless = getattr(args, "headless", False)
    if not headless:
        if getattr(args, "switch", None):
            raise UsageError("--switch needs --headless (in the monitor, press a digit and r)")
        _need_terminal("loadertop run --headless")
    if args.epochs is None:
        args.epochs = HEADLESS_EPOCHS if headless else MONITOR_EPOCHS
    given = getattr(args, "switch", []) or []
    if any(switch.loader for switch in given):
        raise UsageError(
            "--switch LOADER@STEP:WORKERS names a script's DataLoader; the built-in workload has one: use STEP:WORKERS"
        )
    if any(switch.rank is not None for switch in given):
        raise UsageError(
            "--switch rankR:STEP:WORKERS names a rank of a torchrun job; the built-in workload is one "
            "process: use STEP:WORKERS"
        )
    switches = {switch.step: switch.workers for switch in given}
    if len(switches) != len(given):
        raise UsageError("--switch: each STEP may be given once")
    record_path = getattr(args, "record", None)
    record_file = _open_output(record_path, "--record") if record_path else None
    try:
        workload = _workload(args)
        _check_start_method(workload, config)
        trainer = _trainer(
            args,
            workload,
            config,
            epochs=args.epochs,
            max_batches=getattr(args, "max_batches", None),
            stall_timeout_s=0.0 if headless else MONITOR_STALL_TIMEOUT_S,
        )
        tuning = _tuning(args)
        if not headless:
            return _run_monitor(trainer, record_file, args.sample_interval, tuning)
        return run_headless(
            trainer,
            switches=switches,
            record_file=record_file,
            progress_interval_s=getattr(args, "progress_interval", 5.0),
            sample_interval_s=args.sample_interval,
            **tuning,
        )
    finally:
        if record_file is not None:
            record_file.close()


def _tuning(args: argparse.Namespace) -> dict[str, Any]:
    """``autotune`` and its ``budget`` for a Session, from --autotune, --cpu-budget and --memory-budget."""
    from loadertop.core.probe.autotune_host import default_budget

    autotune = bool(getattr(args, "autotune", False))
    budget = default_budget(cores=args.cpu_budget, memory_gib=args.memory_budget) if autotune else None
    return {"autotune": autotune, "budget": budget}


def _config(args: argparse.Namespace, num_workers: int) -> LoaderConfig:
    from loadertop.core.protocol.config import ConfigError, LoaderConfig
    from loadertop.core.train.engine import resolve_device

    config = LoaderConfig(
        num_workers=num_workers,
        batch_size=args.batch_size,
        pin_memory=args.pin_memory,
        persistent_workers=args.persistent_workers,
        prefetch_factor=args.prefetch_factor,
        start_method=args.start_method,
        timeout_s=args.timeout,
    )
    try:
        config.validate_strict()
        resolve_device(args.device)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return config


def _workload(args: argparse.Namespace) -> Workload:
    from loadertop.core.train.workload import WorkloadError, load_workload

    if args.workload is not None and args.dataset is not None:
        raise UsageError("choose --workload or --dataset, not both")
    if (args.workload is not None or args.dataset is not None) and args.io_latency_ms:
        raise UsageError("--io-latency-ms applies to the built-in workload only")
    if args.workload is not None:
        try:
            workload = load_workload(args.workload, data_dir=args.data)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None
    elif args.dataset is not None:
        from loadertop.core.train.datasets import make_dataset_workload

        try:
            workload = make_dataset_workload(args.dataset, args.data, seed=args.seed)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None
    else:
        from loadertop.core.train.builtin import MARKER, default_data_dir, make_workload

        root = Path(args.data).expanduser() if args.data is not None else default_data_dir(args.seed)
        if not (root / MARKER).exists():
            print(f"loadertop: writing the built-in images (once) to {root} ...", file=sys.stderr, flush=True)
        try:
            workload = make_workload(seed=args.seed, data_dir=args.data, io_latency_ms=args.io_latency_ms)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if args.threads is not None:
        workload.num_threads = args.threads
    return workload


def _check_start_method(workload: Workload, config: LoaderConfig) -> None:
    """spawn/forkserver workers get a pickled dataset: refuse one that cannot be, before training."""
    from loadertop.core.train.workload import WorkloadError, check_picklable

    if config.num_workers:
        try:
            check_picklable(workload, config)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None


def _trainer(
    args: argparse.Namespace,
    workload: Workload,
    config: LoaderConfig,
    *,
    epochs: int,
    max_batches: int | None,
    stall_timeout_s: float = 0.0,
) -> Trainer:
    from loadertop.core.train.engine import Trainer
    from loadertop.core.train.workload import WorkloadError

    try:
        return Trainer(
            workload,
            config,
            epochs=epochs,
            max_batches=max_batches,
            device=args.device,
            seed=args.seed,
            on_nan=args.on_nan,
            stall_timeout_s=stall_timeout_s,
        )
    except (WorkloadError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _open_output(path: str, option: str) -> IO[str]:
    """``path`` opened for writing ('-' is stdout); a one-line usage error when it cannot be."""
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


def _sweep(args: argparse.Namespace) -> int:
    """``loadertop sweep``: each count in turn on one run, then the table, the advice and the files asked for."""
    from loadertop.cli.headless import run_sweep_headless
    from loadertop.core.drive.sweep import Sweep
    from loadertop.core.policy.advice import default_counts, machine_facts
    from loadertop.core.policy.report import csv_text, dumps, markdown_table, report_json

    machine = machine_facts()
    counts = args.counts or default_counts(machine.core_count)
    # Settings that need workers are checked against the largest count, the ones that have them.
    config = _config(args, max(counts)).with_workers(counts[0])
    outputs = {
        option: path
        for option, path in (("--json", args.json), ("--csv", args.csv), ("--markdown", args.markdown))
        if path
    }
    if list(outputs.values()).count("-") > 1:
        raise UsageError("only one of --json, --csv and --markdown can write to stdout ('-')")
    files = {option: _open_output(path, option) for option, path in outputs.items()}
    to_stdout = "-" in outputs.values()
    try:
        workload = _workload(args)
        _check_start_method(workload, config.with_workers(max(counts)))
        trainer = _trainer(args, workload, config, epochs=SWEEP_EPOCHS, max_batches=None)
        sweep = Sweep(trainer, counts, args.batches, base=config)
        # With a format on stdout, the progress and the table go to stderr.
        code, rows, advice = run_sweep_headless(
            trainer, sweep, sample_interval_s=args.sample_interval, out=sys.stderr if to_stdout else sys.stdout
        )
        if rows:
            meta = {
                "workload": workload.name,
                "device": trainer.status().device,
                "batch_size": config.batch_size,
                "batches_per_count": args.batches,
                "counts": list(counts),
                "measured_longer": list(sweep.counts[sweep.planned :]),
                "complete": code == 0,
                "cpu_accounting": trainer.cpu_clock.mode,
                "cpu_s_before_first_config": trainer.store.cpu_before_first_config_s,
            }
            writers = {
                "--json": lambda: dumps(report_json(rows, advice, machine, **meta)),
                "--csv": lambda: csv_text(rows, advice),
                "--markdown": lambda: markdown_table(rows, advice),
            }
            for option, file in files.items():
                file.write(writers[option]())
                file.flush()
        return code
    finally:
        for file in files.values():
            if file is not sys.stdout:
                file.close()


def _run_monitor(
    trainer: Trainer, record_file: IO[str] | None, sample_interval_s: float, tuning: dict[str, Any]
) -> int:
    """The Textual monitor; after it closes, the comparison table is printed on stdout."""
    from loadertop.core.policy.report import format_table
    from loadertop.core.sessions.session import Session
    from loadertop.tui.app import LoaderTopApp

    session = Session(
        trainer, sample_interval_s=sample_interval_s, record_file=record_file, monitor_thread=True, serve=True, **tuning
    )
    app = LoaderTopApp(session)
    # torch, the model and the dataset are loaded: move their objects out of the garbage collector's
    # reach. A full collection over them took ~280 ms (a frozen screen, a late key press); ~35 ms after.
    gc.freeze()
    code = 0
    try:
        app.run()
        code = app.return_code or 0
    except KeyboardInterrupt:  # Ctrl+C before the app took the terminal
        code = 130
    finally:
        leftover = session.close()
    try:
        summaries = trainer.store.summaries()
        if summaries and code < 128:
            print(format_table(summaries))
        if leftover:
            print(f"loadertop: terminated left-over worker processes {leftover}", file=sys.stderr)
        error = trainer.error
        if error is not None and code == 0:
            where = f" (sample index {error.sample_index})" if error.sample_index is not None else ""
            print(f"loadertop: run failed at step {error.step + 1}{where}: {error.message}", file=sys.stderr)
            code = 1
    except OSError:  # the terminal is gone (SIGHUP): nothing to print to
        pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
