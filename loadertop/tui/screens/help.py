"""Help: every key, and how to read the screen."""

from __future__ import annotations

import textwrap
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

AUTOTUNE = (
    "autotune on / off: measure, jump to the model's pick, verify one more and one fewer, settle and hold; "
    "each change and why beside the table. The keys above still work: a manual switch (r) makes the tuner "
    "start over from that count"
)

STAGES = "show / hide where a sample's time goes (the stage panel)"

KEYS = (
    ("+ / -", "one worker more / fewer (pending; nothing restarts yet)"),
    ("0 … 9", "set the pending worker count directly"),
    (
        "r",
        (
            "apply: hot-restart with the pending settings (model and epoch position kept); "
            "after the run ended or failed, train again"
        ),
    ),
    (
        "c",
        (
            "edit the other loader settings: batch size, prefetch_factor, start method, timeout, pin_memory, "
            "persistent_workers"
        ),
    ),
    ("s", "sweep: measure 0, 1, 2, 4, ... workers in turn (training goes on), then recommend one"),
    ("Esc", "cancel a sweep (what was measured stays)"),
    ("a", AUTOTUNE),
    ("t", STAGES),
    ("p", "pause / resume training"),
    ("?", "this help"),
    ("q, Ctrl+C", "quit: stops training and shuts the workers down"),
)

SCRIPT_KEYS = (
    ("+ / - 0 … 9", "the pending worker count of the loader shown"),
    ("r", "switch it at its next batch boundary (an IterableDataset's at its next epoch)"),
    ("l", "the script's next DataLoader (train, validation, ...): shown, and what r switches"),
    ("k", "a torchrun job's next rank (this node's or another's): shown, and what r switches"),
    ("A", "switch every rank of a torchrun job to the pending count"),
    ("a", AUTOTUNE),
    ("t", STAGES),
    ("d", "detach: quit and leave the script running; loadertop attach watches it again"),
    ("?", "this help"),
    ("q, Ctrl+C", "stop the script as ^C would (SIGINT, then SIGTERM after 5 s) and quit"),
)

READING = (
    "load = time the step waited for the next batch; compute = the training step itself.",
    "input-bound: the step waits for data more than 10% of the time; add workers until it is not.",
    "The table keeps one row per configuration; warm-up batches after each (re)start are left out.",
    "★ marks the most samples/s; ◆ the fewest workers within 5% of it: past that, more only cost CPU and memory.",
    "Beside the table, the model's predicted samples/s per count (● measured, ▶ running, ┊ the CPU ceiling).",
)


class HelpScreen(ModalScreen[None]):
    """A modal list of the keys; any of Esc, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "close", tooltip="Close the help"),
    ]

    def __init__(self, *, script: bool = False, log_path: str | None = None) -> None:
        super().__init__()
        self.script = script
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        text = Text()
        for key, what in SCRIPT_KEYS if self.script else KEYS:
            text.append(f"{key:>10}  ", "bold")
            text.append("\n".join(textwrap.wrap(what, 72, subsequent_indent=" " * 12)) + "\n")
        text.append("\n")
        for line in READING:
            text.append(line + "\n", "dim")
        if self.script:
            text.append("With a script, the step is everything its loop does between two batches.\n", "dim")
            if self.log_path:
                text.append(f"The script's output (stdout and stderr) is written to {self.log_path}\n", "dim")
        text.append("\nEsc closes this help.", "dim")
        with Vertical(classes="dialog") as box:
            box.border_title = "loadertop keys"
            yield Static(text, id="help-text")
