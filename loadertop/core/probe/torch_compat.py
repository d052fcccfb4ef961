"""The one place where loadertop relies on or adjusts PyTorch's private DataLoader API.

``install()`` runs when a loadertop loader or trainer starts (never on ``import loadertop``):
it checks that the running torch has what loadertop uses and makes one adjustment. A torch
without them gets one clear message naming the version and what is missing.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.utils.data.dataloader as _dataloader

WORKER_CHECK_INTERVAL_S = 1.0
"""How often a DataLoader waiting for a batch checks that its workers are alive (PyTorch: 5 s).

The SIGCHLD handler that reports a dead worker at once is only installed from the main thread,
and loadertop may train (and a loop may run) in another one: polling each second finds a killed
worker fast. The wait's default is bound when PyTorch defines the method, hence both places."""

# What loadertop uses: (owner, attribute) pairs of torch's private DataLoader API.
_USES = (
    (_dataloader.DataLoader, "_get_iterator"),
    (_dataloader.DataLoader, "_index_sampler"),
    (_dataloader, "_MultiProcessingDataLoaderIter"),
    (_dataloader, "_BaseDataLoaderIter"),
    (torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL"),
)

_installed = False
_lock = threading.Lock()


class IncompatibleTorch(RuntimeError):
    """The running torch lacks part of the DataLoader internals loadertop relies on."""


def missing() -> list[str]:
    """The private names loadertop needs that this torch does not have."""
    absent = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in _USES if not hasattr(owner, name)]
    multi = getattr(_dataloader, "_MultiProcessingDataLoaderIter", None)
    if multi is not None and not hasattr(multi, "_shutdown_workers"):
        absent.append("_MultiProcessingDataLoaderIter._shutdown_workers")
    return absent


def install() -> None:
    """Check this torch once and shorten the worker-liveness poll; raise ``IncompatibleTorch`` if it cannot work."""
    global _installed
    with _lock:
        if _installed:
            return
        absent = missing()
        if absent:
            raise IncompatibleTorch(
                f"loadertop cannot instrument DataLoaders of torch {torch.__version__}: it lacks {', '.join(absent)} "
                "(loadertop is tested with torch 2.4 to 2.14)"
            )
        torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL = WORKER_CHECK_INTERVAL_S
        multi = _dataloader._MultiProcessingDataLoaderIter
        if getattr(multi._try_get_data, "__defaults__", None):
            multi._try_get_data.__defaults__ = (WORKER_CHECK_INTERVAL_S,)
        _installed = True


def shutdown_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (and reap them), not whenever it is collected."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def set_index_stream(iterator: Any, indices: Any) -> None:
    """Make a DataLoader iterator take its next indices (or index batches) from ``indices``.

    Torch's iterator draws them from ``_sampler_iter`` (set from the index sampler in
    ``_BaseDataLoaderIter.__init__`` and ``_reset``); a loader without workers draws one as it
    makes each batch, so its stream can be cut there while it runs.
    """
    if not hasattr(iterator, "_sampler_iter"):
        raise IncompatibleTorch(f"torch {torch.__version__}'s DataLoader iterator has no _sampler_iter to continue")
    iterator._sampler_iter = indices


def base_seed(iterator: Any, default: int) -> int:
    """The base seed a DataLoader iterator gave its workers (``default`` where it has none to tell)."""
    return int(getattr(iterator, "_base_seed", default))


def draw_base_seed(generator: torch.Generator | None) -> int:
    """Draw a workers' base seed from ``generator`` (else torch's global RNG) as ``_BaseDataLoaderIter.__init__``
    does: the one random number a DataLoader's ``iter()`` draws besides its sampler's."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def wait_for_first_batch(iterator: Any, stop: threading.Event, poll_s: float = 0.005) -> bool:
    """Block until a DataLoader iterator's workers have a batch (or a worker's error) waiting for it, without
    taking it; False once ``stop`` is set or a worker has died first (``next()`` then reports it)."""
    data_queue = getattr(iterator, "_data_queue", None)  # the workers' (or the pin-memory thread's) output
    workers = getattr(iterator, "_workers", ())
    if data_queue is None:
        return False
    while not stop.is_set():
        if not data_queue.empty():
            return True
        if not all(worker.is_alive() for worker in workers):
            return False
        stop.wait(poll_s)
    return False


def current_device_index() -> int | None:
    """The calling thread's current accelerator device (where a DataLoader iterator made in this thread
    has its pin-memory thread pin batches), or None where torch has no accelerator available."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        get = getattr(accelerator, "current_device_index", None) or getattr(accelerator, "current_device_idx", None)
        return int(get()) if get is not None and accelerator.is_available() else None
    return int(torch.cuda.current_device()) if torch.cuda.is_available() else None  # torch before 2.6


def set_device_index(index: int) -> None:
    """Make ``index`` the calling thread's current accelerator device (see ``current_device_index``)."""
    accelerator = getattr(torch, "accelerator", None)
    set_index = getattr(accelerator, "set_device_index", None) or getattr(accelerator, "set_device_idx", None)
    if set_index is not None:
        set_index(index)
    else:
        torch.cuda.set_device(index)


def set_batch_size(loader: Any, batch_size: int) -> None:
    """Give a loader that batches by itself a new batch size (torch forbids setting it after ``__init__``)."""
    sampler = torch.utils.data.BatchSampler(loader.sampler, batch_size, loader.drop_last)
    object.__setattr__(loader, "batch_size", batch_size)
    object.__setattr__(loader, "batch_sampler", sampler)


def set_persistent_workers(loader: Any, persistent: bool) -> None:
    """Keep (or stop keeping) a loader's workers across epochs (torch forbids setting it after ``__init__``)."""
    object.__setattr__(loader, "persistent_workers", persistent)


def default_store() -> Any:
    """The default process group's c10d store (torchrun's rendezvous store), or None before
    ``init_process_group`` or where torch.distributed has none (private API, so looked up here)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    return get() if get is not None else None
