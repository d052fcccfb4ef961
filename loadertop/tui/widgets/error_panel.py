"""The error panel: why the run stopped, where, and that ``r`` tries again."""

from __future__ import annotations

from rich.text import Text

from loadertop.tui.widgets.base import ViewWidget

KIND_TITLES = {
    "dataset": "the dataset raised",
    "worker": "a DataLoader worker died",
    "step": "the training step failed",
    "setup": "the workload could not start",
    "timeout": "the workers delivered no batch in time",
    "nan": "the loss is not a finite number",
}


class ErrorPanel(ViewWidget):
    """Shown (CSS class ``-failed`` on the app) only while the run has failed."""

    follows = "status"

    DEFAULT_CSS = """
    ErrorPanel { height: auto; max-height: 6; border: heavy $error; padding: 0 1; display: none; }
    """

    def render(self) -> Text:
        text = Text(overflow="fold")
        view = self.view
        error = view.status.error if view is not None else None
        if error is None:
            return text
        text.append(f"{KIND_TITLES.get(error.kind, 'the run failed')} at step {error.step + 1}", "bold red")
        if error.sample_index is not None:
            stage = f", in {error.stage}" if error.stage else ""
            text.append(f" (sample index {error.sample_index}{stage})", "bold red")
        text.append(f": {error.message}\n")
        text.append("The curve, the table and the records are kept. ", "dim")
        text.append("r", "bold")
        text.append(" tries again (with the pending settings); q quits.", "dim")
        return text
