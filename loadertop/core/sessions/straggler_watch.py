"""Headless, a torchrun job's input straggler named in loadertop's lines and in ``--record``.

``loadertop run --headless -- torchrun ...`` starts torchrun as its child, and each rank prints its
own lines. The launcher, torchrun's parent, watches every rank the way the monitor does
(``ranks.RanksSession``: this node's ranks on their sockets, the other nodes' from the summaries
that this node's ranks relay from the job's c10d store), watching only: it never takes control,
so a ``loadertop attach`` still can. Once a second it takes the monitor's verdict
(``ranks.find_straggler``); a new verdict (a rank named, another rank, none any more) is said
once it has held for ``HOLD_LOOKS`` looks in a row, so that one noisy window does not make it
flap. Once a rank has ended (finished, or crashed) the others' figures no longer compare: the
verdict then stands as it was, and the end summary says it. The ranks are not touched: they
publish on their sockets as always, and a watcher that falls behind only loses messages. No torch.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadertop.core.probe.publisher import say_on_stderr
from loadertop.core.protocol.records import record_line
from loadertop.core.sessions.ranks import RanksSession, measured_ranks
from loadertop.core.sessions.view import ScriptView, Straggler

LOOK_S = 1.0
"""How often the ranks' verdict is looked at."""
HOLD_LOOKS = 3
"""Looks in a row a new verdict must hold before it is said (about 3 s: no flapping on one noisy window)."""
SAMPLE_S = 5.0
"""The watched sessions' system samples (of the ranks' process trees): not used here, so taken seldom."""
NOBODY = "no rank's wait for data holds the others back"


@dataclass(frozen=True)
class StragglerChange:
    """The named straggler changed.

    Attributes:
        straggler: the one named now (None: none any more).
        was: the one named before (None: none was).
        step: batches the rank concerned (named now, else named before) had trained on.
        time: when (seconds since the epoch).
    """

    straggler: Straggler | None
    was: Straggler | None
    step: int
    time: float

    def line(self) -> str:
        """loadertop's line for it (without the ``loadertop:`` prefix)."""
        before = f" (was rank {self.was.rank})" if self.was is not None else ""
        if self.straggler is None:
            return f"input straggler: none any more{before}: {NOBODY}"
        found = self.straggler
        return f"input straggler: rank {found.rank}, score {found.score:.2f}{before}: {found.evidence}"

    def event(self) -> dict[str, Any]:
        """Its ``--record`` line: ``{"event": "straggler", "rank": ..., "score": ..., "evidence": ...}``."""
        found = self.straggler
        return {
            "event": "straggler",
            "rank": found.rank if found else None,
            "score": round(found.score, 4) if found else None,
            "evidence": found.evidence if found else NOBODY,
            "was": self.was.rank if self.was is not None else None,
            "step": self.step,
            "time": round(self.time, 6),
        }


_NO_CANDIDATE = object()


@dataclass
class StragglerHold:
    """Successive verdicts with hysteresis: a new one is taken once it held for ``hold_looks`` looks in a row.

    While the named rank stays the verdict, its latest score and evidence replace the earlier ones.
    """

    hold_looks: int = HOLD_LOOKS
    named: Straggler | None = None
    """The straggler named now (None: none)."""
    watched_s: float = 0.0
    """Seconds between the first look and the latest."""
    named_s: dict[int, float] = field(default_factory=dict)
    """Seconds each rank stood named."""
    latest: dict[int, Straggler] = field(default_factory=dict)
    """Each rank's latest verdict while named."""
    looks: int = 0
    """Looks taken."""
    _candidate: Any = _NO_CANDIDATE  # a rank number, or None for "none": the verdict that differs from ``named``
    _count: int = 0
    _last_time: float | None = None

    def look(self, found: Straggler | None, now: float) -> bool:
        """Take one look's verdict (at ``now``, seconds); True when ``named`` changed."""
        if self._last_time is not None:
            elapsed = max(now - self._last_time, 0.0)
            self.watched_s += elapsed
            if self.named is not None:
                self.named_s[self.named.rank] = self.named_s.get(self.named.rank, 0.0) + elapsed
        self._last_time = now
        self.looks += 1
        key = found.rank if found is not None else None
        if key == (self.named.rank if self.named is not None else None):
            self._candidate, self._count = _NO_CANDIDATE, 0
            self._take(found)
            return False
        if key == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = key, 1
        if self._count < self.hold_looks:
            return False
        self._candidate, self._count = _NO_CANDIDATE, 0
        self._take(found)
        return True

    def _take(self, found: Straggler | None) -> None:
        self.named = found
        if found is not None:
            self.latest[found.rank] = found
            self.named_s.setdefault(found.rank, 0.0)

    def summary(self) -> str | None:
        """The end summary's line: the rank named longest, with its latest score and evidence; or none named
        (over the run, or too few looks to name one); None when never looked (a job of one rank)."""
        if not self.looks:
            return None
        if not self.latest and self.looks < self.hold_looks:  # too few to have named anyone: no verdict
            return (
                f"input straggler: none named: the ranks were compared at {self.looks} look"
                f"{'s' if self.looks > 1 else ''} only ({self.hold_looks} in a row name one)"
            )
        if not self.latest:
            return (
                f"input straggler: none over the run ({self.watched_s:.0f} s watched: no rank's wait for data "
                "held the others back)"
            )
        rank = max(self.latest, key=lambda r: (self.named_s.get(r, 0.0), -r))  # named longest
        found = self.latest[rank]
        held = f"named for {self.named_s.get(rank, 0.0):.0f} s of the {self.watched_s:.0f} s watched"
        if self.named is None:
            held += "; none at the end"
        elif self.named.rank != rank:
            held += f"; rank {self.named.rank} at the end"
        return f"input straggler over the run: rank {rank}, score {found.score:.2f}: {found.evidence} ({held})"


