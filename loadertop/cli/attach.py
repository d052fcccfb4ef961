"""``loadertop attach [PID]``, ``loadertop attach --list``: the monitor on a script that ``loadertop run`` started
(a torchrun job's ranks side by side); no torch in this process."""

from __future__ import annotations

import argparse
import sys

from loadertop.cli.monitor import need_terminal, watch_script
from loadertop.cli.parser import UsageError


def command(args: argparse.Namespace) -> int:
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
    need_terminal("loadertop attach --list")
    job = next((launcher for launcher, ranks in jobs.items() if run in ranks), None)
    if job is not None:  # a rank of a torchrun job: every rank of it, side by side
        from loadertop.core.sessions.ranks import RanksSession

        return watch_script(
            RanksSession(pid=job, log_path=run.log_path, command=run.command, sample_interval_s=args.sample_interval)
        )
    session = RemoteSession(
        pid=run.pid,
        socket_path=run.socket_path,
        log_path=run.log_path,
        command=run.command,
        sample_interval_s=args.sample_interval,
    )
    return watch_script(session)
