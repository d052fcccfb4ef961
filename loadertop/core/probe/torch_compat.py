"""The one place where loadertop relies on or adjusts PyTorch's private DataLoader API.

Every private torch name loadertop reads, calls, sets or overrides is listed in ``_USES`` and reached
through a function here (``persistent_iterator``, ``index_sampler``, ``worker_processes``, ``base_seed``...):
no other module of loadertop touches one (tests/unit/probe/test_torch_compat.py checks the source).

``install()`` runs when a loadertop loader or trainer starts (never on ``import loadertop``): it checks
that the running torch has what ``_USES`` lists on its classes and modules, and makes one adjustment.
What torch sets only on instances (an iterator's ``_base_seed``) is checked where it is first read. A
torch without one gets ``IncompatibleTorch`` with one line naming it and the version, never a fallback.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils.data.dataloader as _dataloader

WORKER_CHECK_INTERVAL_S = 1.0
"""How often a DataLoader waiting for a batch checks that its workers are alive (PyTorch: 5 s).

The SIGCHLD handler that reports a dead worker at once is only installed from the main thread,
and loadertop may train (and a loop may run) in another one: polling each second finds a killed
worker fast. The wait's default is bound when PyTorch defines the method, hence both places."""

SUPPORTED_TORCH = "torch>=2.4,<2.15"
"""The torch versions loadertop is tested with, as a requirement (what the message tells a user to install)."""

ON_CLASS = "on the class"
"""A ``Use`` of a module's or a class's attribute: ``install()`` checks it."""

ON_INSTANCE = "on instances"
"""A ``Use`` of an attribute torch's ``__init__`` sets: checked where loadertop first reads it."""

OVERRIDDEN = "overridden"
"""A ``Use`` of a method or property loadertop's ``DataLoader`` overrides: ``install()`` checks that torch has it."""


class Use(NamedTuple):
    """One private name of torch's that loadertop relies on."""

    owner: str  # the module or class that has it, by its dotted path
    name: str
    kind: str  # ON_CLASS, ON_INSTANCE or OVERRIDDEN
    why: str

    @property
    def path(self) -> str:
        """Its full dotted name (what a message names)."""
        return f"{self.owner}.{self.name}"


_DATALOADER = "torch.utils.data.dataloader.DataLoader"
_BASE_ITER = "torch.utils.data.dataloader._BaseDataLoaderIter"
_MULTI_ITER = "torch.utils.data.dataloader._MultiProcessingDataLoaderIter"
_SINGLE_ITER = "torch.utils.data.dataloader._SingleProcessDataLoaderIter"
_FETCH = "torch.utils.data._utils.fetch"
_FETCHER = f"{_FETCH}._BaseDatasetFetcher"
_PIN = "torch.utils.data._utils.pin_memory"

_USES: tuple[Use, ...] = (
    Use("torch.utils.data.dataloader", "_BaseDataLoaderIter", ON_CLASS, "the iterators' base class"),
    Use("torch.utils.data.dataloader", "_MultiProcessingDataLoaderIter", ON_CLASS, "the iterator with workers"),
    Use(_DATALOADER, "_get_iterator", ON_CLASS, "a switch makes a new generation's iterator (no persistent reuse)"),
    Use(_DATALOADER, "_index_sampler", OVERRIDDEN, "wrapped to follow the indices handed to the workers"),
    Use(_DATALOADER, "check_worker_number_rationality", OVERRIDDEN, "its too-many-workers warning counts cgroups"),
    Use(_DATALOADER, "_iterator", ON_INSTANCE, "a persistent loader's iterator: retired or replaced at a switch"),
    Use(_BASE_ITER, "_base_seed", ON_INSTANCE, "the workers' base seed: a new generation's is seeded from it"),
    Use(_BASE_ITER, "_sampler_iter", ON_INSTANCE, "without workers, the index stream an overlapped switch cuts"),
    Use(_MULTI_ITER, "_workers", ON_INSTANCE, "the worker processes: pids, liveness, what killed one"),
    Use(_MULTI_ITER, "_data_queue", ON_INSTANCE, "a new generation's first batch is waiting (its start-up)"),
    Use(_MULTI_ITER, "_shutdown_workers", ON_CLASS, "a generation's workers stopped and reaped now"),
    Use(_MULTI_ITER, "_try_get_data", ON_CLASS, "its default worker-liveness poll shortened to 1 s"),
    Use("torch.utils.data._utils", "MP_STATUS_CHECK_INTERVAL", ON_CLASS, "the same poll's interval"),
    Use(_FETCH, "_MapDatasetFetcher", ON_CLASS, "a worker's map-style fetches, timed by stage (stages.py)"),
    Use(f"{_FETCH}._MapDatasetFetcher", "fetch", ON_CLASS, "replaced in a worker by the same fetch, timed"),
    Use(_SINGLE_ITER, "_dataset_fetcher", ON_INSTANCE, "without workers, the fetcher wrapped to time the stages"),
    Use(_FETCHER, "auto_collation", ON_INSTANCE, "a timed fetch batches as torch's does"),
    Use(_PIN, "pin_memory", ON_CLASS, "pinning a batch (the pin-memory thread's and a 0-worker loop's), timed"),
    Use(_BASE_ITER, "_pin_memory", ON_INSTANCE, "whether an iterator pins its batches (an accelerator is present)"),
    Use(_MULTI_ITER, "_pin_memory_thread", ON_INSTANCE, "the thread that pins a worker generation's batches"),
    Use("torch.distributed.distributed_c10d", "_get_default_store", ON_CLASS, "torchrun's store, to reach other ranks"),
)
"""What loadertop uses of torch's private API: everything, each once (checked by
tests/unit/probe/test_torch_compat.py)."""