def _ranks_session(pid: int) -> Any:
    return RanksSession(pid=pid, read_gpus=False, sample_interval_s=SAMPLE_S, control=False)


class StragglerWatch:
    """Names a headless torchrun job's input straggler (see the module's docstring); the launcher's ``Watcher``.

    Args:
        record: the ``--record`` file the events are appended to (None: none).
        say: where the lines go (loadertop's lines on stderr).
        look_s: seconds between looks.
        hold_looks: looks in a row a new verdict must hold.
        session_for: the session watching torchrun's ranks, from torchrun's pid (a ``RanksSession``, watching only).
    """

    def __init__(
        self,
        *,
        record: str | None = None,
        say: Callable[[str], None] = say_on_stderr,
        look_s: float = LOOK_S,
        hold_looks: int = HOLD_LOOKS,
        session_for: Callable[[int], Any] = _ranks_session,
    ) -> None:
        self.record = os.path.abspath(record) if record else None
        self.hold = StragglerHold(hold_looks)
        self.frozen = False
        """A rank has ended (or the job): the verdict stands as it was."""
        self._say = say
        self._look_s = look_s
        self._session_for = session_for
        self._session: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadertop-straggler", daemon=True)

    def start(self, pid: int) -> None:
        """Watch the ranks of torchrun ``pid`` (the launcher's child) from now on."""
        try:
            self._session = self._session_for(pid)
            self._session.start()
        except Exception as exc:  # noqa: BLE001 - the job runs, watched or not
            self._say(f"input straggler: not watched ({type(exc).__name__}: {exc})")
            return
        self._thread.start()

    def look(self, script: ScriptView | None, now: float | None = None) -> StragglerChange | None:
        """One look at the job (its ranks and the verdict): the change said and recorded, if any."""
        if self.frozen or script is None:
            return None
        ranks = script.ranks
        if ranks and (script.ended is not None or any(r.ended is not None for r in ranks if r.watched)):
            self.frozen = True
            return None
        if len(measured_ranks(ranks)) < 2:  # nothing to compare (yet, or ever: a job of one rank)
            return None
        was = self.hold.named
        now = time.time() if now is None else now
        if not self.hold.look(script.straggler, now):
            return None
        concerned = self.hold.named or was
        step = next((r.step for r in ranks if concerned is not None and r.rank == concerned.rank), 0)
        change = StragglerChange(self.hold.named, was, step, now)
        self._say(change.line())
        if self.record is not None:
            try:
                with open(self.record, "a", encoding="utf-8") as file:  # one write: the ranks append to it too
                    file.write(record_line(change.event()))
            except OSError as exc:
                self._say(f"--record {self.record}: {exc.strerror}: the straggler's events are not recorded")
                self.record = None
        return change

    def finish(self) -> None:
        """The job has ended: stop watching, and say the end summary's line."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._look_s + 5.0)
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close(1.0)
        summary = self.hold.summary()
        if summary is not None:
            self._say(summary)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._look_s):
                self.look(self._session.view().script)
        except Exception as exc:  # noqa: BLE001 - the job runs on whatever the watching meets
            self._say(f"input straggler: not watched any more ({type(exc).__name__}: {exc})")
