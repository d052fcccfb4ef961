"""loadertop: top for your PyTorch DataLoader."""

from loadertop.core.config import ConfigError, LoaderConfig
from loadertop.core.engine import Trainer, TrainerState
from loadertop.core.probe.loader import DataLoader
from loadertop.core.store import MetricsStore
from loadertop.core.workload import Workload, WorkloadError

__all__ = [
    "ConfigError",
    "DataLoader",
    "LoaderConfig",
    "MetricsStore",
    "Trainer",
    "TrainerState",
    "Workload",
    "WorkloadError",
]
__version__ = "0.1.0"
