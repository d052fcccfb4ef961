"""Modal screens: help and the loader settings form."""

from loadertop.tui.screens.config_form import ConfigForm
from loadertop.tui.screens.help import HelpScreen

__all__ = ["ConfigForm", "HelpScreen"]
