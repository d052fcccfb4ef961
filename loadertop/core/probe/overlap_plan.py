"""How long an overlapped switch lasts: R, the batches the old workers deliver while the new ones start, from the
loader's measured start-ups of its worker generations and the loop's time between batches."""

from __future__ import annotations

import math

DEFAULT_STARTUP_S = 0.3
"""The start-up a loader assumes for new workers before it has measured any of its own (forked workers
start in tens to hundreds of ms; an overlap longer than needed only delays the switch)."""

MAX_OVERLAP_BATCHES = 256
"""The most batches an old generation delivers beyond those it has in flight while a new one starts."""

_OVERLAP_NO_INTERVAL = 4
"""Batches an overlap lasts (in flight included) before the loop's batch interval is known."""

_OVERLAP_MARGIN = 1.25
"""Overlap this much longer than the expected start-up: a handover that waits stalls the loop."""


def overlap_batches(startup_s: float, interval_s: float, in_flight: int) -> int:
    """R: how many batches an old generation delivers beyond its ``in_flight`` ones so that, at one batch
    each ``interval_s`` (0: unknown), it keeps the loop busy for about ``startup_s`` while a new one starts."""
    wanted = math.ceil(_OVERLAP_MARGIN * startup_s / interval_s) if interval_s > 0 else _OVERLAP_NO_INTERVAL
    return max(0, min(wanted - in_flight, MAX_OVERLAP_BATCHES))


class StartupHistory:
    """What a loader has measured that sizes an overlap: its generations' start-ups and the loop's batch interval."""

    __slots__ = ("interval_s", "startup_s")

    def __init__(self) -> None:
        self.startup_s: dict[int, float] = {}
        """Worker count -> the latest measured start-up of a generation of that many."""
        self.interval_s = 0.0
        """The loop's time between batches when last measured (0: never)."""

    def expected_startup_s(self, num_workers: int) -> float:
        """How long ``num_workers`` new workers are expected to take to deliver their first batch: the latest
        measurement for that count (else for the nearest count measured, else ``DEFAULT_STARTUP_S``); 0 for
        no workers."""
        if num_workers == 0:
            return 0.0
        known = self.startup_s
        if num_workers in known:
            return known[num_workers]
        if known:
            return known[min(known, key=lambda count: (abs(count - num_workers), -count))]
        return DEFAULT_STARTUP_S

    def note(self, num_workers: int, measured_s: float) -> None:
        """A generation of ``num_workers`` had its first batch ready ``measured_s`` after it was asked for."""
        self.startup_s[num_workers] = measured_s
