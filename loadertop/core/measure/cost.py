"""Exact CPU accounting of the training process tree: what every configuration cost, short-lived workers included.

A ``TreeCpuClock`` reads the CPU-seconds the tree has used so far: the training process
itself, its live descendants, and its children that already exited and were waited for
(the kernel adds those to the parent's ``children_user``/``children_system``). Two
readings at the boundaries of a configuration (start, hot restart, pause, stop) give
exactly what it cost, however short-lived its workers were and whatever the sampling
interval. Where the platform reports no times of reaped children (Windows), the clock
falls back to the last CPU time it saw of each child and says so (``mode == "sampled"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

import psutil

from loadertop.core.measure.system import process_rss


@dataclass(frozen=True, slots=True)
class TreeCpu:
    """One reading of the tree's CPU clock.

    Attributes:
        time: ``time.monotonic()`` at the reading.
        main_s: CPU-seconds of the training process since it started (user + system), without
            the monitor's own threads (the system sampler, the TUI).
        children_s: CPU-seconds of its descendants: the live ones and the children already reaped.
        rss_bytes: resident memory of the process and its live descendants now.
        apart_s: CPU-seconds of the processes ``read(apart=...)`` named (included in ``children_s``).
    """

    time: float
    main_s: float
    children_s: float
    rss_bytes: int
    apart_s: float = 0.0

    def without_apart(self) -> TreeCpu:
        """This reading as if the processes read apart had not run yet: where a configuration whose
        workers started early (an overlapped switch) begins, so that their start-up is billed to it."""
        return replace(self, children_s=self.children_s - self.apart_s, apart_s=0.0)

    @property
    def total_s(self) -> float:
        """CPU-seconds of the whole tree."""
        return self.main_s + self.children_s


class TreeCpuClock:
    """Reads CPU-seconds of a process and all its descendants, reaped children included.

    Args:
        pid: the training process (default: this one).

    Attributes:
        lock: hold it while children are reaped (joined), so that no reading counts a child
            both alive and reaped, or neither.
        mode: ``"accounted"`` (reaped children's times come from the kernel) or ``"sampled"``
            (the platform has none: a child's CPU after its last reading is lost).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid)
        self.lock = threading.RLock()
        self.mode = "accounted" if _has_children_times(self._proc) else "sampled"
        self._excluded: dict[int, float] = {}  # thread id -> its CPU-seconds when last read
        self._last_seen: dict[tuple[int, float], float] = {}  # sampled mode: (pid, created) -> CPU-seconds
        self._gone_s = 0.0  # sampled mode: CPU-seconds of children no longer there

    def exclude_threads(self, thread_ids: Iterable[int]) -> None:
        """Leave these threads of the training process (native ids) out of ``main_s``: the monitor's own."""
        with self.lock:
            for tid in thread_ids:
                self._excluded.setdefault(tid, 0.0)

    def read(self, apart: Collection[int] = ()) -> TreeCpu:
        """The tree's CPU-seconds and resident memory now; ``apart``: pids whose CPU is also given apart."""
        with self.lock:
            now = time.monotonic()
            with self._proc.oneshot():
                times = self._proc.cpu_times()
                rss = process_rss(self._proc)
                main_s = times.user + times.system - self._excluded_s()
            try:
                children = self._proc.children(recursive=True)
            except psutil.Error:
                children = []
            live_s = apart_s = 0.0
            seen: dict[tuple[int, float], float] = {}
            for child in children:
                try:
                    with child.oneshot():
                        child_times = child.cpu_times()
                        cpu_s = child_times.user + child_times.system + _reaped_s(child_times)
                        key = (child.pid, child.create_time())
                        rss += process_rss(child)
                except psutil.Error:  # gone between the listing and the reading: counted as reaped
                    continue
                live_s += cpu_s
                if child.pid in apart:
                    apart_s += cpu_s
                seen[key] = cpu_s
            if self.mode == "accounted":
                children_s = live_s + _reaped_s(times)
            else:
                self._gone_s += sum(cpu for key, cpu in self._last_seen.items() if key not in seen)
                self._last_seen = seen
                children_s = live_s + self._gone_s
            return TreeCpu(time=now, main_s=main_s, children_s=children_s, rss_bytes=rss, apart_s=apart_s)

    def _excluded_s(self) -> float:
        """CPU-seconds of the excluded threads (a thread that ended keeps its last value)."""
        if not self._excluded:
            return 0.0
        try:
            threads = self._proc.threads()
        except psutil.Error:
            threads = []
        for thread in threads:
            if thread.id in self._excluded:
                self._excluded[thread.id] = thread.user_time + thread.system_time
        return sum(self._excluded.values())


def _has_children_times(proc: psutil.Process) -> bool:
    try:
        return hasattr(proc.cpu_times(), "children_user")
    except psutil.Error:
        return False


def _reaped_s(times: object) -> float:
    return float(getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0))
