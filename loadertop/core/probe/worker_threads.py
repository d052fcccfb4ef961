"""The loader's own threads off the loop's path: the one starting an overlapped switch's new workers, the one
reaping its old ones, and the lock that CPU readings share with the reaping."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from loadertop.core.probe import torch_compat


class WorkerThreads:
    """A loader's builder and reaper threads (at most one of each at a time) and its reaping lock."""

    __slots__ = ("builder", "reaper", "reaping_lock")

    def __init__(self) -> None:
        self.reaping_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        """Held while workers are shut down and reaped (see ``DataLoader.reaping_lock``)."""
        self.builder: threading.Thread | None = None
        """The thread starting an overlapped switch's new workers."""
        self.reaper: threading.Thread | None = None
        """The thread reaping an overlapped switch's old workers."""

    def shut_down(self, iterator: Any) -> None:
        """Shut ``iterator``'s workers down and reap them now, holding the reaping lock."""
        with self.reaping_lock:
            torch_compat.shutdown_workers(iterator)

    def reap_later(self, iterator: Any, name: str) -> None:
        """Shut ``iterator``'s idle workers down and reap them in a thread: their exit takes tens of ms each,
        which the loop need not wait for (CPU readings wait for the reaping lock instead)."""
        if not torch_compat.worker_processes(iterator):
            return

        def reap() -> None:
            with self.reaping_lock:
                torch_compat.shutdown_workers(iterator)

        self.await_reaper()
        self.reaper = threading.Thread(target=reap, name=f"loadertop-reaper-{name}", daemon=True)
        self.reaper.start()

    def await_reaper(self) -> None:
        """Wait until the workers an overlapped switch retired are reaped."""
        reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.join()

    def await_builder(self) -> None:
        """Let a thread still starting an abandoned overlap's workers finish (it reads the settings)."""
        builder, self.builder = self.builder, None
        if builder is not None:
            builder.join()
