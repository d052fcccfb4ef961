"""Which process of a launched run acts for it: the first to import torch claims the run, once.

The launcher names a claim file in ``LOADERTOP_PROBE`` (``ProbeSettings.claim``); the process that creates it
first (the script, not a spawned DataLoader worker) instruments the loaders, and removes it at its exit. Under
torchrun each rank claims its own (the file's name ends in its rank) and torchrun's own process claims none.
"""

from __future__ import annotations

import contextlib
import os
import sys

from loadertop.core.protocol.environment import rank_of_process


def is_distributed_launcher() -> bool:
    """torchrun (or ``python -m torch.distributed.run``/``launch``) itself: it starts the ranks, trains nothing.

    Under ``-m`` torch is imported while runpy still looks for the module, before ``sys.argv[0]``
    names it: the interpreter's own command line (``sys.orig_argv``) says which module it runs.
    """
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "torchrun":
        return True
    parts = os.path.normpath(program).split(os.sep)
    if parts[-3:] in (["torch", "distributed", "run.py"], ["torch", "distributed", "launch.py"]):
        return True
    line = list(getattr(sys, "orig_argv", ()))
    return any(
        line[i] == "-m" and line[i + 1] in ("torch.distributed.run", "torch.distributed.launch")
        for i in range(len(line) - 1)
    )


def claim(path: str | None) -> bool:
    """Be the process of the run that acts on its loaders: the first to get here (atomic create).

    Under torchrun each rank is one (its claim is its rank's), and torchrun's own process is none.
    """
    if is_distributed_launcher():
        return False
    rank = rank_of_process()
    if path is None:
        return True
    if rank is not None:
        path = f"{path}.rank{rank.rank}"
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return False
    return True


def release(path: str | None) -> None:
    """Remove the run's claim file (at the claiming process's exit)."""
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
