"""Inside a script that ``loadertop run -- COMMAND`` started: every DataLoader becomes loadertop's.

The launcher puts ``bootstrap/`` on the script's PYTHONPATH and its settings in the
``LOADERTOP_PROBE`` environment variable. ``bootstrap/sitecustomize.py`` calls
``install_from_environment``, which waits for the script to import torch (nothing is imported
before: a script that never imports torch runs as it would; ``import_hooks``) and then makes
``torch.utils.data.DataLoader`` loadertop's drop-in class. The first process of the run that
imports torch claims it (the script, not a spawned DataLoader worker; ``claim``); under torchrun each
rank claims its own (torchrun's process none). There ``--workers`` sets every loader's worker count,
``--switch`` changes the training loader's (the first one created, or the one a framework's
trainer marks: ``loadertop.integrations``, injected once the framework is imported: ``frameworks``) after
the batches named, and each batch goes to ``--record``, the monitors' socket and loadertop's lines
on stderr through a bounded queue and a writer thread (``publisher``): the loop never waits on
the writing. The run itself is a ``launched_run.LaunchedRun``; this module holds the process's one run and
the functions scripts and integrations call (``log``, ``log_at``, ``current_run``, ``watch_this_process``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from loadertop.core.probe.claim import claim
from loadertop.core.probe.frameworks import FRAMEWORKS, framework_imported
from loadertop.core.probe.import_hooks import after_import
from loadertop.core.probe.launched_run import LaunchedRun
from loadertop.core.probe.run_autotune import TUNING_STATUS_S
from loadertop.core.protocol.environment import ENV, ProbeSettings

__all__ = [
    "FRAMEWORKS",
    "TUNING_STATUS_S",
    "LaunchedRun",
    "current_run",
    "install_from_environment",
    "log",
    "log_at",
    "watch_this_process",
]

_run: LaunchedRun | None = None  # the run this process acts for, once it claimed it


def current_run() -> LaunchedRun | None:
    """The run this process acts for under ``loadertop run`` (None otherwise, and in DataLoader workers)."""
    return _run


def log(**metrics: Any) -> None:
    """Record metrics (``loss=...``) for the training loader's latest batch; nothing outside ``loadertop run``.

    Tensors are detached and read by loadertop's writer thread, never here: the training thread
    is not made to wait for the device. In ``--record`` each call is a line ``{"event": "log",
    "loader": ..., "step": ..., "loss": ...}``; the epoch lines show the mean loss.
    """
    run = _run
    if run is not None:
        run.log(metrics)


def log_at(step: int, **metrics: Any) -> None:
    """``log`` for the training loader's batch ``step`` (1-based, over the run), not its latest: for
    integrations with frameworks that fetch batches ahead of the step they report."""
    run = _run
    if run is not None:
        run.log_at(step, metrics)


def install_from_environment() -> None:
    """Instrument torch's DataLoader as soon as the script imports torch (from sitecustomize)."""
    settings = ProbeSettings.from_environment(os.environ[ENV])
    after_import("torch", lambda _module: _instrument(settings))


def watch_this_process() -> LaunchedRun | None:
    """Watch this process's DataLoaders without the launcher, as ``loadertop run`` would (for a framework
    callback that a script added itself): every DataLoader made from now on is loadertop's, and monitors
    can attach (``loadertop attach``) and switch them. The run, once started; None under the launcher
    (in a process that did not claim the launched run: a DataLoader worker, a spawned child).
    """
    if _run is None and ENV not in os.environ:
        _instrument(ProbeSettings(command=tuple(getattr(sys, "orig_argv", sys.argv))))
        if _run is not None and _run.server is not None:
            _run._say(f"watching this process's DataLoaders: `loadertop attach {os.getpid()}` from another terminal")
    return _run


def _instrument(settings: ProbeSettings) -> None:
    import torch.utils.data

    from loadertop.core.probe.loader import DataLoader

    global _run
    torch.utils.data.DataLoader = DataLoader  # type: ignore[misc]
    if claim(settings.claim):
        _run = LaunchedRun(settings)
        DataLoader.creation_hook = _run
        for name in FRAMEWORKS:  # their trainers get loadertop's callback, once imported
            after_import(name, framework_imported)
