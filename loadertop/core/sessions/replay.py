"""Recorded sessions: save a live ``SessionView`` to JSON and replay it with the Session interface.

Snapshot tests and ``make screenshots`` draw the real app from a recorded view, so
every number on screen is fixed. A ``ReplaySession`` also logs the commands it is
sent, which makes it the deterministic fake engine of the app's behaviour tests.

A torchrun job's recording holds every rank's view, each as ``RanksSession`` served it with
that rank shown (the ranks panel and the straggler in each): the replay shows the first and
``k`` goes through the others.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from loadertop.core.drive.sweep import DEFAULT_BATCHES, SweepProgress
from loadertop.core.policy.advice import recommend
from loadertop.core.policy.autotune import TunerStatus
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import TunerState
from loadertop.core.protocol.status import TrainerState
from loadertop.core.sessions.view import SessionView

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
        return kind(
            **{f.name: from_jsonable(hints[f.name], data[f.name]) for f in dataclasses.fields(kind) if f.name in data}
        )
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    if kind is float and data is not None:
        return float(data)
    return data


def save_view(view: SessionView, path: str | Path, *, other_ranks: Sequence[SessionView] = ()) -> None:
    """Write ``view`` as JSON; for a torchrun job, with ``other_ranks``: the view of each other rank."""
    document: dict[str, Any] = {"format": FORMAT, "view": to_jsonable(view)}
    if other_ranks:
        document["other_ranks"] = [to_jsonable(other) for other in other_ranks]
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _document(path: str | Path) -> dict[str, Any]:
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a loadertop session recording (format {FORMAT})")
    return document


def load_view(path: str | Path) -> SessionView:
    """Read a view written by ``save_view`` (a torchrun job's: the rank shown first)."""
    return from_jsonable(SessionView, _document(path)["view"])


def load_other_ranks(path: str | Path) -> tuple[SessionView, ...]:
    """A torchrun job's recording: the views of the ranks not shown first (empty for one process's)."""
    return tuple(from_jsonable(SessionView, data) for data in _document(path).get("other_ranks", ()))


class ReplaySession:
    """Serves a recorded view as if it were live, and logs every command it receives.

    Commands change the view the way the engine would report them once done: ``apply``
    makes the configuration current (and a run that had ended running again),
    ``pause``/``resume`` flip the state, ``set_autotune`` the tuner's. Nothing trains.

    Args:
        view: the recorded view (of a torchrun job: the rank shown first).
        other_ranks: a torchrun job's other ranks' views (``k`` shows them, ``A`` switches every one).
    """

    def __init__(self, view: SessionView, *, other_ranks: Sequence[SessionView] = ()) -> None:
        if view.advice is None:  # a recording from before advice was part of the view
            view = dataclasses.replace(view, advice=recommend(view.store.summaries))
        self._view = view
        self._ranks: dict[int, SessionView] = {}  # a torchrun job's every rank's view, by rank
        for shown in (view, *other_ranks) if other_ranks else ():
            if shown.script is not None and shown.script.selected_rank is not None:
                self._ranks[shown.script.selected_rank] = shown
        self.commands: list[tuple[str, Any]] = []
        self.closed = False

    @classmethod
    def from_file(cls, path: str | Path) -> ReplaySession:
        """A replay of a file written by ``save_view`` (a torchrun job's with every rank)."""
        return cls(load_view(path), other_ranks=load_other_ranks(path))

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
        """Log the restart and make ``config`` current (of a torchrun job: the shown rank's)."""
        self.commands.append(("apply", config))
        self._status(config=config, pending=None, state=TrainerState.RUNNING, error=None)
        shown = self._view.script.selected_rank if self._view.script is not None else None
        if self._ranks and shown is not None:
            self._show_workers({shown}, config.num_workers)

    def apply_all(self, config: LoaderConfig) -> None:
        """Log the switch of every rank of a torchrun job and make ``config`` current on each."""
        if not self._ranks:
            raise RuntimeError("one process: no ranks to switch")
        self.commands.append(("apply_all", config))
        self._status(config=config, pending=None, state=TrainerState.RUNNING, error=None)
        for number, view in self._ranks.items():
            self._ranks[number] = dataclasses.replace(
                view,
                status=dataclasses.replace(
                    view.status, config=config, pending=None, state=TrainerState.RUNNING, error=None
                ),
            )
        self._show_workers(set(self._ranks), config.num_workers)

    def _show_workers(self, numbers: set[int], workers: int) -> None:
        """The ranks panel of every rank's view shows ``workers`` for the ranks ``numbers``."""

        def shown(view: SessionView) -> SessionView:
            if view.script is None:
                return view
            rows = tuple(
                dataclasses.replace(r, num_workers=workers) if r.rank in numbers else r for r in view.script.ranks
            )
            return dataclasses.replace(view, script=dataclasses.replace(view.script, ranks=rows))

        self._view = shown(self._view)
        self._ranks = {number: shown(view) for number, view in self._ranks.items()}

    def select_next_rank(self) -> int | None:
        """Log and show the next rank of a recorded torchrun job (None for one process)."""
        script = self._view.script
        if not self._ranks or script is None or script.selected_rank is None:
            return None
        self._ranks[script.selected_rank] = self._view  # as the commands so far left it
        numbers = sorted(self._ranks)
        later = [n for n in numbers if n > script.selected_rank]
        chosen = later[0] if later else numbers[0]
        self.commands.append(("select_next_rank", chosen))
        self._view = self._ranks[chosen]
        return chosen

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
            self._view = dataclasses.replace(self._view, sweep=dataclasses.replace(self._view.sweep, state="cancelled"))

    def set_autotune(self, enabled: bool) -> None:
        """Log it and show the tuner on (measuring the running count; the recorded changes kept) or off."""
        self.commands.append(("set_autotune", enabled))
        workers = self._view.status.config.num_workers
        state = TunerState.MEASURING if enabled else TunerState.OFF
        old = self._view.autotune
        tuner = (
            dataclasses.replace(old, state=state, workers=workers)
            if old is not None
            else TunerStatus(state, workers, (), (), math.inf)
        )
        self._view = dataclasses.replace(self._view, autotune=tuner)

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
