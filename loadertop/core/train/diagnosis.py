"""What went wrong, in the user's words: a worker that died (and likely why), a diverged loss, a dataset's fault."""

from __future__ import annotations

import re
import signal
import time
import traceback
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.probe.stages import STAGE_NOTE
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.status import TrainerError
from loadertop.core.train.workload import SampleError, WorkloadError, sample_index_of

SIGNAL_CAUSES = {
    signal.SIGKILL: "likely the kernel's out-of-memory killer (see dmesg); fewer workers or smaller batches "
    "need less memory",
    signal.SIGBUS: "likely /dev/shm is full: workers hand batches over through it (in Docker raise --shm-size; "
    "or lower the batch size or prefetch_factor)",
    signal.SIGSEGV: "a crash in native code the dataset called",
    signal.SIGTERM: "stopped from outside loadertop",
}
"""The likely cause of a worker's death by each signal, as the error names it."""


class WorkerDied(RuntimeError):
    """One or more DataLoader workers ended while the loader ran; the message says which and why."""

    def __init__(self, dead: list[tuple[int, int, int | None]]) -> None:
        parts = []
        for worker_id, pid, code in dead:
            if code is not None and code < 0:
                try:
                    sig = signal.Signals(-code)
                    name, cause = sig.name, SIGNAL_CAUSES.get(sig)
                except ValueError:
                    name, cause = f"signal {-code}", None
                parts.append(
                    f"DataLoader worker {worker_id} (pid {pid}) was killed by {name}" + (f": {cause}" if cause else "")
                )
            else:
                parts.append(f"DataLoader worker {worker_id} (pid {pid}) exited with code {code}")
        super().__init__("; ".join(parts) or "a DataLoader worker exited unexpectedly")


class NonFiniteLoss(ArithmeticError):
    """The loss became NaN or infinite (the run stops unless told to go on)."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"the loss is {loss} at step {step}: training diverged (a lower learning rate, gradient "
            "clipping or a data check may help); --on-nan continue keeps going"
        )
        self.step = step


def dead_workers(iterator: Any) -> list[tuple[int, int, int | None]]:
    """(worker id, pid, exit code) of the iterator's workers that are no longer alive."""
    dead = []
    for worker_id, process in enumerate(torch_compat.worker_processes(iterator)):
        try:
            if not process.is_alive():
                dead.append((worker_id, process.pid, process.exitcode))
        except (AssertionError, ValueError):  # a process object already closed
            continue
    return dead


def worker_death(iterator: Any, exc: BaseException, grace_s: float = 1.0) -> WorkerDied | None:
    """The death of a worker behind ``exc``, or None when every worker is alive.

    A worker killed while it hands a batch over shows up in the main process as whatever
    the transfer hit: PyTorch's "exited unexpectedly", or a ConnectionResetError or
    EOFError while the batch's shared memory handle is received. The dead process may not
    be reaped yet at that moment, so for those errors its exit is waited for briefly.
    """
    if not torch_compat.worker_processes(iterator):
        return None
    says_exited = isinstance(exc, RuntimeError) and "exited unexpectedly" in str(exc)
    deadline = time.monotonic() + (grace_s if says_exited or isinstance(exc, (OSError, EOFError)) else 0.0)
    while True:
        dead = dead_workers(iterator)
        if dead:
            return WorkerDied(dead)
        if time.monotonic() >= deadline:
            return WorkerDied([]) if says_exited else None
        time.sleep(0.02)


def describe_error(
    exc: BaseException, *, step: int, prepared: bool, config: LoaderConfig, stall_timeout_s: float
) -> TrainerError:
    """Why the run failed, as its ``TrainerError``: the kind of fault, one line for the user, and the traceback.

    Args:
        exc: what ended the training thread.
        step: batches trained when it came.
        prepared: whether the model and optimizer were set up (a fault before is the workload's setup).
        config: the running loader configuration.
        stall_timeout_s: the trainer's timeout for configurations that set none (a timeout names it).
    """
    detail = "".join(traceback.format_exception(exc))
    text = str(exc)
    if isinstance(exc, SampleError) or sample_index_of(text) is not None:
        index = sample_index_of(text)
        # A worker re-raise carries the worker's traceback; its last line is the original error, but for
        # the note stage timing adds (``loadertop.core.probe.stages``).
        lines = [line for line in text.strip().splitlines() if not line.startswith(STAGE_NOTE)]
        original = lines[-1] if lines else type(exc).__name__
        original = original.split("SampleError: ", 1)[-1]
        named = re.match(r"^dataset raised at sample index -?\d+(?: in ([^:]+))?: ", original)
        stage = named.group(1) if named else getattr(exc, "loadertop_stage", None)
        if named:
            original = original[named.end() :]
        return TrainerError("dataset", original, index, step, detail, stage)
    if isinstance(exc, WorkerDied):
        return TrainerError("worker", str(exc), None, step, detail)
    if isinstance(exc, RuntimeError) and "DataLoader worker" in text and "exited unexpectedly" in text:
        return TrainerError("worker", text.splitlines()[0], None, step, detail)
    if isinstance(exc, NonFiniteLoss):
        return TrainerError("nan", str(exc), None, exc.step - 1, detail)
    if isinstance(exc, RuntimeError) and "DataLoader timed out" in text:
        limit = config.timeout_s or stall_timeout_s
        return TrainerError(
            "timeout",
            f"no batch within the {limit:g} s timeout ({config.describe()}): a worker hangs "
            "or loads far slower than that (--timeout sets the limit)",
            None,
            step,
            detail,
        )
    if isinstance(exc, WorkloadError):
        return TrainerError("setup", str(exc), None, step, detail)
    kind = "setup" if step == 0 and not prepared else "step"
    first_line = text.splitlines()[0] if text else ""
    return TrainerError(kind, f"{type(exc).__name__}: {first_line}".rstrip(": "), None, step, detail)
