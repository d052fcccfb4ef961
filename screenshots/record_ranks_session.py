"""Record a real torchrun job under the monitor, every rank's view, for the screenshots and the snapshot tests.

Runs ``tests/scripts/ddp_loop.py --slow-rank 1`` on two ranks (DDP over gloo, CPU) as
``loadertop run -- torchrun --standalone --nproc_per_node=2 ...`` would (launched, every rank
watched over its socket by a ``RanksSession``). Once rank 1 is named the input straggler and every
rank has run ``--at-step`` batches, it saves each rank's view (rank 0 shown first) to OUT; then it
switches rank 1 alone to 2 workers, as ``k`` ``2`` ``r`` would, and once the job has ended saves
every rank's view again (rank 1 shown first) to OUT_SWITCHED. The SVGs are drawn from these files.

    python screenshots/record_ranks_session.py screenshots/ranks_session.json screenshots/ranks_switched_session.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from loadertop.core.drive.launcher import spawn
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.ranks import RanksSession
from loadertop.core.sessions.replay import save_view
from loadertop.core.sessions.view import ScriptView, SessionView

ROOT = Path(__file__).resolve().parent.parent
SHOWN_LOG = "/run/user/1000/loadertop/run-4711.log"  # where a user's log would be (this machine's is a temp file)


def script(view: SessionView) -> ScriptView:
    """The job's part of a view (every view of a launched job has one)."""
    assert view.script is not None
    return view.script


def every_rank(session: RanksSession, first: int) -> list[SessionView]:
    """Each rank's view as the monitor shows it with that rank selected, rank ``first`` first."""
    views: dict[int, SessionView] = {}
    while len(views) < len(script(session.view()).ranks):
        view = session.view()
        number = script(view).selected_rank
        assert number is not None
        views[number] = shown(view)
        session.select_next_rank()
    while script(session.view()).selected_rank != first:  # the monitor is left showing the first again
        session.select_next_rank()
    return [views[first], *(view for number, view in sorted(views.items()) if number != first)]


def shown(view: SessionView) -> SessionView:
    """The view as a user's run would show it: the log where theirs would be, no toast on replay."""
    assert view.script is not None
    return replace(view, script=replace(view.script, log_path=SHOWN_LOG, notice=(0, "")))


def wait(session: RanksSession, ready: Callable[[SessionView], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready(session.view()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the recording with the straggler named (JSON)")
    parser.add_argument("out_switched", help="where to write the recording after rank 1's switch (JSON)")
    parser.add_argument("--at-step", type=int, default=480, help="batches every rank has run at the first (480)")
    parser.add_argument("--epochs", type=int, default=80, help="ddp_loop.py's epochs of 12 batches a rank (80)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="loadertop-ddp-")) / "ddp"
    shown_args = ["tests/scripts/ddp_loop.py", "/tmp/ddp", "--slow-rank", "1", "--epochs", str(args.epochs)]
    run_args = ["tests/scripts/ddp_loop.py", str(out), *shown_args[2:]]
    command = ["torchrun", "--standalone", "--nproc_per_node=2", *shown_args]
    child, log = spawn([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *run_args])
    session = RanksSession(child=child, log_path=log, command=command)
    session.start()
    try:

        def straggling(view: SessionView) -> bool:
            script = view.script
            if script is None or script.ended:
                raise RuntimeError(f"the job ended early: {script.ended if script else 'before any rank'}")
            return (
                len(script.ranks) == 2
                and min(r.step for r in script.ranks) >= args.at_step
                and script.straggler is not None
                and script.straggler.rank == 1
            )

        wait(session, straggling, 300, "rank 1 named the straggler")
        before = every_rank(session, first=0)
        while script(session.view()).selected_rank != 1:
            session.select_next_rank()
        session.apply(LoaderConfig(num_workers=2))  # rank 1 alone: k 2 r
        if child.wait(600) != 0:
            raise RuntimeError(f"torchrun exited with {child.returncode}")
        wait(session, lambda view: script(view).ended is not None, 30, "the monitor sees the job's end")
        after = every_rank(session, first=1)
    finally:
        if child.poll() is None:
            child.kill()
        session.stop()
        session.close()
    save_view(before[0], args.out, other_ranks=before[1:])
    save_view(after[0], args.out_switched, other_ranks=after[1:])
    for path, views in ((args.out, before), (args.out_switched, after)):
        rows = ", ".join(
            f"rank {r.rank}: {r.num_workers} workers, load {r.load_ms:.1f} ms, step {r.step_ms:.1f} ms"
            for r in script(views[0]).ranks
        )
        straggler = script(views[0]).straggler
        said = f"straggler rank {straggler.rank}, score {straggler.score:.2f}" if straggler else "no straggler"
        print(f"saved every rank's view to {path}: {rows}; {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
