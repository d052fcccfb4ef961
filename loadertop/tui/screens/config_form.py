"""The loader settings form (``c``): batch size, prefetch_factor, start method, timeout, pin_memory, persistence."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from loadertop.core.protocol.config import ConfigError, LoaderConfig, available_start_methods


def _selected(select: Select[str]) -> str | None:
    value = select.value
    return value if isinstance(value, str) else None


def parse_form(
    base: LoaderConfig,
    batch_size: str,
    prefetch: str,
    pin: bool,
    persistent: bool,
    start_method: str | None = None,
    timeout: str = "",
) -> LoaderConfig:
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
    try:
        timeout_s = float(timeout.strip()) if timeout.strip() else 0.0
    except ValueError:
        raise ConfigError(
            f"timeout must be a number of seconds >= 0 or empty for none, got {timeout.strip()!r}"
        ) from None
    config = replace(
        base,
        batch_size=batch,
        prefetch_factor=prefetch_factor,
        pin_memory=pin,
        persistent_workers=persistent,
        start_method=start_method,
        timeout_s=timeout_s,
    )
    config.validate()
    return config


class ConfigForm(ModalScreen[LoaderConfig | None]):
    """Edits the pending configuration; Enter or Save keeps it (``r`` applies it), Esc cancels."""

    DEFAULT_CSS = """
    ConfigForm .row { height: 1; margin: 0 0 1 0; }
    ConfigForm .row Label { width: 18; }
    ConfigForm Checkbox { margin: 0 0 1 0; }
    ConfigForm Input { width: 1fr; }
    ConfigForm #form-error { color: $error; height: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel", tooltip="Close without changing the pending settings"),
    ]

    def __init__(self, pending: LoaderConfig, *, pin_memory_note: str = "") -> None:
        super().__init__()
        self.base = pending
        self.pin_memory_note = pin_memory_note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = f"loader settings (workers: {self.base.num_workers}, set with +/- or 0-9)"
            with Horizontal(classes="row"):
                yield Label("batch size")
                yield Input(str(self.base.batch_size), id="batch-size", type="integer", compact=True)
            with Horizontal(classes="row"):
                yield Label("prefetch factor")
                yield Input(
                    "" if self.base.prefetch_factor is None else str(self.base.prefetch_factor),
                    placeholder="default (2); needs workers",
                    id="prefetch",
                    type="integer",
                    compact=True,
                )
            with Horizontal(classes="row"):
                yield Label("start method")
                yield Select(
                    [(m, m) for m in available_start_methods()],
                    prompt="default (platform)",
                    value=self.base.start_method if self.base.start_method is not None else Select.NULL,
                    id="start-method",
                    compact=True,
                )
            with Horizontal(classes="row"):
                yield Label("timeout (s)")
                yield Input(
                    f"{self.base.timeout_s:g}" if self.base.timeout_s else "",
                    placeholder="none; a hung worker then waits forever",
                    id="timeout",
                    type="number",
                    compact=True,
                )
            yield Checkbox("pin_memory" + self.pin_memory_note, self.base.pin_memory, id="pin-memory", compact=True)
            yield Checkbox(
                "persistent_workers (needs workers)", self.base.persistent_workers, id="persistent", compact=True
            )
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
                _selected(self.query_one("#start-method", Select)),
                self.query_one("#timeout", Input).value,
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
