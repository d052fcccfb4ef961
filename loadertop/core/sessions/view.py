"""What a front-end sees and what it may ask: ``SessionView`` and ``SessionLike``. No torch here.

A live ``loadertop.core.sessions.session.Session``, a ``loadertop.core.sessions.replay.ReplaySession`` (and later a
remote session over the protocol) all serve these, so the TUI never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from loadertop.core.drive.sweep import DEFAULT_BATCHES, SweepProgress
from loadertop.core.measure.store import StoreSnapshot
from loadertop.core.measure.system import SystemSnapshot
from loadertop.core.policy.advice import Advice, MachineFacts
from loadertop.core.policy.autotune import TunerStatus
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.gpu_idle import GpuIdle
from loadertop.core.protocol.stages import StageFigures
from loadertop.core.protocol.status import TrainerStatus


@dataclass(frozen=True, slots=True)
class LoaderInfo:
    """A DataLoader of a watched script, as it last reported itself.

    Attributes:
        name: its name (``name=`` or its creation site ``file:line``).
        num_workers: the workers running now (or at its next ``iter()``).
        batch_size: its batch size (None with ``batch_size=None`` or a batch_sampler).
        batches_per_epoch: ``len(loader)`` (None when unsized).
        training: the loader that commands address by default.
        exact: a switch continues the running epoch; False (an IterableDataset): it waits for the next epoch.
        pending: a requested worker count not yet applied.
        epoch: iterations started so far.
        worker_pids: its running workers.
    """

    name: str
    num_workers: int
    batch_size: int | None
    batches_per_epoch: int | None
    training: bool
    exact: bool
    pending: int | None
    epoch: int
    worker_pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RankInfo:
    """One rank of a torchrun job, as the monitor last measured it.

    Attributes:
        rank, local_rank, world_size: its place in the job.
        pid: its process.
        num_workers: its training loader's workers now.
        load_ms, step_ms: its recent steady-state wait for data and step, per batch (NaN before any).
        samples_per_s: its recent throughput.
        step: batches it has trained on.
        ended: how it ended, in words (None while it runs).
        watched: False for a rank of this node that serves no socket (its loaders are not loadertop's).
        host: for a rank on another node, its host (seen through the job's c10d store); None for this node's.
    """

    rank: int
    local_rank: int
    world_size: int
    pid: int
    num_workers: int
    load_ms: float
    step_ms: float
    samples_per_s: float
    step: int
    ended: str | None = None
    watched: bool = True
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Straggler:
    """The rank whose wait for data holds the others back (see ``core.ranks.find_straggler``).

    Attributes:
        rank: the straggler.
        score: its extra wait for data as a share of the others' iteration (0..1).
        evidence: the measurements behind it, in words.
    """

    rank: int
    score: float
    evidence: str


@dataclass(frozen=True, slots=True)
class ScriptView:
    """What a monitor knows of a user's script beyond the batches (None for the built-in workload).

    Attributes:
        command: the command line.
        pid: the process that trains (None until it is known).
        log_path: the file the script's output goes to (None: its own terminal).
        log_tail: the latest lines of that output.
        loaders: every DataLoader it created, in creation order.
        selected: the loader shown and commanded (the training one unless the user chose another).
        connected: whether the monitor hears from the script now.
        control: who may switch workers, in words ("this monitor", or who else does).
        ended: how the script ended, in words (None while it runs).
        dropped: messages lost on the way: the monitor did not read them in time, or the script's queue was full.
        rejected: lines from the script this monitor refused (malformed, oversized, unknown).
        notice: (sequence number, text) of the latest thing to tell the user (a refusal, a switch).
        builtin: the workload's name when the run is another loadertop's built-in trainer (no script output).
        ranks: every rank of a torchrun job (empty for a single process).
        selected_rank: the rank shown and commanded.
        straggler: the input straggler among the ranks, if one is.
        other_nodes: ranks of the job on other nodes (not watched from this one).
    """

    command: tuple[str, ...]
    pid: int | None
    log_path: str | None
    log_tail: tuple[str, ...]
    loaders: tuple[LoaderInfo, ...]
    selected: str | None
    connected: bool
    control: str
    ended: str | None
    dropped: int = 0
    rejected: int = 0
    notice: tuple[int, str] = (0, "")
    builtin: str | None = None
    ranks: tuple[RankInfo, ...] = ()
    selected_rank: int | None = None
    straggler: Straggler | None = None
    other_nodes: int = 0


@dataclass(frozen=True, slots=True)
class SessionView:
    """Everything a display shows at one moment; immutable, safe to keep.

    Attributes:
        workload_name: the workload's name.
        notes: facts to show beside it (e.g. a simulated storage latency).
        status: the trainer's state, configuration and progress.
        store: the recorded batches, (re)starts and per-configuration summaries.
        system: the latest system sample (None before the first).
        gpu_status: ``"1 NVIDIA GPU"``, ``"no NVIDIA GPU: <reason>"``, or ``"sampling"`` before the first sample.
        advice: the fastest and the recommended configuration, with warnings (None in old recordings).
        sweep: the sweep's progress, once one was started.
        script: the watched script, its loaders and its output (None for the built-in workload).
        autotune: the autotuner's state, its changes and its model's curve (None: this session cannot tune).
        machine: the cores and memory the training may use and where their limits came from (None in replays).
        stages: where the shown loader's samples' time goes, one ``StageFigures`` per worker count run, in the order
            they first ran (empty: none timed yet; None: this session does not say, e.g. an older recording). The
            verdict on them takes ``machine.usable_cores``.
        gpu_idle: the training GPU's idle time per worker count (``protocol.gpu_idle``), in the order the counts
            first ran; empty: no GPU, not measured, or not yet.
        gpu_idle_note: why there is no idle figure where NVML has a GPU (e.g. it keeps no samples); None otherwise.
    """

    workload_name: str
    notes: tuple[str, ...]
    status: TrainerStatus
    store: StoreSnapshot
    system: SystemSnapshot | None
    gpu_status: str
    advice: Advice | None = None
    sweep: SweepProgress | None = None
    script: ScriptView | None = None
    autotune: TunerStatus | None = None
    machine: MachineFacts | None = None
    stages: tuple[StageFigures, ...] | None = None
    gpu_idle: tuple[GpuIdle, ...] = ()
    gpu_idle_note: str | None = None


class SessionLike(Protocol):
    """What a front-end needs: views and commands (a live Session or a replay)."""

    def start(self) -> None: ...
    def view(self) -> SessionView: ...
    def apply(self, config: LoaderConfig) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> list[int]: ...
    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None: ...
    def cancel_sweep(self) -> None: ...
    def set_autotune(self, enabled: bool) -> None: ...
