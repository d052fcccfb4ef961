"""``loadertop run``: the built-in training, in the monitor or ``--headless``, or a script launched with the probe
(``loadertop run [options] -- COMMAND``). Named run_command, not run: ``loadertop.cli.run`` is the console script."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from loadertop.cli.monitor import need_terminal, run_monitor, watch_script
from loadertop.cli.parser import HEADLESS_EPOCHS, MONITOR_EPOCHS, UsageError
from loadertop.cli.training import build_trainer, check_start_method, chosen_workload, loader_config, open_output

if TYPE_CHECKING:
    from loadertop.core.protocol.config import LoaderConfig

MONITOR_STALL_TIMEOUT_S = 60.0  # a hung worker ends in a message, not a frozen screen (unless --timeout)


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


def launch_script(
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
        open_output(args.record, "--record").close()  # a bad path is refused here, in one line
    tuning = {
        "autotune": bool(args.autotune),
        "cpu_budget": args.cpu_budget,
        "memory_budget_gib": args.memory_budget,
        "stages": not args.no_stages,
        "forget": bool(args.forget),
    }
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
        need_terminal("loadertop run --headless -- COMMAND")
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
    return watch_script(session)


def command(args: argparse.Namespace) -> int:
    """``loadertop run [options]``: the built-in training, in the monitor or with --headless progress lines."""
    # Imported here so that --help and argument errors answer without loading torch.
    from loadertop.cli.headless import run_headless

    config = loader_config(args, args.workers)
    headless = getattr(args, "headless", False)
    if not headless:
        if getattr(args, "switch", None):
            raise UsageError("--switch needs --headless (in the monitor, press a digit and r)")
        need_terminal("loadertop run --headless")
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
    record_file = open_output(record_path, "--record") if record_path else None
    try:
        workload = chosen_workload(args)
        check_start_method(workload, config)
        trainer = build_trainer(
            args,
            workload,
            config,
            epochs=args.epochs,
            max_batches=getattr(args, "max_batches", None),
            stall_timeout_s=0.0 if headless else MONITOR_STALL_TIMEOUT_S,
        )
        tuning = _tuning(args, config, headless=headless)
        if not headless:
            return run_monitor(trainer, record_file, args.sample_interval, tuning)
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


def _tuning(args: argparse.Namespace, config: LoaderConfig, *, headless: bool) -> dict[str, Any]:
    """``autotune``, its ``budget`` and the run's ``memory`` for a Session, from --autotune, --cpu-budget,
    --memory-budget, --workload and --forget."""
    from loadertop.core.probe.autotune_host import default_budget
    from loadertop.core.probe.remembering import RunMemory, this_machine

    autotune = bool(getattr(args, "autotune", False))
    budget = default_budget(cores=args.cpu_budget, memory_gib=args.memory_budget) if autotune else None
    workload = getattr(args, "workload", None)
    memory = RunMemory(
        workload or "built-in",
        "workload" if workload else "built-in",
        this_machine(config.start_method),
        forget=bool(getattr(args, "forget", False)),
        say=(lambda line: print(f"loadertop: {line}", file=sys.stderr, flush=True)) if headless else None,
    )
    return {"autotune": autotune, "budget": budget, "memory": memory}