_USE = {use.name: use for use in _USES}

_installed = False
_lock = threading.Lock()


class IncompatibleTorch(RuntimeError):
    """The running torch lacks part of the DataLoader internals loadertop relies on."""


def incompatible(*paths: str) -> IncompatibleTorch:
    """The error for a torch without ``paths`` (full dotted names), in one line naming them and its version."""
    return IncompatibleTorch(
        f"loadertop needs {', '.join(paths)}, which torch {torch.__version__} does not have: use {SUPPORTED_TORCH}"
    )


def _applies(use: Use) -> bool:
    """Whether this torch should have ``use`` (torch.distributed's only where torch is built with it)."""
    return not use.owner.startswith("torch.distributed.") or torch.distributed.is_available()


def _resolve(dotted: str) -> Any:
    """The module or class named ``dotted`` (None where this torch has none)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
            if found is None:
                return None
        return found
    return None


def missing() -> list[str]:
    """The private names (full dotted) loadertop needs on torch's modules and classes that this torch lacks."""
    absent = []
    for use in _USES:
        if use.kind == ON_INSTANCE or not _applies(use):
            continue
        owner = _resolve(use.owner)
        if owner is None or not hasattr(owner, use.name):
            absent.append(use.path)
    return absent


def install() -> None:
    """Check this torch once and shorten the worker-liveness poll; raise ``IncompatibleTorch`` if it cannot work."""
    global _installed
    with _lock:
        if _installed:
            return
        absent = missing()
        if absent:
            raise incompatible(*absent)
        torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL = WORKER_CHECK_INTERVAL_S
        multi = _dataloader._MultiProcessingDataLoaderIter
        if getattr(multi._try_get_data, "__defaults__", None):
            multi._try_get_data.__defaults__ = (WORKER_CHECK_INTERVAL_S,)
        _installed = True


def _read(obj: Any, name: str) -> Any:
    """``obj``'s attribute ``name`` (one of ``_USES``), or ``IncompatibleTorch`` naming it where torch set none."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise incompatible(_USE[name].path) from None


# ------------------------------------------------------------------ the loader


def new_iterator(loader: Any) -> Any:
    """A new torch iterator for ``loader``'s current settings (``__iter__`` would reuse a persistent one)."""
    return loader._get_iterator()


def index_sampler(view: Any) -> Any:
    """Torch's index sampler (the sampler, or the batch sampler where the loader batches) of ``view``: a
    loader, or ``super()`` in a subclass whose own ``_index_sampler`` wraps torch's."""
    return view._index_sampler


def persistent_iterator(loader: Any) -> Any:
    """The iterator a persistent loader keeps across epochs (None before its first ``iter()``, or once retired)."""
    return _read(loader, "_iterator")


def set_persistent_iterator(loader: Any, iterator: Any) -> None:
    """Make ``iterator`` the one the loader's next ``iter()`` goes on with (None: the next one makes a new one)."""
    _read(loader, "_iterator")  # a torch whose loader keeps none would ignore it: fail instead
    loader._iterator = iterator


# ---------------------------------------------------------------- its iterators


def worker_processes(iterator: Any) -> tuple[Any, ...]:
    """A DataLoader iterator's worker processes (``multiprocessing`` processes; () for one without workers).

    ``iterator`` is torch's, or one that passes torch's attributes on (loadertop's, for the generation delivering).
    """
    try:
        return tuple(iterator._workers)
    except AttributeError:
        if isinstance(iterator, _dataloader._MultiProcessingDataLoaderIter):
            raise incompatible(_USE["_workers"].path) from None
        return ()  # no workers: torch's single-process iterator (or none yet)


def shutdown_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (and reap them), not whenever it is collected.

    An iterator without workers has nothing to stop; loadertop's own stops every generation's."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def set_index_stream(iterator: Any, indices: Any) -> None:
    """Make a DataLoader iterator take its next indices (or index batches) from ``indices``.

    Torch's iterator draws them from ``_sampler_iter`` (set from the index sampler in
    ``_BaseDataLoaderIter.__init__`` and ``_reset``); a loader without workers draws one as it
    makes each batch, so its stream can be cut there while it runs.
    """
    _read(iterator, "_sampler_iter")
    iterator._sampler_iter = indices


