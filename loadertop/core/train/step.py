"""One training step: the device, the model and optimizer set up once, and forward, backward, optimizer step."""

from __future__ import annotations

import time
from typing import Any

import torch

from loadertop.core.probe.loader import batch_len
from loadertop.core.probe.stages import BatchTimer
from loadertop.core.train.workload import Workload


def resolve_device(device: str) -> torch.device:
    """Map ``auto|cpu|cuda[:N]`` to a torch device; ``auto`` picks CUDA when available.

    Raises:
        ValueError: for an unknown name or CUDA asked for where there is none.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto")
        return torch.device(device)
    raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")


def prepare_model(workload: Workload, device: torch.device, seed: int) -> torch.optim.Optimizer:
    """Seed torch, move the workload's model to ``device`` and make its optimizer (once a run, not at restarts).

    Raises:
        TypeError: when the workload's optimizer factory returns something else than an optimizer.
    """
    if workload.num_threads is not None:
        torch.set_num_threads(workload.num_threads)
    torch.manual_seed(seed)
    model = workload.model.to(device)
    optimizer = workload.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(model.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"the workload's optimizer factory returned {type(optimizer).__name__}, "
                "expected a torch.optim.Optimizer"
            )
    return optimizer


def train_step(
    workload: Workload,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    device: torch.device,
    *,
    pin_memory: bool,
    copy_timer: BatchTimer | None = None,
) -> tuple[float, float | None, int]:
    """Forward, backward and optimizer step; synchronised so the clock includes GPU work.

    ``copy_timer`` (on CUDA) gets the copy of the batch to the device: its GPU time from CUDA events around it,
    read after the step's synchronise (no wait added), and the thread's CPU while it was issued.

    Returns:
        The loss, the accuracy (None when the workload has none) and the samples in the batch.
    """
    non_blocking = pin_memory and device.type == "cuda"
    copied: tuple[Any, Any, float] | None = None
    if copy_timer is not None and device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cpu0 = time.thread_time()
        start.record()
        batch = to_device(batch, device, non_blocking)
        end.record()
        copied = (start, end, time.thread_time() - cpu0)
    else:
        batch = to_device(batch, device, non_blocking)
    model = workload.model
    model.train()
    optimizer.zero_grad(set_to_none=True)
    if workload.step_fn is not None:
        loss, accuracy, samples = step_fn_loss(workload, model, batch)
    else:
        loss, accuracy, samples = pair_loss(workload, model, batch)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if copied is not None and copy_timer is not None:
        start, end, cpu_s = copied
        copy_timer.add(start.elapsed_time(end) / 1000.0, cpu_s)  # elapsed_time: milliseconds
    if isinstance(accuracy, torch.Tensor):
        accuracy = accuracy.item()
    return float(loss.item()), (float(accuracy) if accuracy is not None else None), samples


def pair_loss(workload: Workload, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any, int]:
    """An ``(inputs, targets)`` batch: ``loss_fn(model(inputs), targets)``, and accuracy for class labels."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"a batch must be (inputs, targets), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    inputs, targets = batch
    output = model(inputs)
    loss = workload.loss_fn(output, targets)
    accuracy: torch.Tensor | None = None
    if (
        isinstance(output, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and output.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
    ):
        with torch.no_grad():
            accuracy = (output.argmax(dim=1) == targets).float().mean()
    return loss, accuracy, batch_len(targets if isinstance(targets, torch.Tensor) else inputs)


def step_fn_loss(workload: Workload, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any, int]:
    """Any other batch: the workload's ``step_fn(model, batch)`` gives the loss, or ``(loss, accuracy)``."""
    assert workload.step_fn is not None
    result = workload.step_fn(model, batch)
    loss, accuracy = result if isinstance(result, tuple) else (result, None)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(
            f"step_fn must return the loss as a scalar tensor (or (loss, accuracy)), got {type(loss).__name__}"
        )
    return loss, accuracy, batch_len(batch)


def to_device(value: Any, device: torch.device, non_blocking: bool) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    return value
