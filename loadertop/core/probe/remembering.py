"""A run's memory (``loadertop.core.measure.history``) beside its tuner: where a tuned loader starts, what is
written at each settle and at the end of the run.

``RunMemory`` is one run's: its id in the store and the machine's signature. ``remember(tuner, loader)`` looks
up the loader's latest settle on this machine and tells the tuner to start there (``AutoTuner.start_at``) unless
the run was told to ``forget``; ``listener(loader, tuner)`` writes each settle as it comes; ``finished`` writes
the comparison rows and the stage figures when the run ends. Nothing here stops a run: a store that cannot be
written says so once (``say``) and is left alone.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loadertop.core.measure.history import (
    History,
    LoaderSignature,
    MachineSignature,
    loader_signature,
    machine_signature,
)
from loadertop.core.protocol.messages import ChangeKind

if TYPE_CHECKING:
    from loadertop.core.policy.autotune import AutoTuner, Change


def gpu_names() -> tuple[str, ...]:
    """The NVIDIA GPUs' names through NVML (fork-safe, unlike CUDA's), none where NVML is absent."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to name
        return ()
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return tuple(names)
    except Exception:  # noqa: BLE001
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001,S110 - shutting down what may not have started
            pass


def script_loader(program: str, loader: Any, rank: int | None) -> LoaderSignature:
    """A script's loader's signature: its name (and rank, under torchrun), dataset and batch size."""
    size = loader.batch_size if loader.batch_size is not None else getattr(loader.batch_sampler, "batch_size", None)
    name = loader.name if rank is None else f"{loader.name} rank {rank}"
    return loader_signature(program, name, loader.dataset, size)


def script_memory(*, forget: bool, say: Callable[[str], None] | None, started: float | None = None) -> RunMemory:
    """The run memory of this script's process (its program: the script's path, absolute)."""
    import sys

    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else "<python -c>"
    return RunMemory(program, "script", this_machine(None), forget=forget, say=say, started=started)


def this_machine(start_method: str | None) -> MachineSignature:
    """This machine's signature, for loaders whose workers start by ``start_method`` (None: the default)."""
    import torch

    method = start_method or multiprocessing.get_start_method(allow_none=False)
    return machine_signature(gpus=gpu_names(), start_method=method, torch_version=torch.__version__.split("+")[0])


class RunMemory:
    """One run in the store (see the module's docstring).

    Args:
        program: the script's path or the workload (``built-in``, ``module:callable``).
        kind: ``built-in``, ``workload`` or ``script``.
        machine: this machine's signature.
        forget: do not start from what the store remembers (it is still written).
        say: told each line on the store as it comes (nothing remembered, a store moved aside); None: they
            wait in ``untold`` (a monitor has the terminal: they are printed once it closes).
        history: the store (default: the user's, ``History()``).
        started: when the run began (default: now).
    """

    def __init__(
        self,
        program: str,
        kind: str,
        machine: MachineSignature,
        *,
        forget: bool = False,
        say: Callable[[str], None] | None = None,
        history: History | None = None,
        started: float | None = None,
    ) -> None:
        self.say = say
        self.untold: list[str] = []
        self.history = history if history is not None else History(on_problem=self._tell)
        self.program = program
        self.machine = machine
        self.forget = forget
        self.run_id = self.history.begin_run(program, kind, machine, started=started)

    def _tell(self, line: str) -> None:
        if self.say is not None:
            self.say(line)
        else:
            self.untold.append(line)

    def remember(self, tuner: AutoTuner, loader: LoaderSignature) -> None:
        """Tell ``tuner`` to start where ``loader`` settled last on this machine (unless told to forget)."""
        if self.forget:
            return
        found = self.history.remembered(loader, self.machine)
        if found is None:
            return
        tuner.start_at(found.workers, found.samples_per_s, found.reason())

    def listener(self, loader: LoaderSignature, tuner: AutoTuner) -> Callable[[Change], None]:
        """A change listener writing each settle of ``tuner`` (on ``loader``)."""
        return lambda change: self.changed(loader, tuner, change)

    def changed(self, loader: LoaderSignature, tuner: AutoTuner, change: Change) -> None:
        """``tuner`` (on ``loader``) made ``change``: a settle is written now."""
        if change.kind != ChangeKind.SETTLE:
            return
        measured = tuner.settled_samples_per_s
        if measured is not None:
            self.history.settled(self.run_id, loader, self.machine, change.to_workers, measured)

    def finished(
        self, loaders: Sequence[tuple[LoaderSignature, Sequence[dict[str, Any]], Sequence[dict[str, Any]]]]
    ) -> None:
        """The run ended: each loader's rows (``report_json``'s) and stage figures (``policy.stages.to_wire``)."""
        self.history.finished(self.run_id, loaders, self.machine)
