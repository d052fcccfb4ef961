"""Calibrated workloads: a known load cost per sample, to check that loadertop measures what it claims."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from loadertop.core.workload import Workload


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
