"""``loadertop run [--headless] -- COMMAND``: run a user's command with every DataLoader in it instrumented.

Headless (``launch``), the command runs as a child process, unchanged, with the terminal's
stdin, stdout and stderr; loadertop's own lines come from inside it on stderr, prefixed
``loadertop:``. Its exit code is returned (128 + N when signal N ended it). Ctrl+C reaches it
from the terminal as usual; SIGTERM and SIGHUP sent to loadertop are passed on to it.

Under the monitor (``spawn``), the monitor owns the terminal: the command runs in a session of
its own (a hangup of the monitor's terminal does not reach it, so ``d`` can detach), its
stdin is /dev/null and its stdout and stderr go to a log file beside its socket, which the
monitor's log panel shows. Either way it serves monitors on a socket (``loadertop attach``).

The command may run another interpreter than loadertop's (loadertop installed as a tool, the script in
its own venv or conda environment): only loadertop itself goes first on its path (a directory of the
run's holding a link to the package, not the directory loadertop is installed in, whose torch and
numpy would shadow the script's), and loadertop's psutil goes last, after the script's
site-packages, for an environment that has none. Imports no torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import loadertop
from loadertop.core.protocol.environment import ENV, ProbeSettings

BOOTSTRAP = Path(__file__).resolve().parents[1] / "probe" / "bootstrap"
PACKAGE = Path(loadertop.__file__).resolve().parent
FALLBACK_ENV = "LOADERTOP_FALLBACK_PATH"
"""The directory the bootstrap appends to the end of ``sys.path`` (loadertop's psutil, see ``link_packages``)."""


class LaunchError(Exception):
    """The command cannot be started (one line for the user)."""


class Watcher(Protocol):
    """Watches a headless command from beside it, in the launcher's process (a torchrun job's input straggler:
    ``straggler_watch.StragglerWatch``)."""

    def start(self, pid: int) -> None:
        """The command runs as process ``pid``."""

    def finish(self) -> None:
        """The command has ended (its own end lines are out): say the watcher's last."""


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


def link_packages(run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Make ``run_dir/first`` (a link to loadertop's package only) and ``run_dir/fallback`` (a link to its psutil).

    The first goes on the child's path before everything, the fallback after everything: a script's
    environment that has psutil uses its own (psutil's extension is abi3: loadertop's works in any CPython 3).
    """
    first, fallback = Path(run_dir) / "first", Path(run_dir) / "fallback"
    _link(first / "loadertop", PACKAGE)
    fallback.mkdir(exist_ok=True)
    spec = importlib.util.find_spec("psutil")
    if spec is not None and spec.origin is not None:
        _link(fallback / "psutil", Path(spec.origin).resolve().parent)
    return first, fallback


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def environment(
    settings: ProbeSettings, run_dir: str | os.PathLike[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: the settings, the bootstrap and loadertop first on PYTHONPATH (the user's after),
    and the fallback for the bootstrap to append (see ``link_packages``, made in ``run_dir``: a new directory
    of this run's).
    """
    env = dict(os.environ if base is None else base)
    first, fallback = link_packages(run_dir)
    paths = [str(BOOTSTRAP), str(first)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[FALLBACK_ENV] = str(fallback)
    env[ENV] = settings.to_environment()
    return env


def launch(
    command: Sequence[str],
    *,
    workers: int | None = None,
    switches: Mapping[str, int] | None = None,
    record: str | None = None,
    tuning: Mapping[str, Any] | None = None,
    watcher: Watcher | None = None,
) -> int:
    """Run ``command`` to its end with its DataLoaders instrumented; return its exit code.

    ``tuning``: ``ProbeSettings``' ``autotune``, ``cpu_budget`` and ``memory_budget_gib``. ``watcher``: started
    with the command's pid, finished once it ended.
    """
    executable = resolve(command)
    start_record(record)
    with tempfile.TemporaryDirectory(prefix="loadertop-run-") as run_dir:
        settings = ProbeSettings(
            workers=workers,
            switches=dict(switches or {}),
            record=os.path.abspath(record) if record else None,
            claim=os.path.join(run_dir, "claimed"),
            command=tuple(command),
            **(tuning or {}),
        )
        child = subprocess.Popen([executable, *command[1:]], env=environment(settings, run_dir))
        if watcher is not None:
            watcher.start(child.pid)

        def pass_on(signum: int, _frame: FrameType | None) -> None:
            if child.poll() is None:
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
        # Ctrl+C goes from the terminal to the whole foreground group, the command included: it decides.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = child.wait()
            if watcher is not None:
                watcher.finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return exit_status(code)


def start_record(record: str | None) -> None:
    """Start ``--record`` empty: the script's processes (every rank of a torchrun job) append to it."""
    if record:
        try:
            open(record, "w").close()
        except OSError as exc:
            raise LaunchError(f"--record {record}: {exc.strerror}") from None


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: its code, or 128 + N when signal N ended it."""
    return returncode if returncode >= 0 else 128 - returncode


def spawn(
    command: Sequence[str],
    *,
    workers: int | None = None,
    switches: Mapping[str, int] | None = None,
    record: str | None = None,
    tuning: Mapping[str, Any] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``command`` for the monitor (see the module's docstring); returns the child and its log file.

    ``tuning``: as for ``launch``.
    """
    from loadertop.core.protocol.runtime import RuntimeDirError, runtime_dir

    executable = resolve(command)
    start_record(record)
    try:
        directory = runtime_dir()
    except RuntimeDirError as exc:
        raise LaunchError(str(exc)) from None
    stamp = f"{os.getpid()}-{int(time.time() * 1000)}"
    log = directory / f"run-{stamp}.log"
    settings = ProbeSettings(
        workers=workers,
        switches=dict(switches or {}),
        record=os.path.abspath(record) if record else None,
        claim=str(directory / f"run-{stamp}.claim"),
        command=tuple(command),
        log=str(log),
        **(tuning or {}),
    )
    links = directory / f"run-{stamp}.path"  # beside the log: the command may outlive the monitor (``d``)
    links.mkdir(mode=0o700)
    with open(log, "wb") as output:
        os.chmod(log, 0o600)
        child = subprocess.Popen(
            [executable, *command[1:]],
            env=environment(settings, links),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return child, str(log)
