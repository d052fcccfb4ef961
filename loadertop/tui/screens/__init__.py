"""Modal screens: help, the loader settings form and the sweep result."""

from loadertop.tui.screens.config_form import ConfigForm
from loadertop.tui.screens.help import HelpScreen
from loadertop.tui.screens.sweep_result import SweepResult

__all__ = ["ConfigForm", "HelpScreen", "SweepResult"]
