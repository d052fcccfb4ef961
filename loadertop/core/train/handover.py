"""Handover bookkeeping: the switches asked of the loader and not yet handed over, and the hooks through which
the loader says where a configuration's batches (and its CPU) begin."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from loadertop.core.probe.loader import DataLoader, LoaderBatch
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.status import TrainerState
from loadertop.core.train.costs import CostBoundaries
from loadertop.core.train.loaders import LoaderSettings
from loadertop.core.train.mailbox import Mailbox, Switch
from loadertop.core.train.workers import WorkerGenerations


class Handover:
    """Hot restarts of the run's one loader, reconfigured in place: which configuration delivers each batch.

    An overlapped switch hands over a few batches after it is asked (when the old workers' last batch is
    in), so the running configuration (``mailbox.config``) changes only when the loader says so.

    Args:
        mailbox: where the running configuration and the state are kept.
        costs: the CPU accounts, handed to the new configuration at each handover.
        workers: the worker generations, the old one ended at each handover.
        settings: a configuration as the loader's settings.
    """

    def __init__(
        self, mailbox: Mailbox, costs: CostBoundaries, workers: WorkerGenerations, settings: LoaderSettings
    ) -> None:
        self._mailbox = mailbox
        self._costs = costs
        self._generations = workers
        self._settings = settings
        self.applied: dict[str, Any] = {}
        """The loader's settings now (a switch asked for applies them at once, even before it hands over)."""
        self.delivering: dict[str, Any] = {}
        """The settings of the workers delivering now."""
        self.delivery: LoaderBatch | None = None
        """The batch the loader handed over last."""
        self.handed_over: float | None = None
        """A switch just handed over: when it was asked (None: none since ``take_handed_over``)."""
        # Switches asked of the loader and not yet handed over: (configuration, its settings, when it was asked),
        # oldest first.
        self._waiting: deque[tuple[LoaderConfig, dict[str, Any], float]] = deque()

    def attach(self, loader: DataLoader, settings: dict[str, Any]) -> None:
        """``loader`` was just made with ``settings``: follow its batches, retirements and boundaries."""
        self.applied = self.delivering = settings
        loader.add_observer(self._delivered)
        loader.add_retire_hook(self._retiring)
        loader.add_boundary_hook(self._at_boundary, at_handover=True)

    def switch_to(self, loader: DataLoader, switch: Switch) -> bool:
        """A hot restart: the loader changes from its next ``next()`` on, in the running epoch (nothing lost
        or repeated), handing over once the old workers' batches are in. False: nothing to change."""
        config = switch.config
        settings = self._settings(config)
        if settings == self.applied:  # e.g. pin_memory where there is no GPU: the same workers go on
            self._mailbox.set_config(config)
            self._costs.close()
            self._costs.open(config)
            return False
        merges = bool(self._waiting) and loader.request_waiting  # the loader has not taken the last one yet
        if merges:
            self._waiting.pop()
        loader.reconfigure(overlap=switch.overlap, **settings)
        self.applied = settings
        if merges and settings == self.delivering:  # back to what runs: the loader will change nothing
            self._mailbox.set_config(config)
            return False
        self._mailbox.set_state(TrainerState.RESTARTING)
        self._waiting.append((config, settings, switch.asked_at))
        return True

    def take_handed_over(self) -> float | None:
        """When the switch that handed over since the last call was asked (None: none did)."""
        asked, self.handed_over = self.handed_over, None
        return asked

    # The instrumented loader's hooks, all called in the training thread.

    def _delivered(self, batch: LoaderBatch) -> None:
        self.delivery = batch

    def _retiring(self, loader: DataLoader, pids: tuple[int, ...]) -> None:
        """A switch is about to shut the old workers down: their last memory counts toward the peak first."""
        if self._costs.is_open and pids:
            self._costs.tick()

    def _at_boundary(self, loader: DataLoader) -> None:
        """A configuration begins: from here the batches are the new one's, and so is the CPU.

        A switch hands over here (overlapped: when the old workers' last batch is in; else after they
        are reaped and before the new ones start): the configuration asked for becomes the running one.
        """
        if self._waiting:
            config, self.delivering, asked = self._waiting.popleft()
            self._mailbox.set_config(config)
            self.handed_over = asked
        if self._costs.credited is not self._mailbox.config:
            self._generations.note_exited(time.perf_counter())
            # The new workers of an overlapped switch are running already: their CPU so far is the new one's.
            self._costs.hand_to(self._mailbox.config, loader.status().worker_pids)
