"""The loader's worker generations: the pids running now, how many were spawned, the last ones that exited."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.protocol.status import ExitedWorker
from loadertop.core.train.costs import CostBoundaries


class WorkerGenerations:
    """Which worker processes deliver now, and the ones before them; written by the training thread.

    Args:
        lock: the trainer's lock, held while the figures change so a status reads them whole.
    """

    def __init__(self, lock: threading.Condition) -> None:
        self._lock = lock
        self.pids: tuple[int, ...] = ()
        """The running generation's pids, in worker-id order."""
        self.spawns = 0
        """Worker processes started so far, every generation counted."""
        self.since = 0.0
        """``perf_counter()`` when the running generation started."""
        self.exited: tuple[ExitedWorker, ...] = ()
        """The last generation that ended, with how long each of its workers ran."""

    def note(self, iterator: Any, since: float) -> None:
        """The running generation's worker pids (a new generation's start is ``since``)."""
        pids = iterator.worker_pids()
        with self._lock:
            if set(pids) - set(self.pids):  # a new generation (persistent workers stay)
                self.spawns += len(set(pids) - set(self.pids))
                self.since = since
            self.pids = pids

    def note_exited(self, ended: float) -> None:
        """The running generation's workers ended at ``ended``: they become the last exited ones."""
        with self._lock:
            if self.pids:
                self.exited = tuple(
                    ExitedWorker(worker_id, pid, ended - self.since) for worker_id, pid in enumerate(self.pids)
                )
            self.pids = ()

    def reap(self, iterator: Any, costs: CostBoundaries) -> None:
        """Shut the iterator's workers down and reap them; their last memory counts toward the peak first.

        The clock's lock is held while they are reaped, so no reading sees a worker twice or never.
        """
        if costs.is_open and self.pids:
            costs.tick()
        with costs.clock.lock:
            torch_compat.shutdown_workers(iterator)
        self.note_exited(time.perf_counter())

    def kill(self) -> list[int]:
        """SIGKILL the running generation's workers; the pids that were signalled."""
        killed = []
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                continue
        return killed
