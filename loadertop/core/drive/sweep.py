"""The sweep: measure each worker count in turn on one run, training going on across counts.

A ``Sweep`` switches a running ``Trainer`` from one worker count to the next once
``batches_per_count`` steady batches of the current one are in (warm-up batches
after each restart are not counted). The figures come from the trainer's store,
so a count measured before the sweep adds to its own row. When the planned counts
are measured and the measurements cannot yet tell whether a count is within 5% of the
fastest (``Advice.undecided``), the sweep measures those counts again, up to
``extra_rounds`` times, each adding ``batches_per_count`` batches to their rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loadertop.core.measure.store import ConfigSummary
from loadertop.core.policy.advice import recommend
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.protocol.status import TrainerState

if TYPE_CHECKING:  # the sweep drives a trainer; its progress is read by torch-free front-ends
    from loadertop.core.train.engine import Trainer

DEFAULT_BATCHES = 100
"""Steady batches measured per worker count unless told otherwise."""
EXTRA_ROUNDS = 2
"""How many times a sweep measures undecided counts again before it says it cannot tell."""


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """Where a sweep stands.

    Attributes:
        counts: the worker counts, in the order measured (undecided counts measured again appended).
        batches_per_count: steady batches measured per count.
        index: the count being measured (``len(counts)`` once done).
        batches_done: steady batches of that count so far.
        state: ``"running"``, ``"done"`` or ``"cancelled"``.
        planned: how many of ``counts`` were asked for; those after it measure undecided counts longer.
    """

    counts: tuple[int, ...]
    batches_per_count: int
    index: int
    batches_done: int
    state: str
    planned: int = 0

    @property
    def extending(self) -> bool:
        """True while counts the first measurements could not tell apart are measured again."""
        return bool(self.planned) and self.index >= self.planned and self.state == "running"

    @property
    def current(self) -> int | None:
        """The worker count being measured (None when not running)."""
        return self.counts[self.index] if self.state == "running" and self.index < len(self.counts) else None

    @property
    def fraction(self) -> float:
        """Share of the whole sweep done, 0..1."""
        total = len(self.counts) * self.batches_per_count
        return min((self.index * self.batches_per_count + self.batches_done) / total, 1.0)


class Sweep:
    """Drives ``trainer`` through ``counts`` worker counts; feed it every record with ``on_record``.

    Args:
        trainer: the run to sweep (started or not).
        counts: worker counts to measure, in order, each once.
        batches_per_count: steady batches per count.
        base: the other loader settings (default: the trainer's current configuration).
        on_done: called (in the training thread) when the last count is measured.
        extra_rounds: how many times undecided counts are measured again (0: never).
    """

    def __init__(
        self,
        trainer: Trainer,
        counts: Sequence[int],
        batches_per_count: int,
        *,
        base: LoaderConfig | None = None,
        on_done: Callable[[], None] | None = None,
        extra_rounds: int = EXTRA_ROUNDS,
    ) -> None:
        if not counts:
            raise ValueError("a sweep needs at least one worker count")
        if any(c < 0 for c in counts) or len(set(counts)) != len(counts):
            raise ValueError(f"worker counts must be distinct and >= 0, got {list(counts)}")
        if batches_per_count < 1:
            raise ValueError(f"batches per count must be >= 1, got {batches_per_count}")
        self.trainer = trainer
        base = base or trainer.config
        self.configs = tuple(base.with_workers(c) for c in counts)
        for config in self.configs:
            config.validate()
        self.counts = tuple(counts)
        self.planned = len(self.counts)
        self.batches_per_count = batches_per_count
        self.on_done = on_done
        self.extra_rounds = extra_rounds
        self._lock = threading.Lock()
        self._index = 0
        self._done = 0
        self._armed = False  # the current count's loader has delivered its first (warm-up) batch
        self._state = "idle"
        self._rounds = 0  # rounds of measuring undecided counts again

    def begin(self) -> None:
        """Start measuring the first count (starting the trainer, or hot-restarting it)."""
        with self._lock:
            if self._state != "idle":
                raise RuntimeError("this sweep has already begun")
            self._state = "running"
        if self.trainer.state is TrainerState.IDLE:
            if self.trainer.config != self.configs[0]:
                raise ValueError("start the trainer with the sweep's first configuration")
            self.trainer.start()
        else:
            self.trainer.restart(self.configs[0], overlap=False)  # each count's window begins at once

    def cancel(self) -> None:
        """Stop switching; training goes on at the current count and what was measured stays."""
        with self._lock:
            if self._state == "running":
                self._state = "cancelled"

    def progress(self) -> SweepProgress:
        """A frozen view of the progress."""
        with self._lock:
            return SweepProgress(
                self.counts, self.batches_per_count, self._index, self._done, self._state, self.planned
            )

    def on_record(self, record: BatchRecord) -> None:
        """Count ``record`` toward the current count and switch when it has enough (training thread)."""
        finished = False
        with self._lock:
            if self._state != "running" or record.config_key != self.configs[self._index].key:
                return  # the previous loader's last batches, or after the sweep
            if record.warmup:
                self._armed = True  # the new loader is running
                return
            if not self._armed:
                return
            self._done += 1
            if self._done < self.batches_per_count:
                return
            self._index += 1
            self._done = 0
            self._armed = False
            if self._index == len(self.configs):
                self._measure_undecided_again()
            if self._index < len(self.configs):
                next_config = self.configs[self._index]
            else:
                self._state = "done"
                finished = True
        if finished:
            if self.on_done is not None:
                self.on_done()
        else:
            self.trainer.restart(next_config, overlap=False)

    def _measure_undecided_again(self) -> None:
        """All counts are in: queue the ones the measurements cannot tell apart for another round (lock held)."""
        if self._rounds >= self.extra_rounds:
            return
        advice = recommend(self.rows(self.trainer.store.summaries()))
        again = [c for c in self.configs[: self.planned] if c.key in advice.undecided]
        self.configs += tuple(again)
        self.counts += tuple(c.num_workers for c in again)
        self._rounds += 1

    def rows(self, summaries: Sequence[ConfigSummary]) -> tuple[ConfigSummary, ...]:
        """The summaries of the swept configurations, in the order first measured (those measured so far)."""
        by_key = {s.key: s for s in summaries}
        keys = dict.fromkeys(c.key for c in self.configs)
        return tuple(by_key[k] for k in keys if k in by_key and by_key[k].batches)
