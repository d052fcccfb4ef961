"""Recorded sessions: save a live ``SessionView`` to JSON and replay it with the Session interface.

Snapshot tests and ``make screenshots`` draw the real app from a recorded view, so
every number on screen is fixed. A ``ReplaySession`` also logs the commands it is
sent, which makes it the deterministic fake engine of the app's behaviour tests.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from loadertop.core.advice import recommend
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.status import TrainerState
from loadertop.core.sweep import DEFAULT_BATCHES, SweepProgress
from loadertop.core.view import SessionView

FORMAT = 1


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and tuples as plain JSON values (NaN kept as NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(kind: Any, data: Any) -> Any:
    """Rebuild a value of type ``kind`` (a dataclass, enum, tuple, optional, scalar) from JSON."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        if data is None:
            return None
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return from_jsonable(options[0], data)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(args, data, strict=True))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: from_jsonable(hints[f.name], data[f.name])
                       for f in dataclasses.fields(kind) if f.name in data})
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    if kind is float and data is not None:
        return float(data)
    return data


def save_view(view: SessionView, path: str | Path) -> None:
    """Write ``view`` as JSON."""
    document = {"format": FORMAT, "view": to_jsonable(view)}
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def load_view(path: str | Path) -> SessionView:
    """Read a view written by ``save_view``."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a loadertop session recording (format {FORMAT})")
    return from_jsonable(SessionView, document["view"])


class ReplaySession:
    """Serves a recorded view as if it were live, and logs every command it receives.

    Commands change the view the way the engine would report them once done: ``apply``
    makes the configuration current (and a run that had ended running again),
    ``pause``/``resume`` flip the state. Nothing trains.

    Args:
        view: the recorded view.
    """

    def __init__(self, view: SessionView) -> None:
        if view.advice is None:  # a recording from before advice was part of the view
            view = dataclasses.replace(view, advice=recommend(view.store.summaries))
        self._view = view
        self.commands: list[tuple[str, Any]] = []
        self.closed = False

    @classmethod
    def from_file(cls, path: str | Path) -> ReplaySession:
        """A replay of a file written by ``save_view``."""
        return cls(load_view(path))

    def start(self) -> None:
        """Log the start."""
        self.commands.append(("start", None))

    def view(self) -> SessionView:
        """The recorded view, as changed by the commands so far."""
        return self._view

    def set_view(self, view: SessionView) -> None:
        """Replace the view (tests use it to move the session on)."""
        self._view = view

    def _status(self, **changes: Any) -> None:
        status = dataclasses.replace(self._view.status, **changes)
        self._view = dataclasses.replace(self._view, status=status)

    def apply(self, config: LoaderConfig) -> None:
        """Log the restart and make ``config`` current."""
        self.commands.append(("apply", config))
        self._status(config=config, pending=None, state=TrainerState.RUNNING, error=None)

    def pause(self) -> None:
        """Log and show the pause."""
        self.commands.append(("pause", None))
        self._status(state=TrainerState.PAUSED)

    def resume(self) -> None:
        """Log and show the resume."""
        self.commands.append(("resume", None))
        self._status(state=TrainerState.RUNNING)

    def stop(self) -> None:
        """Log the stop."""
        self.commands.append(("stop", None))

    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None:
        """Log the sweep and show it running at its first count."""
        counts = tuple(counts or (0, 1, 2, 4))
        self.commands.append(("start_sweep", counts))
        self._view = dataclasses.replace(self._view, sweep=SweepProgress(counts, batches, 0, 0, "running"))

    def cancel_sweep(self) -> None:
        """Log the cancel and show the sweep cancelled."""
        self.commands.append(("cancel_sweep", None))
        if self._view.sweep is not None and self._view.sweep.state == "running":
            self._view = dataclasses.replace(self._view, sweep=dataclasses.replace(self._view.sweep,
                                                                                   state="cancelled"))

    def detach(self) -> None:
        """Log the detach (a script's monitor leaves it running)."""
        self.commands.append(("detach", None))

    def select_next_loader(self) -> str | None:
        """Log and show the next of a recorded script's loaders."""
        script = self._view.script
        if script is None or not script.loaders:
            return None
        names = [info.name for info in script.loaders]
        chosen = names[(names.index(script.selected) + 1) % len(names)] if script.selected in names else names[0]
        self.commands.append(("select_next_loader", chosen))
        self._view = dataclasses.replace(self._view, script=dataclasses.replace(script, selected=chosen))
        return chosen

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """Log the close; nothing to wait for."""
        self.commands.append(("close", None))
        self.closed = True
        return []

