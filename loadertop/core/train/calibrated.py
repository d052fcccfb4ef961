"""Calibrated workloads: a known load cost per sample, to check that loadertop measures what it claims."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from loadertop.core.train.workload import Workload


class SleepDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Each sample sleeps ``sleep_s`` (a known cost that uses no CPU) and returns ``([index], index % 2)``.

    Args:
        size: number of samples.
        sleep_s: seconds each ``__getitem__`` sleeps.
        fail_at: an index whose ``__getitem__`` raises ValueError (to test faults).
    """

    def __init__(self, size: int, sleep_s: float, fail_at: int | None = None) -> None:
        self.size = size
        self.sleep_s = sleep_s
        self.fail_at = fail_at

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index == self.fail_at:
            raise ValueError(f"broken sample {index}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return torch.tensor([float(index)]), torch.tensor(index % 2)


def batch_cost_s(sleep_ms: float, batch_size: int, repeats: int = 30) -> float:
    """Seconds to load and collate one batch of the calibrated dataset in this process.

    The known cost against which loadertop's load times are checked: timer slack,
    tensor creation and collation included.
    """
    dataset = SleepDataset(batch_size, sleep_ms / 1000.0)
    start = time.perf_counter()
    for _ in range(repeats):
        default_collate([dataset[i] for i in range(batch_size)])
    return (time.perf_counter() - start) / repeats


def make_sleep_workload(size: int = 2000, sleep_ms: float = 2.0) -> Workload:
    """A sleep-per-sample dataset and a one-layer model whose step costs almost nothing."""
    return Workload(
        dataset=SleepDataset(size, sleep_ms / 1000.0),
        model=nn.Linear(1, 2),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        name=f"calibrated: {size} samples sleeping {sleep_ms:g} ms each",
        num_threads=1,
    )


def _burn(cpu_s: float) -> None:
    """Spend ``cpu_s`` of this thread's CPU time (a busy loop: it takes a core, as a decode would)."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


class CostDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Each sample waits ``sleep_s`` (storage) and burns ``cpu_s`` of CPU (decoding); from ``phase_at``
    (UNIX seconds, shared by the workers) on, both cost ``phase_factor`` times as much.

    Args:
        size: number of samples.
        sleep_s, cpu_s: the cost of one sample.
        phase_after_s: seconds after the dataset is made when the cost changes (None: never).
        phase_factor: how much more a sample costs then.
    """

    def __init__(
        self, size: int, sleep_s: float, cpu_s: float, *, phase_after_s: float | None = None, phase_factor: float = 3.0
    ) -> None:
        self.size = size
        self.sleep_s = sleep_s
        self.cpu_s = cpu_s
        self.phase_at = time.time() + phase_after_s if phase_after_s is not None else None
        self.phase_factor = phase_factor

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.phase_factor if self.phase_at is not None and time.time() >= self.phase_at else 1.0
        if self.sleep_s:
            time.sleep(self.sleep_s * factor)
        if self.cpu_s:
            _burn(self.cpu_s * factor)
        return torch.tensor([float(index)]), torch.tensor(index % 2)


class StepModel(nn.Module):
    """A one-layer model whose forward also waits ``wait_s`` (an accelerator's step: no CPU) and burns
    ``cpu_s`` of CPU (a CPU step)."""

    def __init__(self, wait_s: float = 0.0, cpu_s: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.wait_s = wait_s
        self.cpu_s = cpu_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wait_s:
            time.sleep(self.wait_s)
        if self.cpu_s:
            _burn(self.cpu_s)
        return self.linear(x / 1000.0)


def make_cost_workload(
    *,
    sleep_ms: float,
    cpu_ms: float,
    step_wait_ms: float,
    step_cpu_ms: float = 0.0,
    size: int = 100_000,
    phase_after_s: float | None = None,
    phase_factor: float = 3.0,
    name: str,
) -> Workload:
    """A ``CostDataset`` and a ``StepModel``: the landscape of worker counts is known from the costs."""
    return Workload(
        dataset=CostDataset(
            size, sleep_ms / 1000, cpu_ms / 1000, phase_after_s=phase_after_s, phase_factor=phase_factor
        ),
        model=StepModel(step_wait_ms / 1000, step_cpu_ms / 1000),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        name=name,
        num_threads=1,
    )


def storage_bound() -> Workload:
    """2 ms of storage wait and 0.1 ms of CPU a sample, a 4 ms step: the best count is above the cores."""
    return make_cost_workload(sleep_ms=2.0, cpu_ms=0.1, step_wait_ms=4.0, name="calibrated: storage-bound")


def cpu_bound() -> Workload:
    """2 ms of CPU a sample, a 2 ms step: the cores are the limit."""
    return make_cost_workload(sleep_ms=0.0, cpu_ms=2.0, step_wait_ms=2.0, name="calibrated: CPU-bound")


def compute_bound() -> Workload:
    """0.05 ms of CPU a sample, a 40 ms step (an accelerator's): 0 or 1 worker is enough."""
    return make_cost_workload(sleep_ms=0.0, cpu_ms=0.05, step_wait_ms=40.0, name="calibrated: compute-bound")


def phase_change() -> Workload:
    """As ``storage_bound`` with a 1.5 ms step, and every sample ten times as costly after 12 s: enough that
    even 8 workers (the most the tuner tries on 2 cores) cannot keep the throughput (at 3x, 5 workers taking
    26 ms a batch still made ~1,500 samples/s, more than the run reached before: nothing moved)."""
    return make_cost_workload(
        sleep_ms=1.0,
        cpu_ms=0.1,
        step_wait_ms=1.5,
        phase_after_s=12.0,
        phase_factor=10.0,
        name="calibrated: phase change after 12 s",
    )


def mixed() -> Workload:
    """1 ms of storage wait and 0.4 ms of CPU a sample, a step of 1 ms waiting and 1 ms of CPU: the workers'
    waits, their CPU and the loop's CPU all matter (the best count near the cores, where the CPU runs out)."""
    return make_cost_workload(sleep_ms=1.0, cpu_ms=0.4, step_wait_ms=1.0, step_cpu_ms=1.0, name="calibrated: mixed")
