"""The run's one loader: a configuration as loadertop's instrumented DataLoader's settings, and the loader made."""

from __future__ import annotations

import signal
import warnings
from typing import Any

import torch

from loadertop.core.probe.loader import DataLoader
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.train.resumable_sampler import ResumableSampler
from loadertop.core.train.workload import IndexedDataset, Workload, check_picklable

# loadertop reports too many workers in its own words; PyTorch's warning would land on the TUI's screen.
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)


def ignore_sigint_in_worker(worker_id: int) -> None:
    """Workers leave Ctrl+C to the main process, which shuts them down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LoaderSettings:
    """A configuration as the instrumented loader's settings (what ``reconfigure`` takes), for one workload.

    Args:
        workload: what the loader loads (checked to pickle before workers need it, once per start method).
        cuda: whether batches go to a GPU (pinned memory helps only then).
        stall_timeout_s: the DataLoader timeout for configurations with workers that set none (0: none).
    """

    def __init__(self, workload: Workload, *, cuda: bool, stall_timeout_s: float) -> None:
        self.workload = workload
        self.cuda = cuda
        self.stall_timeout_s = stall_timeout_s
        self._picklable_for: set[str | None] = set()

    def __call__(self, config: LoaderConfig) -> dict[str, Any]:
        """``config``'s settings, once the workload is known to reach its workers.

        Raises:
            WorkloadError: when ``config`` has workers and the workload does not pickle for its start method.
        """
        if config.num_workers and config.start_method not in self._picklable_for:
            check_picklable(self.workload, config)  # once per start method: spawn pickles it anyway
            self._picklable_for.add(config.start_method)
        kwargs = config.loader_kwargs(pin_memory_allowed=self.cuda)
        with_workers = config.num_workers > 0
        timeout = kwargs.get("timeout", self.stall_timeout_s if with_workers else 0.0)
        return {
            "num_workers": config.num_workers,
            "batch_size": config.batch_size,
            "pin_memory": kwargs["pin_memory"],
            "persistent_workers": kwargs.get("persistent_workers", False),
            "prefetch_factor": kwargs.get("prefetch_factor", 2 if with_workers else None),
            "multiprocessing_context": kwargs.get("multiprocessing_context"),
            "timeout": timeout,
        }


def build_loader(
    workload: Workload, dataset: IndexedDataset, sampler: ResumableSampler, settings: dict[str, Any], *, seed: int
) -> DataLoader:
    """The instrumented DataLoader over ``dataset`` in ``sampler``'s order, its randomness drawn from ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        sampler=sampler,
        collate_fn=workload.collate_fn,
        worker_init_fn=ignore_sigint_in_worker,
        generator=generator,
        drop_last=False,
        name=workload.name,
        **{key: value for key, value in settings.items() if value or key in ("num_workers", "batch_size")},
    )
