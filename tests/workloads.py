"""Workloads for the tests: calibrated sleeps, index recording, faults, and bad factories.

Importable as ``tests.workloads:NAME`` from the project root, so they also serve
``--workload`` in subprocess tests.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

from loadertop import Workload
from loadertop.core.train.calibrated import SleepDataset


class RecordingModel(nn.Module):
    """A linear model that remembers every index it was fed and its weight before each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.seen: list[list[int]] = []
        self.weights_before_forward: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, 0].long().tolist())
        self.weights_before_forward.append(self.linear.weight.detach().clone())
        return self.linear(x / 100.0)


def make(size: int = 64, sleep_s: float = 0.0, fail_at: int | None = None, lr: float = 0.1) -> Workload:
    model = RecordingModel()
    return Workload(
        dataset=SleepDataset(size, sleep_s, fail_at),
        model=model,
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        name="test",
    )


# Factories for --workload in subprocess tests: no required arguments.


def sleepy() -> Workload:
    """200 samples of 2 ms each."""
    return make(size=200, sleep_s=0.002)


def broken() -> Workload:
    """Sample 37 raises ValueError."""
    return make(size=200, sleep_s=0.001, fail_at=37)


def raises() -> Workload:
    raise RuntimeError("cannot build the model")


def wrong_type() -> Any:
    return {"dataset": None}


NOT_CALLABLE = 42


def env_tag() -> str:
    return os.environ.get("LOADERTOP_TEST_TAG", "")


class SlowStepModel(nn.Module):
    """A linear model whose forward also sleeps ``step_s`` (the GIL is free: like a GPU step)."""

    def __init__(self, step_s: float) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.step_s = step_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.step_s)
        return self.linear(x / 100.0)


class BurnDataset(torch.utils.data.Dataset):
    """Each sample costs ``cpu_s`` of CPU time (a busy loop), however many processes share the cores."""

    def __init__(self, size: int, cpu_s: float) -> None:
        self.size = size
        self.cpu_s = cpu_s

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        return torch.tensor([float(index)]), index % 2


def io_bound(size: int = 4000, sleep_s: float = 0.004, step_s: float = 0.020) -> Workload:
    """Loading sleeps (scales with workers, no CPU); the step takes ``step_s``: 2 workers keep up."""
    return Workload(
        dataset=SleepDataset(size, sleep_s),
        model=SlowStepModel(step_s),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        name="io-bound test",
    )


def cpu_bound(size: int = 4000, cpu_s: float = 0.002) -> Workload:
    """Loading burns CPU: more workers help until they fill the cores, then not."""
    return Workload(
        dataset=BurnDataset(size, cpu_s),
        model=nn.Linear(1, 2),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        name="cpu-bound test",
        num_threads=1,
    )


class HandleDataset(SleepDataset):
    """A dataset holding an open file, as datasets reading one big file often do: it cannot be pickled."""

    def __init__(self, size: int) -> None:
        super().__init__(size, 0.0)
        self.handle = open(__file__, "rb")  # noqa: SIM115 - kept open on purpose


def unpicklable() -> Workload:
    workload = make(size=64)
    workload.dataset = HandleDataset(64)
    return workload


class HangDataset(SleepDataset):
    """Sample ``hang_at`` takes ``hang_s`` (a stuck network read, a deadlock)."""

    def __init__(self, size: int, hang_at: int, hang_s: float) -> None:
        super().__init__(size, 0.001)
        self.hang_at = hang_at
        self.hang_s = hang_s

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.hang_at:
            time.sleep(self.hang_s)
        return super().__getitem__(index)


class PairsDataset(torch.utils.data.Dataset):
    """Samples as dicts, batched by the default collate into a dict of tensors."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(index)]), "y": torch.tensor(index % 2)}


def pairs_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    output = model(batch["x"] / 64.0)
    loss = nn.functional.cross_entropy(output, batch["y"])
    return loss, (output.argmax(1) == batch["y"]).float().mean()


def dict_batches() -> Workload:
    """Dict batches trained through a step function (no loss_fn)."""
    return Workload(
        dataset=PairsDataset(),
        model=nn.Linear(1, 2),
        loss_fn=None,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        name="dict batches",
        step_fn=pairs_step,
    )


def stalling() -> Workload:
    """Sample 150 of 4000 takes 60 s: with workers the run soon waits on it (a stuck read)."""
    workload = make(size=4000)
    workload.dataset = HangDataset(4000, hang_at=150, hang_s=60.0)
    return workload


def nan_at(step: int = 5) -> Workload:
    """The loss becomes NaN from batch ``step`` on."""
    workload = make(size=400)
    calls = {"n": 0}

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.cross_entropy(output, target)
        return loss * float("nan") if calls["n"] >= step else loss

    workload.loss_fn = loss_fn
    return workload


class StorageDataset(BurnDataset):
    """Each sample waits ``sleep_s`` for storage (no CPU), then costs ``cpu_s`` of CPU to decode."""

    def __init__(self, size: int, sleep_s: float, cpu_s: float) -> None:
        super().__init__(size, cpu_s)
        self.sleep_s = sleep_s

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.sleep_s)
        return super().__getitem__(index)


def _landscape(dataset: torch.utils.data.Dataset, step_s: float, name: str) -> Workload:
    return Workload(
        dataset=dataset,
        model=SlowStepModel(step_s),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        name=name,
        num_threads=1,
    )


def sleep_bound() -> Workload:
    """Loading waits 4 ms per sample (no CPU), the step 2 ms: the best count is far above 2 cores."""
    return _landscape(SleepDataset(20_000, 0.004), 0.002, "sleep-bound test")


def storage_and_cpu() -> Workload:
    """2 ms of storage latency and 0.5 ms of CPU per sample (issue 12's second sweep)."""
    return _landscape(StorageDataset(20_000, 0.002, 0.0005), 0.001, "storage + CPU test")


def compute_bound() -> Workload:
    """Loading is almost free (0.05 ms per sample), the step 20 ms: workers cannot help."""
    return _landscape(SleepDataset(20_000, 0.00005), 0.020, "compute-bound test")
