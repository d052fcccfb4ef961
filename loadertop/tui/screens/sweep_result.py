"""The end of a sweep: the recommendation, the warnings, and an offer to train at the recommended count."""

from __future__ import annotations

import textwrap
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from loadertop.core.policy.advice import Advice
from loadertop.core.protocol.config import LoaderConfig


class SweepResult(ModalScreen[bool]):
    """Dismissed with True to continue at the recommended configuration (Enter), False to keep the current (Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "keep", "keep", tooltip="Keep training at the current count"),
    ]

    def __init__(self, advice: Advice, recommended: LoaderConfig, current: LoaderConfig) -> None:
        super().__init__()
        self.advice = advice
        self.recommended = recommended
        self.current = current

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Recommended: ", "bold")
        text.append("\n".join(textwrap.wrap(self.advice.reason, 84)) + "\n")
        for warning in self.advice.warnings:
            lines = textwrap.wrap(warning, 82)
            text.append("\n! ", "bold red")
            text.append("\n  ".join(lines))
        text.append("\n\nThe table holds every count measured. ", "dim")
        text.append(f"Training now runs with {self.current.describe()}.", "dim")
        with Vertical(classes="dialog") as box:
            box.border_title = "sweep done"
            yield Static(text, id="sweep-advice")
            with Horizontal(classes="buttons"):
                yield Button("Keep current (Esc)", id="keep")
                yield Button(f"Train at {self.recommended.describe()} (Enter)", id="adopt", variant="success")

    def on_mount(self) -> None:
        self.query_one("#adopt", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "adopt")

    def action_keep(self) -> None:
        self.dismiss(False)
