"""What a ``loadertop.DataLoader`` reports: each batch as the loop received it, and where the loader stands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

_Tensor = torch.Tensor
new_record = tuple.__new__
"""``new_record(LoaderBatch, fields)``: a LoaderBatch made without its Python-level ``__new__`` (on the loop's path)."""


class LoaderBatch(NamedTuple):
    """One batch as the loop received it (a named tuple: built on the loop's path, it must be cheap).

    Attributes:
        loader: the loader's name.
        epoch: 1-based: how many times the loop has iterated the loader.
        batch: 1-based position of the batch within the epoch.
        num_workers: workers of the generation that delivered it.
        samples: samples in the batch (the length of its first tensor).
        load_s: seconds blocked in ``next()`` waiting for the batch (a switch's time not included).
        step_s: seconds from the previous batch's ``next()`` returning to this ``next()`` call
            (the loop's own work with the previous batch); None for an epoch's first batch.
        time: wall-clock time (UNIX seconds) when the batch was handed to the loop.
        switch_s: seconds this ``next()`` spent switching workers before waiting for the batch
            (0 if none); ``step_s + switch_s + load_s`` is the whole time since the previous batch.
            An overlapped switch spends it twice: at the request (starting the new workers) and
            at the handover (retiring the old ones).
        generation: the configuration that delivered it, numbered as ``LoaderStatus.switches``
            counts them (0: the loader's first settings); it changes where a switch hands over.
    """

    loader: str
    epoch: int
    batch: int
    num_workers: int
    samples: int
    load_s: float
    step_s: float | None
    time: float
    switch_s: float = 0.0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class LoaderStatus:
    """Where a loader stands.

    Attributes:
        name: its name (``name=`` or its creation site ``file:line``).
        num_workers: the workers of the generation delivering the batches (or of the next ``iter()``).
        pending: a requested worker count not yet delivering: during an overlapped switch, the
            starting generation's until the handover.
        deferred: True when the pending change waits for the next epoch (IterableDataset, in_order=False).
        epoch: iterations started so far.
        switches: configuration changes handed over so far.
        worker_pids: the worker processes of the generation delivering, then (during an overlapped
            switch) those of the one starting: every worker process the loader has now.
        starting_pids: which of ``worker_pids`` belong to the starting generation (empty but
            during an overlapped switch).
    """

    name: str
    num_workers: int
    pending: int | None
    deferred: bool
    epoch: int
    switches: int
    worker_pids: tuple[int, ...]
    starting_pids: tuple[int, ...] = ()


def batch_len(value: Any) -> int:
    """Samples in a batch: the length of its first tensor (in a tuple, list or dict), else 1."""
    kind = type(value)
    if (kind is list or kind is tuple) and value:  # the common (inputs, targets) batch, without the general walk
        first = value[0]
        if type(first) is _Tensor:
            shape = first.shape
            return shape[0] if shape else 1
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.ndim else 1
    if isinstance(value, (tuple, list)) and value:
        return batch_len(value[0])
    if isinstance(value, dict) and value:
        return batch_len(next(iter(value.values())))
    return 1
