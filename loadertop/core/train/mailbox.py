"""The trainer's mailbox: commands from any thread (switch, pause, resume, stop) taken by the training thread at
batch boundaries, and the state and running configuration they move, all under one lock."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.status import TrainerState
from loadertop.core.train.costs import CostBoundaries


class Stop(Exception):
    """Leave the training loop: a stop was requested."""


class Switch(NamedTuple):
    """A hot restart taken from the mailbox.

    Attributes:
        config: the configuration to switch to.
        asked_at: ``perf_counter()`` when it was first asked for (its latency is measured from here).
        overlap: whether the new workers start while the old ones deliver (None: the trainer's default).
    """

    config: LoaderConfig
    asked_at: float
    overlap: bool | None


class Mailbox:
    """What other threads ask of the training thread, and what it is doing; ``lock`` guards every field.

    Switch requests do not queue: the last one wins (it keeps the time the first unanswered one was asked).

    Args:
        config: the first loader configuration.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.lock = threading.Condition()
        self.state = TrainerState.IDLE
        self.config = config
        """The running loader configuration (it changes when a switch hands over)."""
        self.pending: LoaderConfig | None = None
        self.pending_since = 0.0
        self.pending_overlap: bool | None = None
        self.stop_requested = False
        self.paused = False

    # Other threads.

    def post_switch(self, config: LoaderConfig, overlap: bool | None) -> None:
        """Ask for a switch to ``config`` (caller holds the lock)."""
        if self.pending is None:
            self.pending_since = time.perf_counter()
        self.pending = config
        self.pending_overlap = overlap
        self.lock.notify_all()

    def pause(self) -> None:
        """Ask for a pause at the next batch boundary."""
        with self.lock:
            self.paused = True
            self.lock.notify_all()

    def resume(self) -> None:
        """Lift a pause."""
        with self.lock:
            self.paused = False
            self.lock.notify_all()

    def stop(self) -> None:
        """Ask the training thread to stop at the next batch boundary."""
        with self.lock:
            self.stop_requested = True
            self.lock.notify_all()

    def rearm(self, config: LoaderConfig) -> None:
        """Empty the mailbox for a run started again with ``config`` (caller holds the lock)."""
        self.config = config
        self.pending = None
        self.pending_since = time.perf_counter()
        self.stop_requested = False
        self.paused = False

    # The training thread.

    def set_state(self, state: TrainerState) -> None:
        """Move to ``state``."""
        with self.lock:
            self.state = state

    def set_config(self, config: LoaderConfig) -> None:
        """``config`` is the running configuration from now."""
        with self.lock:
            self.config = config

    def check_stop(self) -> None:
        """Raise ``Stop`` when a stop was asked for."""
        with self.lock:
            if self.stop_requested:
                raise Stop

    def take(self, costs: CostBoundaries) -> Switch | None:
        """At a batch boundary: wait while paused, raise ``Stop``, or return a pending switch.

        A pause costs the running configuration nothing: its account is closed while it lasts.
        """
        with self.lock:
            while True:
                if self.stop_requested:
                    raise Stop
                if self.pending is not None:
                    config, self.pending = self.pending, None
                    return Switch(config, self.pending_since, self.pending_overlap)
                if not self.paused:
                    if self.state is TrainerState.PAUSED:
                        self.state = TrainerState.RUNNING
                        costs.open(self.config)
                    return None
                if self.state is not TrainerState.PAUSED:
                    costs.close()
                self.state = TrainerState.PAUSED
                self.lock.wait()
