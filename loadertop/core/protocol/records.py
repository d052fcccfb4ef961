"""What the trainer publishes: one record per batch and one event per (re)start of the loader."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loadertop.core.protocol.config import LoaderConfig


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One training batch, as measured in the training thread.

    Attributes:
        step: batches done in the whole run, this one included (1, 2, ...).
        epoch: 1-based epoch the batch belongs to.
        batch_in_epoch: 1-based position of the batch within its epoch.
        config_key: the loader configuration's key (see LoaderConfig.key).
        num_workers: DataLoader workers that produced the batch.
        batch_size: the configured batch size.
        samples: samples in this batch (the last one of an epoch may be short).
        load_s: seconds blocked in ``next(iterator)`` waiting for the batch.
        compute_s: seconds of the training step (forward, backward, optimizer; synchronised on CUDA).
        loss: the batch's loss.
        accuracy: share of correct predictions, or None when the task is not classification.
        time: wall-clock time (UNIX seconds) at the end of the step.
        elapsed_s: seconds since the run started, at the end of the step.
        warmup: one of the first ``max(1, num_workers)`` batches after a start or hot restart
            (made during worker start-up, so they arrive in a burst); kept out of steady-state figures.
    """

    step: int
    epoch: int
    batch_in_epoch: int
    config_key: str
    num_workers: int
    batch_size: int
    samples: int
    load_s: float
    compute_s: float
    loss: float
    accuracy: float | None
    time: float
    elapsed_s: float
    warmup: bool = False

    @property
    def iter_s(self) -> float:
        """Load plus compute: the batch's whole iteration."""
        return self.load_s + self.compute_s

    def to_json(self) -> dict[str, Any]:
        """The record as written by ``--record``: DESIGN.md's fields, times in ms."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "num_workers": self.num_workers,
            "config": self.config_key,
            "samples": self.samples,
            "load_ms": round(self.load_s * 1000.0, 4),
            "compute_ms": round(self.compute_s * 1000.0, 4),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "warmup": self.warmup,
            "time": round(self.time, 6),
        }


@dataclass(frozen=True, slots=True)
class StartEvent:
    """A (re)start of the DataLoader: at the beginning, on a hot restart, or at an epoch boundary.

    Attributes:
        reason: ``"start"``, ``"restart"`` or ``"epoch"``.
        config: the configuration that started.
        after_step: batches done before this start (its first batch is ``after_step + 1``).
        epoch: 1-based epoch the loader starts in.
        position: samples of that epoch already consumed before the start.
        startup_s: from ``iter(loader)`` to the first batch in hand (worker start-up and first batch).
        latency_s: from the request (or the end of the last batch) to the first batch in hand,
            including shutting the old workers down.
        worker_pids: pids of the worker processes it started (empty with 0 workers).
    """

    reason: str
    config: LoaderConfig
    after_step: int
    epoch: int
    position: int
    startup_s: float
    latency_s: float
    worker_pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        data = asdict(self)
        data["config"] = asdict(self.config)
        return data
