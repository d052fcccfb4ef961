"""What the trainer reports about itself: its state, its error, a frozen status. No torch here.

The TUI, the recorded sessions and (later) the protocol use these types without loading torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from loadertop.core.protocol.config import LoaderConfig


class TrainerState(enum.Enum):
    """Where the trainer is; shown in the header."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def is_done(self) -> bool:
        """True once the training thread has ended."""
        return self in (TrainerState.FINISHED, TrainerState.STOPPED, TrainerState.ERROR)


@dataclass(frozen=True, slots=True)
class TrainerError:
    """Why a run failed.

    Attributes:
        kind: ``"dataset"`` (the dataset raised), ``"worker"`` (a worker process died),
            ``"step"`` (the model, loss or optimizer raised) or ``"setup"``.
        message: one line for the user.
        sample_index: the failing sample, for dataset errors.
        step: batches done when it failed.
        detail: the full traceback text (for a worker, the worker's own traceback).
        stage: for a dataset error, the stage of the sample that raised, where stage timing named it
            (a transform's class, ``decode``, ``read``).
    """

    kind: str
    message: str
    sample_index: int | None
    step: int
    detail: str
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class TrainerStatus:
    """A frozen view of the trainer's progress for displays."""

    state: TrainerState
    config: LoaderConfig
    pending: LoaderConfig | None
    device: str
    epoch: int
    epochs: int
    batch_in_epoch: int
    batches_per_epoch: int
    step: int
    max_batches: int | None
    elapsed_s: float
    worker_pids: tuple[int, ...]
    error: TrainerError | None
    nonfinite_steps: int = 0
    first_nonfinite_step: int | None = None
    worker_spawns: int = 0
    exited_workers: tuple[ExitedWorker, ...] = ()


@dataclass(frozen=True, slots=True)
class ExitedWorker:
    """A DataLoader worker of the last generation that was shut down (at an epoch end, a restart or the end).

    Attributes:
        worker_id: its DataLoader worker id.
        pid: its process id.
        lifetime_s: from the start of its loader iterator to the end of its shutdown.
    """

    worker_id: int
    pid: int
    lifetime_s: float
