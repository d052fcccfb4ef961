"""The monitor's panels, one widget a file; each draws a ``SessionView`` and nothing else."""

from loadertop.tui.widgets.autotune import AutotunePanel
from loadertop.tui.widgets.base import SystemPanel, ViewWidget
from loadertop.tui.widgets.comparison import ComparisonTable
from loadertop.tui.widgets.cores import CoreMeters
from loadertop.tui.widgets.error_panel import ErrorPanel
from loadertop.tui.widgets.gpu import GpuPanel
from loadertop.tui.widgets.header import RunHeader
from loadertop.tui.widgets.load_compute import LoadComputePanel
from loadertop.tui.widgets.log_panel import LogPanel
from loadertop.tui.widgets.loss_chart import LossChart
from loadertop.tui.widgets.pending import PendingBar
from loadertop.tui.widgets.ranks import RanksPanel
from loadertop.tui.widgets.stages import StagesPanel
from loadertop.tui.widgets.workers import WorkersPanel

__all__ = [
    "AutotunePanel",
    "ComparisonTable",
    "CoreMeters",
    "ErrorPanel",
    "GpuPanel",
    "LoadComputePanel",
    "LogPanel",
    "LossChart",
    "PendingBar",
    "RanksPanel",
    "RunHeader",
    "StagesPanel",
    "SystemPanel",
    "ViewWidget",
    "WorkersPanel",
]
