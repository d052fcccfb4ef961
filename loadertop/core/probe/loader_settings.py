"""The settings a ``loadertop.DataLoader`` can change while it runs: which, what torch accepts for each, the
values torch refuses at 0 workers (kept aside for when there are workers again), and the request waiting."""

from __future__ import annotations

import threading
from typing import Any

from loadertop.core.probe import torch_compat
from loadertop.core.protocol.config import WORKERS_ONLY

SETTINGS = (
    "num_workers",
    "batch_size",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "multiprocessing_context",
    "timeout",
)
"""What ``DataLoader.reconfigure`` may change (torch's argument names), in the order they are applied."""

KEPT_ASIDE = {key: WORKERS_ONLY[key] for key in ("multiprocessing_context", "timeout")}
"""Of the settings torch refuses at 0 workers (``protocol.config.WORKERS_ONLY``), those the loader keeps aside
itself while it has none, with the value they take meanwhile (the other two it sets to theirs as torch does)."""


def check_setting(loader: Any, key: str, value: Any) -> None:
    """Raise ValueError, in torch's terms, for a setting ``reconfigure`` cannot apply."""

    def whole(minimum: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    if key not in SETTINGS:
        raise ValueError(f"cannot reconfigure {key!r}: a DataLoader's {', '.join(SETTINGS)} can change")
    if key == "num_workers" and not whole(0):
        raise ValueError(f"num_workers must be an integer >= 0, got {value!r}")
    if key == "batch_size":
        if not whole(1):
            raise ValueError(f"batch_size must be an integer >= 1, got {value!r}")
        if loader.batch_size is None:
            raise ValueError("this loader's batch_sampler makes its batches: its batch size cannot change")
    if key == "prefetch_factor" and value is not None and not whole(1):
        raise ValueError(f"prefetch_factor must be an integer >= 1 or None, got {value!r}")
    if key == "timeout" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
        raise ValueError(f"timeout must be a number of seconds >= 0, got {value!r}")
    if key in ("pin_memory", "persistent_workers") and not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    if key == "multiprocessing_context" and value is not None and not isinstance(value, str):
        raise ValueError(f"multiprocessing_context must be a start method's name or None, got {value!r}")


def current_value(loader: Any, key: str) -> Any:
    """A setting's value as ``reconfigure`` takes it (a multiprocessing context by its start method's name)."""
    value = getattr(loader, key)
    if key == "multiprocessing_context" and value is not None and not isinstance(value, str):
        return value.get_start_method()
    return value


class LoaderSettings:
    """A loader's settings as ``reconfigure`` sees them: the changes a request makes, and applying them.

    Args:
        loader: the loader, as constructed (its settings torch refuses at 0 workers are read from it).
    """

    __slots__ = ("with_workers",)

    def __init__(self, loader: Any) -> None:
        self.with_workers = {key: current_value(loader, key) for key in KEPT_ASIDE}
        """The settings of ``KEPT_ASIDE`` in force whenever there are workers (kept here while there are none)."""

    def changes(self, loader: Any, request: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of ``request`` that differ from ``loader``'s (None if none)."""
        with_workers = self.with_workers
        changes = {
            key: value
            for key, value in request.items()
            if (with_workers[key] if key in KEPT_ASIDE else current_value(loader, key)) != value
        }
        return changes or None

    def apply(self, loader: Any, changes: dict[str, Any]) -> None:
        """Set ``changes`` on ``loader`` (between two worker generations)."""
        for key, value in changes.items():
            if key in KEPT_ASIDE:
                self.with_workers[key] = value
        for key in SETTINGS:  # num_workers first: torch checks multiprocessing_context against it
            if key in KEPT_ASIDE:
                value = self.with_workers[key] if loader.num_workers > 0 else KEPT_ASIDE[key]
                if current_value(loader, key) != value:
                    setattr(loader, key, value)
            elif key == "batch_size" and key in changes:
                torch_compat.set_batch_size(loader, changes[key])
            elif key == "persistent_workers" and key in changes:
                torch_compat.set_persistent_workers(loader, changes[key])
            elif key in changes:
                setattr(loader, key, changes[key])
        if loader.num_workers > 0 and loader.prefetch_factor is None:
            loader.prefetch_factor = 2


class PendingRequest:
    """The settings asked for and not yet taken, from any thread: requests merge, the last value of each winning."""

    __slots__ = ("lock", "overlap", "settings")

    def __init__(self) -> None:
        self.settings: dict[str, Any] | None = None
        """The settings asked for (None: nothing waits); the loop's path reads it at every batch."""
        self.overlap: bool | None = None
        """The request's own ``overlap=`` (None: the loader's)."""
        self.lock = threading.Lock()

    def add(self, settings: dict[str, Any], overlap: bool | None) -> None:
        """Merge ``settings`` (and ``overlap``, where given) into what waits."""
        with self.lock:
            self.settings = {**(self.settings or {}), **settings}
            if overlap is not None:
                self.overlap = bool(overlap)

    def take(self) -> tuple[dict[str, Any] | None, bool | None]:
        """What waits (settings, overlap), cleared."""
        with self.lock:
            settings, self.settings = self.settings, None
            overlap, self.overlap = self.overlap, None
        return settings, overlap
