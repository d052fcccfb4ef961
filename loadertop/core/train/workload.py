"""Workloads: what to train, and how a user's ``MODULE:CALLABLE`` factory is loaded and checked."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class WorkloadError(ValueError):
    """A workload that cannot be used; the message says what is wrong and what to do."""


@dataclass
class Workload:
    """Everything loadertop needs to train: a map-style dataset, a model, a loss and an optimizer.

    Attributes:
        dataset: a map-style dataset (``__len__`` and ``__getitem__``) yielding ``(input, target)``.
        model: the ``torch.nn.Module`` to train; loadertop moves it to the chosen device.
        loss_fn: ``loss_fn(output, target)`` returning a scalar tensor, called in the training thread.
        optimizer: an optimizer over the model's parameters, or a callable that builds one from
            ``model.parameters()`` (build it that way when the model should move to CUDA first).
        name: shown in the header and in summaries.
        notes: extra facts to show beside the name, e.g. a simulated storage latency.
        collate_fn: passed to the DataLoader when given.
        step_fn: for batches that are not ``(inputs, targets)``: ``step_fn(model, batch)`` gets the batch
            (already on the device) and returns the loss as a scalar tensor, or ``(loss, accuracy)``;
            loadertop zeroes the gradients before, and runs ``backward`` and the optimizer after.
            ``loss_fn`` is then not called (pass any callable).
        num_threads: PyTorch intra-op threads for the training step (``torch.set_num_threads``);
            None leaves PyTorch's default (one per core). On a small CPU box, fewer threads
            leave cores to the DataLoader workers instead of contending with them.
    """

    dataset: Any
    model: nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor] | None
    optimizer: torch.optim.Optimizer | OptimizerFactory
    name: str = "workload"
    notes: tuple[str, ...] = field(default_factory=tuple)
    collate_fn: Callable[[list[Any]], Any] | None = None
    num_threads: int | None = None
    step_fn: Callable[[nn.Module, Any], Any] | None = None

    def validate(self) -> None:
        """Raise WorkloadError naming the first field that cannot work."""
        if isinstance(self.dataset, IterableDataset):
            raise WorkloadError(
                "the dataset is an IterableDataset: loadertop needs a map-style dataset "
                "(__len__ and __getitem__) to resume an epoch across restarts"
            )
        if not (hasattr(self.dataset, "__getitem__") and hasattr(self.dataset, "__len__")):
            raise WorkloadError(
                f"the dataset ({type(self.dataset).__name__}) needs __len__ and __getitem__ (a map-style dataset)"
            )
        try:
            size = len(self.dataset)
        except Exception as exc:  # the user's __len__ may raise anything
            raise WorkloadError(f"len(dataset) raised {type(exc).__name__}: {exc}") from exc
        if size < 1:
            raise WorkloadError("the dataset is empty: it needs at least one sample")
        if not isinstance(self.model, nn.Module):
            raise WorkloadError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise WorkloadError(f"num_threads must be an integer >= 1 or None, got {self.num_threads!r}")
        if self.step_fn is not None and not callable(self.step_fn):
            raise WorkloadError(f"step_fn must be callable, got {type(self.step_fn).__name__}")
        if self.step_fn is None and not callable(self.loss_fn):
            raise WorkloadError(f"loss_fn must be callable, got {type(self.loss_fn).__name__}")
        if not (isinstance(self.optimizer, torch.optim.Optimizer) or callable(self.optimizer)):
            raise WorkloadError(
                "optimizer must be a torch.optim.Optimizer or a callable taking the model's parameters, "
                f"got {type(self.optimizer).__name__}"
            )


class SampleError(RuntimeError):
    """A dataset's ``__getitem__`` raised; the message names the sample index.

    It takes a single message argument so that PyTorch can rebuild it in the
    main process when it was raised inside a worker.
    """

    _INDEX = re.compile(r"dataset raised at sample index (-?\d+)")

    @property
    def sample_index(self) -> int | None:
        """The failing sample's index, parsed from the message (also after a worker re-raise)."""
        return sample_index_of(str(self))


def sample_index_of(message: str) -> int | None:
    """The sample index named by a SampleError message, if any (the last one wins)."""
    found = SampleError._INDEX.findall(message)
    return int(found[-1]) if found else None


class IndexedDataset(Dataset[Any]):
    """Wraps a dataset so that an exception in ``__getitem__`` names the sample index.

    Picklable whenever the wrapped dataset is (workers started with spawn).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:
            stage = getattr(exc, "loadertop_stage", None)  # named by stage timing (loadertop.core.probe.stages)
            where = f" in {stage}" if stage else ""
            raise SampleError(f"dataset raised at sample index {index}{where}: {type(exc).__name__}: {exc}") from exc


def load_workload(spec: str, *, data_dir: str | None = None) -> Workload:
    """Import ``MODULE:CALLABLE``, call it and check what it returns.

    The current directory is put on ``sys.path`` first, as ``python -m`` does, so a
    workload module beside the user's shell works without installing it. A factory
    with a ``data_dir`` parameter receives ``data_dir`` (``--data``) when one is given.

    Raises:
        WorkloadError: with one line naming the problem.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise WorkloadError(f"--workload must look like MODULE:CALLABLE (e.g. mypkg.train:make_workload), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises at import time
        raise WorkloadError(f"cannot import workload module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WorkloadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise WorkloadError(f"{spec} is a {type(target).__name__}, not a callable that returns a Workload")
    kwargs: dict[str, Any] = {}
    if data_dir is not None:
        if not _takes(target, "data_dir"):
            raise WorkloadError(f"--data was given, but {spec} takes no data_dir parameter to receive it")
        kwargs["data_dir"] = data_dir
    try:
        workload = target(**kwargs)
    except WorkloadError:
        raise
    except Exception as exc:
        raise WorkloadError(f"workload factory {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload factory {spec} returned {type(workload).__name__}, expected loadertop.Workload")
    if workload.name == "workload":
        workload.name = spec
    workload.validate()
    return workload


def _takes(target: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_picklable(workload: Workload, config: Any) -> None:
    """Raise WorkloadError when ``spawn``/``forkserver`` workers could not receive the dataset.

    Those workers start a fresh interpreter and get a pickled copy of the dataset (and of
    ``collate_fn``); ``fork`` copies the process instead and needs nothing of this.
    """
    import multiprocessing
    import pickle

    method = config.start_method or multiprocessing.get_start_method(allow_none=True) or "fork"
    if method == "fork":
        return
    for what, obj in (("dataset", workload.dataset), ("collate_fn", workload.collate_fn)):
        if obj is None:
            continue
        try:
            pickle.dumps(obj)
        except Exception as exc:
            raise WorkloadError(
                f"the {what} cannot be sent to '{method}' workers, which need a pickled copy: "
                f"{type(exc).__name__}: {exc}. Define its class at module level and keep no lambdas, open "
                "files, locks or generators on it, or use --start-method fork"
            ) from exc
