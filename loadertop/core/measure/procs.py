"""Child processes: find what a run left behind, and make sure nothing is."""

from __future__ import annotations

import multiprocessing

import psutil


def child_processes() -> list[psutil.Process]:
    """This process's live descendants (zombies excluded).

    Python's own helpers for ``spawn``/``forkserver`` workers are left out: the
    resource tracker and the fork server live as long as this process and end with it.
    """
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE or _is_multiprocessing_helper(child):
                continue
            alive.append(child)
        except psutil.Error:
            continue
    return alive


def _is_multiprocessing_helper(proc: psutil.Process) -> bool:
    command = " ".join(proc.cmdline())
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in command


def reap_children(timeout_s: float = 3.0) -> list[int]:
    """Terminate (then kill) any multiprocessing children still alive; return their pids.

    A safety net for the end of a run: the trainer shuts its workers down itself,
    so a non-empty result means something went wrong and is worth reporting.
    """
    leftover = multiprocessing.active_children()  # also joins finished ones
    for proc in leftover:
        proc.terminate()
    for proc in leftover:
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    return [p.pid for p in leftover if p.pid is not None]
