"""loadertop: top for your PyTorch DataLoader.

The names below are imported on first use: ``import loadertop`` itself loads no torch, so the
launcher's bootstrap in every process of a script, the protocol and the TUI stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadertop.core.measure.store import MetricsStore as MetricsStore
    from loadertop.core.probe.launched import log as log
    from loadertop.core.probe.loader import DataLoader as DataLoader
    from loadertop.core.protocol.config import ConfigError as ConfigError
    from loadertop.core.protocol.config import LoaderConfig as LoaderConfig
    from loadertop.core.protocol.status import TrainerState as TrainerState
    from loadertop.core.train.engine import Trainer as Trainer
    from loadertop.core.train.workload import Workload as Workload
    from loadertop.core.train.workload import WorkloadError as WorkloadError

_WHERE = {
    "ConfigError": "loadertop.core.protocol.config",
    "DataLoader": "loadertop.core.probe.loader",
    "LoaderConfig": "loadertop.core.protocol.config",
    "MetricsStore": "loadertop.core.measure.store",
    "Trainer": "loadertop.core.train.engine",
    "TrainerState": "loadertop.core.protocol.status",
    "Workload": "loadertop.core.train.workload",
    "WorkloadError": "loadertop.core.train.workload",
    "log": "loadertop.core.probe.launched",
}

__all__ = [
    "ConfigError",
    "DataLoader",
    "LoaderConfig",
    "MetricsStore",
    "Trainer",
    "TrainerState",
    "Workload",
    "WorkloadError",
    "log",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'loadertop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
