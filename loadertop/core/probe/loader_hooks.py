"""Who a ``loadertop.DataLoader`` tells what: observers of every batch, boundary hooks where a configuration
begins, retire hooks before a generation's workers are shut down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader_reports import LoaderBatch


class LoaderHooks:
    """A loader's observers and hooks (see ``DataLoader.add_observer``, ``add_boundary_hook``, ``add_retire_hook``)."""

    __slots__ = ("boundary", "observers", "retire", "stop_start_only")

    def __init__(self) -> None:
        self.observers: list[Callable[[LoaderBatch], None]] = []
        """Called with every batch's record, in the loop's thread (the list itself is read on the loop's path)."""
        self.boundary: list[Callable[[Any], None]] = []
        self.retire: list[Callable[[Any, tuple[int, ...]], None]] = []
        self.stop_start_only = False
        """A boundary hook expects switches to apply at the next batch: every switch stops and starts."""

    def add_boundary(self, hook: Callable[[Any], None], *, at_handover: bool) -> None:
        self.boundary.append(hook)
        if not at_handover:
            self.stop_start_only = True

    def run_boundary(self, loader: Any) -> None:
        """A configuration of ``loader`` begins."""
        for hook in self.boundary:
            hook(loader)

    def run_retiring(self, loader: Any, iterator: Any) -> None:
        """Tell the retire hooks that ``iterator``'s workers are about to be shut down."""
        if self.retire:
            pids = tuple(w.pid for w in torch_compat.worker_processes(iterator) if w.pid)
            for hook in self.retire:
                hook(loader, pids)