def base_seed(iterator: Any) -> int:
    """The base seed a torch DataLoader iterator gave (or would give) its workers."""
    return int(_read(iterator, "_base_seed"))


def draw_base_seed(generator: torch.Generator | None) -> int:
    """Draw a workers' base seed from ``generator`` (else torch's global RNG) as ``_BaseDataLoaderIter.__init__``
    does: the one random number a DataLoader's ``iter()`` draws besides its sampler's."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def wait_for_first_batch(iterator: Any, stop: threading.Event, poll_s: float = 0.005) -> bool:
    """Block until a DataLoader iterator's workers have a batch (or a worker's error) waiting for it, without
    taking it; False once ``stop`` is set or a worker has died first (``next()`` then reports it)."""
    if not isinstance(iterator, _dataloader._MultiProcessingDataLoaderIter):
        return False  # no workers: a batch is made in next()
    data_queue = _read(iterator, "_data_queue")  # the workers' (or the pin-memory thread's) output
    workers = worker_processes(iterator)
    while not stop.is_set():
        if not data_queue.empty():
            return True
        if not all(worker.is_alive() for worker in workers):
            return False
        stop.wait(poll_s)
    return False


# ---------------------------------------------------------------- its fetchers (stage timing)


def fetch_parts(fetcher: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any], bool]:
    """``(get, collate_fn, single)``: what torch's ``_MapDatasetFetcher.fetch(index)`` does (the same since torch
    2.0) is ``collate_fn(get(index))``, found once for ``fetcher``'s fetches: ``get(index)`` makes a fetch's samples
    as torch does, ``collate_fn`` batches them; ``single``: a fetch is one sample."""
    dataset = fetcher.dataset
    if _read(fetcher, "auto_collation"):
        if hasattr(dataset, "__getitems__") and dataset.__getitems__:
            return dataset.__getitems__, fetcher.collate_fn, False
        return (lambda indices: [dataset[i] for i in indices]), fetcher.collate_fn, False
    return (lambda i: dataset[i]), fetcher.collate_fn, True


def time_map_fetches(timed: Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]) -> None:
    """In this process (a worker), make every map-style fetcher's ``fetch`` ``timed(torch's fetch)``, once."""
    import torch.utils.data._utils.fetch as fetch_module

    fetcher = fetch_module._MapDatasetFetcher
    if not getattr(fetcher.fetch, "__loadertop_timed__", False):
        replaced = timed(fetcher.fetch)
        replaced.__loadertop_timed__ = True  # type: ignore[attr-defined]
        fetcher.fetch = replaced  # type: ignore[method-assign]


class _WrappedFetcher:
    """A single-process iterator's fetcher whose ``fetch(index)`` is ``timed(index)``; all else torch's."""

    def __init__(self, stock: Any, timed: Callable[[Any], Any]) -> None:
        self._stock = stock
        self.fetch = timed  # the loop's path: one call to ``timed``

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stock, name)


def wrap_fetcher(iterator: Any, timed: Callable[[Any], Callable[[Any], Any]]) -> None:
    """Make a 0-worker DataLoader iterator fetch through ``timed(torch's fetcher)``: a function of the index."""
    stock = _read(iterator, "_dataset_fetcher")
    iterator._dataset_fetcher = _WrappedFetcher(stock, timed(stock))


def time_pinning(timed: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """In this process, make torch's ``pin_memory(data, device)`` (what the pin-memory thread and a 0-worker
    iterator call, and what it calls for each part of a batch) ``timed(torch's)``, once."""
    import torch.utils.data._utils.pin_memory as pin_module

    if not getattr(pin_module.pin_memory, "__loadertop_timed__", False):
        replaced = timed(pin_module.pin_memory)
        replaced.__loadertop_timed__ = True  # type: ignore[attr-defined]
        pin_module.pin_memory = replaced


def pin_thread(iterator: Any) -> threading.Thread | None:
    """The thread that pins ``iterator``'s batches: its pin-memory thread with workers, None where it pins none
    (no accelerator, ``pin_memory`` off) or pins in the loop's thread (0 workers)."""
    if not _read(iterator, "_pin_memory"):
        return None
    if isinstance(iterator, _dataloader._MultiProcessingDataLoaderIter):
        thread = _read(iterator, "_pin_memory_thread")
        return thread if isinstance(thread, threading.Thread) else None
    return None


def pins(iterator: Any) -> bool:
    """Whether ``iterator`` pins its batches."""
    return bool(_read(iterator, "_pin_memory"))


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
    ``init_process_group`` or where torch is built without torch.distributed."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return _read(dist.distributed_c10d, "_get_default_store")()
