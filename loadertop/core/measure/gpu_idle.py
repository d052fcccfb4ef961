"""GPU idle time from NVML's utilisation samples, attributed to the loop's waits for data. Pure: no NVML, no torch.

What a sample means. ``nvmlDeviceGetSamples(handle, NVML_GPU_UTILIZATION_SAMPLES, last_seen)`` returns
``(timeStamp µs, value)`` pairs from the driver's ring buffer; ``value`` is the percent of the sample's
period during which one or more kernels ran on the GPU (NVML: "percent of time over the past sample
period"; the period is 1/6 s to 1 s by product). A sample's period is taken to end at its timestamp and
to begin at the previous sample's, capped at ``MAX_PERIOD_S``: a longer gap (the driver buffers nothing
while a GPU sits idle on some products, or the sampler fell behind) is left *uncovered*, in neither the
numerator nor the denominator, rather than guessed. The first sample ever seen has no previous one: it
is used only for the period it closes, i.e. not at all.

Idle. Within a period of length ``p`` and value ``v``, the GPU was idle ``(1 - v/100) * p`` seconds.
Where it was idle inside the period is not known: it is spread evenly, so an interval overlapping the
period for ``o`` seconds gets ``(1 - v/100) * o`` of its idle time. Over a window ``[start, end]``:

- ``covered_s``: the length of the window the periods cover;
- ``idle_s``: ``sum((1 - v/100) * overlap(period, window))``;
- ``waiting_s``: the covered part of the window the loop was blocked in ``next()``;
- ``idle_waiting_s``: ``sum((1 - v/100) * overlap(period, window ∩ waits))``.

``GpuIdleBook`` does this batch by batch (a batch's window is its iteration, its wait the time in
``next()``) and sums the batches per worker count. ``nvmlDeviceGetUtilizationRates`` alone (a GPU or
driver that answers ``NVMLError_NotSupported`` to ``nvmlDeviceGetSamples``) gives one value for a period
that is not known, so nothing is attributed from it: the figure is then not available, with the reason.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadertop.core.protocol.gpu_idle import GpuIdle

MAX_PERIOD_S = 1.0
"""The longest period one sample is taken to cover (NVML: a sample period is between 1/6 s and 1 s)."""
PENDING_BATCHES = 20_000
"""Batches kept waiting for the samples that cover them (older ones are dropped: samples stopped coming)."""
BEFORE_SAMPLES = 1_000
"""Batches kept before the first samples come (the sampler's first read may come after the loop's first batches)."""


@dataclass(frozen=True, slots=True)
class UtilSample:
    """One NVML utilisation sample, its period known.

    Attributes:
        start: UNIX seconds the period began (the previous sample's time, or ``end - MAX_PERIOD_S``).
        end: UNIX seconds of the sample (its timestamp).
        percent: the share of the period, in percent, one or more kernels ran.
    """

    start: float
    end: float
    percent: float

    @property
    def idle_fraction(self) -> float:
        """``1 - percent/100``, within [0, 1]."""
        return min(max(1.0 - self.percent / 100.0, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class GpuSamples:
    """One read of the training process's GPU: its new samples, or why there are none.

    Attributes:
        gpu: the NVML index of the GPU read (None: the training process is on no GPU NVML sees).
        samples: the samples since the read before, in time order.
        note: why no idle figure can be made (samples not supported, ...); None when the read went well.
    """

    gpu: int | None
    samples: tuple[UtilSample, ...]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class IdleTotals:
    """Seconds over a window (see the module): covered, idle, waiting, idle while waiting."""

    covered_s: float = 0.0
    idle_s: float = 0.0
    waiting_s: float = 0.0
    idle_waiting_s: float = 0.0

    def __add__(self, other: IdleTotals) -> IdleTotals:
        return IdleTotals(
            self.covered_s + other.covered_s,
            self.idle_s + other.idle_s,
            self.waiting_s + other.waiting_s,
            self.idle_waiting_s + other.idle_waiting_s,
        )


def samples_from_nvml(
    raw: Iterable[tuple[int, float]], *, offset_s: float, previous_us: int | None = None
) -> tuple[UtilSample, ...]:
    """NVML's ``(timeStamp µs, percent)`` pairs as samples with their periods, in time order.

    Args:
        raw: the pairs (any order; a timestamp seen twice counts once, a value outside 0..100 is dropped).
        offset_s: added to ``timeStamp / 1e6`` to make UNIX seconds (``clock_offset_s``).
        previous_us: the newest timestamp of the read before (its sample opens the first period here).
    """
    samples = []
    last = previous_us
    for stamp, value in sorted(dict(raw).items()):
        if last is not None and stamp > last and 0.0 <= value <= 100.0:
            period = min((stamp - last) / 1e6, MAX_PERIOD_S)
            end = stamp / 1e6 + offset_s
            samples.append(UtilSample(end - period, end, float(value)))
        last = stamp if last is None else max(last, stamp)
    return tuple(samples)


def clock_offset_s(newest_us: int, clocks: Sequence[tuple[float, float]], *, slack_s: float = 120.0) -> float | None:
    """The offset from NVML's timestamps to UNIX time, or None where they are on no clock given.

    NVML says "CPU timestamp in microseconds" and names no clock: on many drivers it is UNIX time, on
    others the time since boot. The newest sample was taken a moment ago, so its timestamp lies just
    before "now" on its own clock; the clock it is nearest below (within ``slack_s``) is taken.

    Args:
        newest_us: the newest sample's timestamp.
        clocks: ``(now on that clock, its offset to UNIX time)`` for each candidate: UNIX time itself as
            ``(time.time(), 0.0)``, ``CLOCK_BOOTTIME`` as ``(boottime, time.time() - boottime)``, ...
    """
    stamp = newest_us / 1e6
    fits = [(now - stamp, offset) for now, offset in clocks if -1.0 <= now - stamp <= slack_s]
    return min(fits)[1] if fits else None


def idle_over(
    samples: Sequence[UtilSample], start: float, end: float, waits: Iterable[tuple[float, float]] = ()
) -> IdleTotals:
    """The totals over the window ``[start, end]`` with the loop blocked in ``next()`` during ``waits``.

    Args:
        samples: in time order, periods not overlapping (``samples_from_nvml``'s).
        start, end: the window, UNIX seconds.
        waits: ``(start, end)`` intervals the loop waited for a batch (clipped to the window; not overlapping).
    """
    clipped = [(max(a, start), min(b, end)) for a, b in waits if min(b, end) > max(a, start)]
    first = bisect.bisect_right([s.end for s in samples], start)  # the first period ending after the window opens
    totals = IdleTotals()
    for sample in samples[first:]:
        if sample.start >= end:
            break
        covered = _overlap(sample.start, sample.end, start, end)
        waiting = sum(_overlap(sample.start, sample.end, a, b) for a, b in clipped)
        idle = sample.idle_fraction
        totals = totals + IdleTotals(covered, idle * covered, waiting, idle * waiting)
    return totals


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(min(a1, b1) - max(a0, b0), 0.0)


@dataclass(frozen=True, slots=True)
class _Batch:
    num_workers: int
    start: float
    load_end: float
    end: float


class GpuIdleBook:
    """Sums each worker count's GPU idle time batch by batch, as samples arrive (thread-safe).

    The loop's thread adds batches (``add_batch``), the sampler's thread samples (``add_samples``); a batch
    is settled once samples reach its end, so the figures trail the loop by about a sampling interval.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[_Batch] = deque(maxlen=PENDING_BATCHES)
        self._samples: list[UtilSample] = []
        self._totals: dict[int, IdleTotals] = {}
        self._wall: dict[int, float] = {}  # the settled batches' wall time, covered or not
        self._gpu = 0
        self._sampling: bool | None = None  # None: not known yet (a few batches kept); False: no GPU, none kept
        self.note: str | None = None
        """Why there are no figures where NVML has a GPU (e.g. samples not supported); None otherwise."""

    def add_batch(self, num_workers: int, start: float, load_end: float, end: float) -> None:
        """A batch: the loop asked for it at ``start``, had it at ``load_end``, ended its step at ``end`` (UNIX s)."""
        with self._lock:
            if self._sampling or (self._sampling is None and len(self._pending) < BEFORE_SAMPLES):
                self._pending.append(_Batch(num_workers, start, load_end, end))

    def no_gpu(self) -> None:
        """There is no GPU to sample: batches are no longer kept (those waiting are dropped)."""
        with self._lock:
            self._sampling = False
            self._pending.clear()

    def add_samples(self, samples: Sequence[UtilSample], gpu: int = 0) -> None:
        """New samples of GPU ``gpu`` (in time order, after the ones before); settles the batches they cover."""
        with self._lock:
            self._sampling = True
            if gpu != self._gpu:  # another GPU's periods do not continue this one's
                self._samples = []
                self._gpu = gpu
            self._samples.extend(samples)
            if not self._samples:
                return
            newest = self._samples[-1].end
            while self._pending and self._pending[0].end <= newest:
                batch = self._pending.popleft()
                got = idle_over(self._samples, batch.start, batch.end, [(batch.start, batch.load_end)])
                self._totals[batch.num_workers] = self._totals.get(batch.num_workers, IdleTotals()) + got
                self._wall[batch.num_workers] = self._wall.get(batch.num_workers, 0.0) + (batch.end - batch.start)
            oldest = self._pending[0].start if self._pending else newest
            keep = bisect.bisect_left([s.end for s in self._samples], oldest)
            del self._samples[:keep]

    def pending(self) -> int:
        """Batches added that no sample has reached yet."""
        with self._lock:
            return len(self._pending)

    def figures(self) -> tuple[GpuIdle, ...]:
        """One ``GpuIdle`` per worker count with batches settled, in the order the counts first ran."""
        with self._lock:
            return tuple(
                GpuIdle(workers, t.covered_s, t.idle_s, t.waiting_s, t.idle_waiting_s, self._gpu, self._wall[workers])
                for workers, t in self._totals.items()
            )
