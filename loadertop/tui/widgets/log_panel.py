"""The script's own output (stdout and stderr), its latest lines: what it would have printed to the terminal."""

from __future__ import annotations

from rich.text import Text

from loadertop.core.sessions.view import SessionView
from loadertop.tui.widgets.base import ViewWidget


class LogPanel(ViewWidget):
    """The tail of a watched script's output; shown (CSS class ``-script`` on the screen) only for scripts."""

    follows = "status"

    def wants(self, view: SessionView, tick: int) -> bool:
        old = self.view
        if old is None or old.script is None or view.script is None:
            return True
        return view.script.log_tail != old.script.log_tail or view.script.ended != old.script.ended

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        script = self.view.script if self.view is not None else None
        if script is None:
            return text
        rows = max(self.content_size.height, 1)
        lines = list(script.log_tail)
        if script.ended is not None:
            lines.append(f"── {script.ended}")
        if not lines:
            where = script.log_path or "its terminal"
            text.append(f"nothing printed yet (the script's output goes to {where})", "dim")
            return text
        for i, line in enumerate(lines[-rows:]):
            if i:
                text.append("\n")
            style = "bold" if line.startswith("── ") else ("dim" if line.startswith("loadertop:") else "")
            text.append(line, style)
        return text
