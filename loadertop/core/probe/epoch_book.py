"""A loader's bookkeeping across epochs: how many it began, how many switches handed over, the loop running."""

from __future__ import annotations

import weakref
from typing import Any


class EpochBook:
    """Where a loader is in its run (read by ``status()`` from any thread, and by the loop's path)."""

    __slots__ = ("active", "epoch", "handover_due", "switches")

    def __init__(self) -> None:
        self.epoch = 0
        """Iterations begun (``LoaderBatch.epoch``)."""
        self.switches = 0
        """Configuration changes applied (``LoaderBatch.generation``: the number of the configuration)."""
        self.handover_due = False
        """An overlapped switch began and its boundary hooks have not run yet."""
        self.active: weakref.ref[Any] | None = None
        """The iterator of the loop in progress (weak: a dropped iterator ends its workers)."""

    def running(self) -> Any:
        """The iterator of the loop in progress, if any."""
        return self.active() if self.active is not None else None
