"""Workloads for the tests: calibrated sleeps, index recording, faults, and bad factories.

Importable as ``tests.workloads:NAME`` from the project root, so they also serve
``--workload`` in subprocess tests.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from loadertop import Workload
from loadertop.core.calibrated import SleepDataset


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
