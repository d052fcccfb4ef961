"""The loader settings form (``c``): batch size, pin_memory, persistent_workers, prefetch_factor."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from loadertop.core.config import ConfigError, LoaderConfig


def parse_form(base: LoaderConfig, batch_size: str, prefetch: str, pin: bool, persistent: bool) -> LoaderConfig:
    """The configuration the form describes; ConfigError with a one-line reason when it cannot work."""
    try:
        batch = int(batch_size.strip())
    except ValueError:
        raise ConfigError(f"batch size must be a whole number >= 1, got {batch_size.strip()!r}") from None
    prefetch_factor: int | None = None
    if prefetch.strip():
        try:
            prefetch_factor = int(prefetch.strip())
        except ValueError:
            raise ConfigError(
                f"prefetch factor must be a whole number >= 1 or empty for the default, got {prefetch.strip()!r}"
            ) from None
    config = replace(base, batch_size=batch, prefetch_factor=prefetch_factor, pin_memory=pin,
                     persistent_workers=persistent)
    config.validate()
    return config


class ConfigForm(ModalScreen[LoaderConfig | None]):
    """Edits the pending configuration; Enter or Save keeps it (``r`` applies it), Esc cancels."""

    DEFAULT_CSS = """
    ConfigForm .row { height: 3; }
    ConfigForm .row Label { width: 22; padding: 1 0 0 0; }
    ConfigForm Input { width: 1fr; }
    ConfigForm #form-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "cancel", tooltip="Close without changing the pending settings")]

    def __init__(self, pending: LoaderConfig, *, pin_memory_note: str = "") -> None:
        super().__init__()
        self.base = pending
        self.pin_memory_note = pin_memory_note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = f"loader settings (workers: {self.base.num_workers}, set with +/- or 0-9)"
            with Horizontal(classes="row"):
                yield Label("batch size")
                yield Input(str(self.base.batch_size), id="batch-size", type="integer")
            with Horizontal(classes="row"):
                yield Label("prefetch factor")
                yield Input(
                    "" if self.base.prefetch_factor is None else str(self.base.prefetch_factor),
                    placeholder="default (2); needs workers",
                    id="prefetch",
                    type="integer",
                )
            yield Checkbox("pin_memory" + self.pin_memory_note, self.base.pin_memory, id="pin-memory")
            yield Checkbox("persistent_workers (needs workers)", self.base.persistent_workers, id="persistent")
            yield Static("", id="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save (r applies)", id="save", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#batch-size", Input).focus()

    def _result(self) -> LoaderConfig | None:
        try:
            return parse_form(
                self.base,
                self.query_one("#batch-size", Input).value,
                self.query_one("#prefetch", Input).value,
                self.query_one("#pin-memory", Checkbox).value,
                self.query_one("#persistent", Checkbox).value,
            )
        except ConfigError as exc:
            self.query_one("#form-error", Static).update(str(exc))
            return None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self._save()
        else:
            self.dismiss(None)

    def _save(self) -> None:
        config = self._result()
        if config is not None:
            self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)
