"""``loadertop run --headless -- COMMAND``: run a user's command with every DataLoader in it instrumented.

The command runs as a child process, unchanged, with the terminal's stdin, stdout and stderr;
loadertop's own lines come from inside it on stderr, prefixed ``loadertop:``. Its exit code is
returned (128 + N when signal N ended it). Ctrl+C reaches it from the terminal as usual;
SIGTERM and SIGHUP sent to loadertop are passed on to it. Imports no torch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from loadertop.core.probe.launched import ENV, ProbeSettings

BOOTSTRAP = Path(__file__).resolve().parent / "probe" / "bootstrap"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(Exception):
    """The command cannot be started (one line for the user)."""


def resolve(command: Sequence[str]) -> str:
    """The executable the command names; ``LaunchError`` when there is none."""
    if not command:
        raise LaunchError("loadertop run --: give the command to run, e.g. loadertop run --headless -- python train.py")
    program = command[0]
    found = shutil.which(program)
    if found is None:
        where = "no such file" if os.sep in program else "not found on PATH"
        raise LaunchError(f"cannot run {program!r}: {where}")
    return found


def environment(settings: ProbeSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the settings, and the bootstrap (and loadertop itself) first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [str(BOOTSTRAP), str(PACKAGE_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[ENV] = settings.to_environment()
    return env


def launch(command: Sequence[str], *, workers: int | None = None, switches: Mapping[int, int] | None = None,
           record: str | None = None) -> int:
    """Run ``command`` to its end with its DataLoaders instrumented; return its exit code."""
    executable = resolve(command)
    with tempfile.TemporaryDirectory(prefix="loadertop-run-") as run_dir:
        settings = ProbeSettings(workers=workers, switches=dict(switches or {}),
                                 record=os.path.abspath(record) if record else None,
                                 claim=os.path.join(run_dir, "claimed"))
        child = subprocess.Popen([executable, *command[1:]], env=environment(settings))

        def pass_on(signum: int, _frame: FrameType | None) -> None:
            if child.poll() is None:
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
        # Ctrl+C goes from the terminal to the whole foreground group, the command included: it decides.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code if code >= 0 else 128 - code
