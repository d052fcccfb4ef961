"""The CUDA path: auto picks the GPU and compute time includes the GPU's work. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loadertop import LoaderConfig, Trainer, TrainerState, Workload
from loadertop.core.train.calibrated import SleepDataset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class HeavyOnGPU(nn.Module):
    """Queues ~50 large matmuls per forward: asynchronous work the clock must wait for."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.register_buffer("big", torch.randn(4096, 4096))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.big
        for _ in range(50):
            acc = acc @ self.big / 64.0
        return self.linear(x) + acc.mean() * 0


def test_auto_picks_cuda_and_compute_includes_the_kernels() -> None:
    workload = Workload(
        SleepDataset(64, 0.0), HeavyOnGPU(), nn.functional.cross_entropy, lambda p: torch.optim.SGD(p, lr=0.1)
    )
    trainer = Trainer(workload, LoaderConfig(batch_size=8, pin_memory=True, num_workers=1), epochs=1, device="auto")
    assert trainer.device.type == "cuda"
    trainer.start()
    assert trainer.join(120)
    assert trainer.state is TrainerState.FINISHED, trainer.error
    # Time the same kernels synchronised, outside loadertop.
    big = workload.model.big
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    acc = big
    for _ in range(50):
        acc = acc @ big / 64.0
    end.record()
    torch.cuda.synchronize()
    kernels_ms = start.elapsed_time(end)
    [summary] = trainer.store.summaries()
    assert summary.compute_ms_mean >= 0.8 * kernels_ms


@pytest.mark.parametrize("num_workers", [0, 1])
def test_pinning_and_the_copy_to_the_device_are_stages_once_a_batch(num_workers: int) -> None:
    from loadertop.core.protocol.stages import PIN, TO_DEVICE

    class Large(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return torch.full((1 << 18,), float(index)), index % 2  # 1 MiB a sample: pinning and copying show

    model = nn.Sequential(nn.Linear(1 << 18, 2))
    workload = Workload(Large(), model, nn.functional.cross_entropy, lambda p: torch.optim.SGD(p, lr=0.1))
    config = LoaderConfig(batch_size=8, pin_memory=True, num_workers=num_workers)
    trainer = Trainer(workload, config, epochs=1, device="cuda")
    trainer.start()
    assert trainer.join(120)
    assert trainer.state is TrainerState.FINISHED, trainer.error
    [figures] = trainer.stages()
    by_name = {s.name: s for s in figures.stages}
    assert by_name[PIN].calls == by_name[TO_DEVICE].calls == 8  # once a batch
    # 8 MiB a batch: pinning copies it (CPU), the device copy takes the GPU time a PCIe link needs.
    assert figures.cpu_ms(by_name[PIN]) > 0 and figures.wall_ms(by_name[TO_DEVICE]) > 0
    assert [s.name for s in figures.stages][-2:] == [PIN, TO_DEVICE]
