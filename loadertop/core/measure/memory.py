"""What a process tree really holds in memory: PSS and USS from ``smaps_rollup``, RSS where that cannot be read.

Summed RSS counts a page once per process that maps it. A forked DataLoader worker shares its
parent's pages (torch's libraries, the dataset) until it writes them, so summed RSS counts those
once per worker and makes workers look many times as costly as they are. The kernel knows better:

- **PSS** (proportional set size) splits each shared page among the processes that map it, so the
  PSS of a tree counts each of its pages once: the tree's memory.
- **USS** (unique set size: ``Private_Clean + Private_Dirty + Private_Hugetlb``) is what only that
  process holds: what its exit would free, and what one more worker adds. It grows over a worker's
  life when the worker writes pages it shares (copy-on-write; touching a Python list dataset does,
  through reference counts: pytorch#13246).

``/proc/<pid>/smaps_rollup`` (Linux 4.14+) gives both in one read, but the kernel walks the page
tables to make it: about 8-13 ms of CPU for a 400-700 MB torch process (on a 2-core x86_64 VM), a
thousand times a read of RSS. A ``MemoryReader`` therefore spends about ``SMAPS_CPU_SHARE`` of one
core on it and serves the latest figures in between (RSS is always read fresh). Where
``smaps_rollup`` is missing (an older kernel, not Linux) or unreadable (another user's process, a
hardened kernel), the reading falls back to RSS for PSS and USS alike — upper bounds — and says so:
``exact`` is False and ``note`` gives the reason. Nothing here raises for a process that is gone.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

SMAPS_CPU_SHARE = 0.005
"""What reading ``smaps_rollup`` may cost on average, in CPU-seconds per wall second (0.005: 0.5% of one core).
A tree whose processes change is read at once whatever the budget: a worker's start costs far more."""
SOURCE_SMAPS = "smaps_rollup"
"""``memory_source`` of figures read exactly: PSS and USS from ``/proc/<pid>/smaps_rollup``."""
SOURCE_RSS = "rss"
"""``memory_source`` of figures that fell back to RSS (upper bounds of PSS and USS) for at least one process."""
_KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's memory.

    Attributes:
        pid: the process.
        rss_bytes: resident memory, shared pages included (read fresh every time).
        pss_bytes: proportional set size (each shared page split among its mappers); RSS when not ``exact``.
        uss_bytes: unique set size (private pages only); RSS when not ``exact``.
        measured_at: UNIX time when PSS and USS were read (they may be older than the RSS).
        exact: PSS and USS come from ``smaps_rollup``; False: they are the RSS, an upper bound.
        note: why they are not exact (empty when they are).
    """

    pid: int
    rss_bytes: int
    pss_bytes: int
    uss_bytes: int
    measured_at: float
    exact: bool = True
    note: str = ""


@dataclass(frozen=True, slots=True)
class WorkerMemory:
    """One DataLoader worker's unique memory at one reading.

    Attributes:
        pid: the worker.
        uss_bytes: its USS (its RSS when the reading is not exact).
        measured_at: UNIX time when it was read.
    """

    pid: int
    uss_bytes: int
    measured_at: float


@dataclass(frozen=True, slots=True)
class TreeMemory:
    """The training process tree's memory at one sample.

    Attributes:
        time: UNIX time of the sample.
        rss_bytes: summed RSS of the tree (counts shared pages once per process: kept for comparison).
        pss_bytes: summed PSS of the tree: its memory, each page once (summed RSS where not ``exact``).
        workers: the DataLoader workers' USS, in worker-id order.
        exact: every process of the tree was read from ``smaps_rollup``.
        note: why not (empty when exact).
    """

    time: float
    rss_bytes: int
    pss_bytes: int
    workers: tuple[WorkerMemory, ...] = ()
    exact: bool = True
    note: str = ""

    @property
    def source(self) -> str:
        """``"smaps_rollup"`` or ``"rss"`` (some process's PSS and USS fell back to its RSS)."""
        return SOURCE_SMAPS if self.exact else SOURCE_RSS

    def to_event(self, num_workers: int, config: str) -> dict[str, Any]:
        """The ``--record`` line of one system sample: ``{"event": "memory", ...}`` (MB; ``config`` was running)."""
        event: dict[str, Any] = {
            "event": "memory",
            "time": round(self.time, 6),
            "num_workers": num_workers,
            "config": config,
            "pss_mb": round(self.pss_bytes / MIB, 1),
            "rss_mb": round(self.rss_bytes / MIB, 1),
            "worker_uss_mb": [round(w.uss_bytes / MIB, 1) for w in self.workers],
            "memory_source": self.source,
        }
        if self.note:
            event["memory_note"] = self.note
        return event


def tree_memory(
    processes: Sequence[ProcessMemory], worker_pids: Collection[int], *, now: float | None = None
) -> TreeMemory:
    """The tree's figures from its processes' (``worker_pids`` name the DataLoader workers, in order)."""
    inexact = [p for p in processes if not p.exact]
    by_pid = {p.pid: p for p in processes}
    workers = tuple(
        WorkerMemory(pid, by_pid[pid].uss_bytes, by_pid[pid].measured_at) for pid in worker_pids if pid in by_pid
    )
    return TreeMemory(
        time=time.time() if now is None else now,
        rss_bytes=sum(p.rss_bytes for p in processes),
        pss_bytes=sum(p.pss_bytes for p in processes),
        workers=workers,
        exact=not inexact,
        note=_tree_note(inexact, len(processes)),
    )


def _tree_note(inexact: Sequence[ProcessMemory], total: int) -> str:
    if not inexact:
        return ""
    first = inexact[0].note
    if len(inexact) == 1:
        return f"{first}; its RSS counted for PSS and USS"
    return f"{first} (and {len(inexact) - 1} more of {total} processes); their RSS counted for PSS and USS"


def parse_smaps_rollup(text: bytes) -> tuple[int, int, int] | None:
    """``(rss, pss, uss)`` in bytes from the text of ``smaps_rollup``; None without an ``Rss`` line."""
    fields: dict[bytes, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * _KIB
    if b"Rss" not in fields:
        return None
    uss = fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0) + fields.get(b"Private_Hugetlb", 0)
    return fields[b"Rss"], fields.get(b"Pss", fields[b"Rss"]), uss


@dataclass(slots=True)
class _Entry:
    """The latest ``smaps_rollup`` read of one process (``pss`` None: it could not be read, ``note`` says why)."""

    pss: int | None
    uss: int
    read_at: float  # monotonic
    measured_at: float  # UNIX time
    cost_s: float
    note: str = ""


class MemoryReader:
    """Reads processes' memory; ``smaps_rollup`` at most ``cpu_share`` of one core on average, cached in between.

    A tree (``read_tree``) is read all at once, because a process's PSS changes when others start or stop
    sharing its pages (the main process's halves when a worker forks): figures of different moments
    would not add up. It is read again when its processes change, else once the CPU its last read took,
    over ``cpu_share``, has passed (10 ms for each of 4 processes at 0.5%: every 8 s). A single process
    (``read``) is read again on the same rule for its own share. Thread-safe: the system sampler and the
    autotuner share one.

    Args:
        cpu_share: the average CPU the ``smaps_rollup`` reads may take (CPU-seconds per wall second).
        proc_root: where ``<pid>/smaps_rollup`` is found (tests point it elsewhere to see the fallback).
    """

    def __init__(self, *, cpu_share: float = SMAPS_CPU_SHARE, proc_root: str = "/proc") -> None:
        if cpu_share <= 0:
            raise ValueError(f"the CPU share for smaps_rollup must be > 0, got {cpu_share}")
        self.cpu_share = cpu_share
        self.proc_root = proc_root
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, float], _Entry] = {}
        self._tree: frozenset[tuple[int, float]] = frozenset()  # the processes of the latest tree read
        self._tree_due = 0.0  # monotonic time when the tree is read again
        self.smaps_cpu_s = 0.0
        """CPU-seconds spent reading ``smaps_rollup`` so far (for the benchmark)."""
        self.smaps_reads = 0
        """How many times ``smaps_rollup`` was read so far."""

    def read(self, proc: psutil.Process) -> ProcessMemory | None:
        """``proc``'s memory now (PSS and USS as last read); None when it is gone or its RSS cannot be read."""
        found = _rss_and_key(proc)
        if found is None:
            return None
        with self._lock:
            entry = self._entries.get(found[1])
            now = time.monotonic()
            if entry is None or now - entry.read_at >= entry.cost_s * max(len(self._entries), 1) / self.cpu_share:
                entry = self._entries[found[1]] = self._read_smaps(proc.pid, now)
        return _memory(proc, found[0], entry)

    def read_tree(self, procs: Sequence[psutil.Process]) -> list[ProcessMemory]:
        """The memory of each of ``procs`` (a process tree), all read at one moment; those gone are left out."""
        found = [(proc, *rss_key) for proc in procs if (rss_key := _rss_and_key(proc)) is not None]
        keys = frozenset(key for _, _, key in found)
        with self._lock:
            now = time.monotonic()
            if keys != self._tree or now >= self._tree_due or any(key not in self._entries for key in keys):
                cost = 0.0
                for proc, _, key in found:
                    entry = self._entries[key] = self._read_smaps(proc.pid, now)
                    cost += entry.cost_s
                self._tree, self._tree_due = keys, now + cost / self.cpu_share
            entries = [self._entries[key] for _, _, key in found]
        memories = (_memory(proc, rss, entry) for (proc, rss, _), entry in zip(found, entries, strict=True))
        return [m for m in memories if m is not None]

    def _read_smaps(self, pid: int, now: float) -> _Entry:
        path = os.path.join(self.proc_root, str(pid), "smaps_rollup")
        started = time.thread_time()
        try:
            with open(path, "rb") as file:
                text = file.read()
        except OSError as exc:
            cost = time.thread_time() - started
            if exc.errno == errno.ESRCH:  # exiting: its memory is already given back
                return _Entry(0, 0, now, time.time(), cost)
            return _Entry(None, 0, now, time.time(), cost, f"PSS/USS of pid {pid} unreadable: {path} {_why(exc)}")
        cost = time.thread_time() - started
        self.smaps_cpu_s += cost
        self.smaps_reads += 1
        figures = parse_smaps_rollup(text)
        if figures is None:  # a zombie or a kernel thread: no memory map, nothing held
            return _Entry(0, 0, now, time.time(), cost)
        _rss, pss, uss = figures
        return _Entry(pss, uss, now, time.time(), cost)

    def retain(self, pids: Iterable[int]) -> None:
        """Forget the processes not in ``pids`` (they are gone or no longer followed)."""
        keep = set(pids)
        with self._lock:
            for key in [k for k in self._entries if k[0] not in keep]:
                del self._entries[key]


def _rss_and_key(proc: psutil.Process) -> tuple[int, tuple[int, float]] | None:
    """RSS now and the process's identity (a reused pid is another process); None when it is gone."""
    try:
        return int(proc.memory_info().rss), (proc.pid, proc.create_time())
    except psutil.Error:
        return None


def _memory(proc: psutil.Process, rss: int, entry: _Entry) -> ProcessMemory | None:
    if entry.pss is None:
        if not proc.is_running():  # it ended between the two reads: gone, not unreadable
            return None
        return ProcessMemory(proc.pid, rss, rss, rss, time.time(), exact=False, note=entry.note)
    return ProcessMemory(proc.pid, rss, entry.pss, entry.uss, entry.measured_at)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "does not exist (a kernel older than 4.14, or not Linux)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "is not readable (another user's process, or a hardened kernel)"
    return f"could not be read ({exc.strerror or exc})"


_shared: MemoryReader | None = None
_shared_lock = threading.Lock()


def shared_reader() -> MemoryReader:
    """This process's one ``MemoryReader``: every reader of memory in it shares one CPU budget and one cache."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MemoryReader()
        return _shared
