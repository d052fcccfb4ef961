"""The machine a process may use: CPU affinity, cgroup CPU quota and cpuset, cgroup memory limit.

Docker (``--cpus``, ``--memory``), Kubernetes limits, Slurm and systemd confine a process with
cgroups; the host's core count and available memory are then not what it may use. ``read_limits``
finds the process's cgroups through ``/proc/<pid>/cgroup`` and the mount table
(``/proc/self/mountinfo``), reads cgroup v2 (``cpu.max``, ``cpuset.cpus.effective``, ``memory.max``,
``memory.high``, ``memory.current``) or v1 (``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
``cpuset.cpus``, ``memory.limit_in_bytes``, ``memory.usage_in_bytes``) at every level from the
process's cgroup up to the top its mount shows (a parent's limit binds its children too), and
combines them with the affinity and the host's memory:

- usable cores = min(affinity, cpuset, quota / period); a quota of 1.5 CPUs stays 1.5;
- memory total = min(host total, limit); available = min(host available, limit - working set),
  the working set being usage less the inactive page cache (``inactive_file``), which the kernel
  reclaims before it kills anything (the kubelet's definition).

Anything unreadable or odd (a missing file, garbage in one, a cgroup gone because the process
moved) gives that figure from the host and a note saying so; nothing raises.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

V1_UNLIMITED_BYTES = 2**62
"""cgroup v1 writes "no limit" as a page-rounded LONG_MAX; any limit from here up is none."""

CACHE_S = 1.0
"""``current_limits`` reads the files again after this long (a process can be moved between cgroups)."""

GIB = 1024**3


def whole_cores(cores: float) -> int:
    """Usable cores as a whole number for counts: rounded up (a fraction of a core still runs a worker), at least 1."""
    return max(1, math.ceil(round(cores, 6)))


def usable_cores_phrase(cores: float, limits: Limits | None) -> str:
    """``2 usable cores``, or where a limit confines them ``1.5 usable cores (1.5 of 64 cores: cgroup v2 quota)``."""
    text = f"{round(cores, 2):g} usable core{'s' if cores != 1 else ''}"
    if limits is not None and limits.cores_confined:
        return f"{text} ({limits.cores_text()})"
    return text


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a cgroup sets.

    Attributes:
        value: CPUs (quota / period, or the cpuset's count) or bytes.
        source: where it came from, e.g. ``"cgroup v2 quota"``, ``"cgroup v1 memory limit"``.
        file: the file that set it (the tightest level's).
    """

    value: float
    source: str
    file: str


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What the process's cgroups allow; None where they set nothing (or could not be read: see ``notes``).

    Attributes:
        quota: the CPU quota in CPUs, the tightest over the levels.
        cpuset: the number of CPUs of the cpuset.
        memory: the memory limit in bytes (v2: the lower of ``memory.max`` and ``memory.high``).
        memory_headroom_bytes: the least, over the levels with a limit, of limit - working set.
        memory_usage_bytes: the working set of the level whose limit is ``memory``.
        notes: one sentence for each thing that could not be read, saying what is used instead.
    """

    quota: Limit | None = None
    cpuset: Limit | None = None
    memory: Limit | None = None
    memory_headroom_bytes: int | None = None
    memory_usage_bytes: int | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """The cores and memory this process may use, and where each figure came from.

    Attributes:
        cores: usable cores, min(affinity, cpuset, quota); fractional under a fractional quota.
        cores_source: ``"host"`` (nothing confines it), ``"CPU affinity"``, ``"cgroup v1 cpuset"``,
            ``"cgroup v2 quota"`` ...: what set ``cores``.
        cores_file: the cgroup file that set ``cores`` (None for the host and the affinity).
        host_cores: the machine's logical cores.
        affinity_cores: the cores of the process's CPU affinity.
        memory_total_bytes: the memory limit where one confines the process, else the host's memory.
        memory_available_bytes: min(host available, limit - working set).
        memory_source: ``"host"`` or the limit's source, e.g. ``"cgroup v1 memory limit"``.
        memory_file: the cgroup file that set the limit (None for the host).
        host_memory_total_bytes, host_memory_available_bytes: the host's memory.
        memory_usage_bytes: the confining cgroup's working set (None without a limit).
        notes: what could not be read and what is used instead.
    """

    cores: float
    cores_source: str
    cores_file: str | None
    host_cores: int
    affinity_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    memory_source: str
    memory_file: str | None
    host_memory_total_bytes: int
    host_memory_available_bytes: int
    memory_usage_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def core_count(self) -> int:
        """``cores`` as a whole number for counts (``whole_cores``)."""
        return whole_cores(self.cores)

    @property
    def cores_confined(self) -> bool:
        """Fewer cores than the host has."""
        return self.cores < self.host_cores

    @property
    def memory_confined(self) -> bool:
        """A memory limit below the host's memory."""
        return self.memory_source != "host"

    def cores_text(self) -> str:
        """``1.5 of 64 cores: cgroup v2 quota`` where confined, else ``64 cores``."""
        if not self.cores_confined:
            return f"{self.host_cores} core{'s' if self.host_cores != 1 else ''}"
        return f"{round(self.cores, 2):g} of {self.host_cores} cores: {self.cores_source}"

    def memory_text(self) -> str:
        """``3.0 of 23.5 GiB: cgroup v1 memory limit`` where confined, else ``23.5 GiB``."""
        total = f"{self.memory_total_bytes / GIB:.1f}"
        if not self.memory_confined:
            return f"{total} GiB"
        return f"{total} of {self.host_memory_total_bytes / GIB:.1f} GiB: {self.memory_source}"

    def to_json(self) -> dict[str, object]:
        """The figures and their sources, for the JSON report's ``machine`` block."""
        return {
            "cores_source": self.cores_source,
            "cores_file": self.cores_file,
            "host_cores": self.host_cores,
            "affinity_cores": self.affinity_cores,
            "memory_available_mb": round(self.memory_available_bytes / 2**20),
            "memory_source": self.memory_source,
            "memory_file": self.memory_file,
            "host_memory_total_mb": round(self.host_memory_total_bytes / 2**20),
            "limit_notes": list(self.notes),
        }


# ---------------------------------------------------------------- reading the cgroups


@dataclass(frozen=True, slots=True)
class _Place:
    """Where one controller's cgroup of the process lies."""

    version: int
    directory: Path  # the process's cgroup directory
    top: Path  # the mount point: the highest level this mount shows


class _Unreadable(Exception):
    """A cgroup file that exists but says something this module cannot read."""


def read_cgroups(root: str | os.PathLike[str] = "/", pid: int | str = "self") -> CgroupLimits:
    """The limits the cgroups of process ``pid`` set, read under ``root`` (``"/"``; a fake tree in tests).

    Reads ``root/proc/<pid>/cgroup``, ``root/proc/self/mountinfo`` (the mounts this process sees,
    where the cgroup paths of ``pid``, shown relative to this process's cgroup namespace, are found)
    and the cgroup files under the mount points, which are taken relative to ``root``.
    """
    base = Path(root)
    notes: list[str] = []
    try:
        memberships = _memberships(base / "proc" / str(pid) / "cgroup")
        mounts = _mounts(base / "proc" / "self" / "mountinfo")
    except (OSError, ValueError, IndexError) as exc:  # ValueError: also text that is not UTF-8
        return CgroupLimits(notes=(f"cannot read the process's cgroups ({_reason(exc)}): using the host's figures",))
    try:
        places = {c: _place(c, memberships, mounts, base, notes) for c in ("cpu", "cpuset", "memory")}
        quota = _guarded(_quota, places["cpu"], "CPU quota", "the affinity", notes)
        cpuset = _guarded(_cpuset, places["cpuset"], "cpuset", "the affinity", notes)
        memory = _guarded(_memory, places["memory"], "memory limit", "the host's memory", notes)
    except Exception as exc:  # noqa: BLE001 - a monitor must not fail on a kernel's odd file: the host's figures
        return CgroupLimits(
            notes=(*notes, f"reading the cgroups failed ({type(exc).__name__}: {exc}): using the host's figures")
        )
    limit, headroom, usage = memory if memory is not None else (None, None, None)
    return CgroupLimits(
        quota=quota,
        cpuset=cpuset,
        memory=limit,
        memory_headroom_bytes=headroom,
        memory_usage_bytes=usage,
        notes=tuple(notes),
    )


def _guarded(read: Callable[[_Place], T], place: _Place | None, what: str, instead: str, notes: list[str]) -> T | None:
    """``read(place)``, or None with a note when a file is unreadable or odd."""
    if place is None:
        return None
    try:
        return read(place)
    except _Unreadable as exc:
        notes.append(f"{what} unknown ({exc}): using {instead}")
    except OSError as exc:
        where = exc.filename
        notes.append(f"{what} unknown (cannot read {f'{where}: ' if where else ''}{_reason(exc)}): using {instead}")
    return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _memberships(path: Path) -> dict[str, str]:
    """``/proc/<pid>/cgroup``: controller -> cgroup path (``""`` names the v2 hierarchy)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        _hierarchy, controllers, cgroup = line.split(":", 2)
        if not cgroup.startswith("/"):
            raise ValueError(f"odd line {line!r} in {path}")
        for controller in controllers.split(",") if controllers else [""]:
            found[controller.removeprefix("name=")] = cgroup
    return found


def _unescape(text: str) -> str:
    """mountinfo writes a space as ``\\040`` and so on."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mounts(path: Path) -> list[tuple[int, frozenset[str], str, str]]:
    """The cgroup mounts: (version, controllers (v1), mount root, mount point)."""
    mounts: list[tuple[int, frozenset[str], str, str]] = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        kind = fields[dash + 1]
        if kind == "cgroup2":
            mounts.append((2, frozenset(), _unescape(fields[3]), _unescape(fields[4])))
        elif kind == "cgroup":
            options = frozenset(fields[dash + 3].split(",")) if len(fields) > dash + 3 else frozenset()
            mounts.append((1, options, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _place(
    controller: str,
    memberships: dict[str, str],
    mounts: list[tuple[int, frozenset[str], str, str]],
    base: Path,
    notes: list[str],
) -> _Place | None:
    """Where the process's cgroup for ``controller`` is; None where there is none to read (a note if that is odd)."""
    if controller in memberships:  # a v1 hierarchy holds it (a hybrid system's v2 one then has it not)
        version, cgroup = 1, memberships[controller]
        candidates = [m for m in mounts if m[0] == 1 and controller in m[1]]
    elif "" in memberships:
        version, cgroup = 2, memberships[""]
        candidates = [m for m in mounts if m[0] == 2]
    else:
        return None
    for _v, _options, mount_root, mount_point in candidates:
        inside = _relative(cgroup, mount_root)
        if inside is None:
            continue
        top = base / mount_point.lstrip("/")
        directory = top / inside if inside else top
        if version == 2 and controller not in _v2_controllers(top):
            return None  # the controller is not on in the v2 hierarchy (a hybrid system's v1 has it, or none)
        if not directory.is_dir():
            notes.append(
                f"cgroup v{version} {controller}: {directory} is gone (the process was moved to another "
                f"cgroup?): using the host's figures for it"
            )
            return None
        return _Place(version, directory, top)
    if cgroup != "/" and (candidates or version == 1):
        notes.append(
            f"cgroup v{version} {controller}: its cgroup {cgroup} is not under a mount this process sees: "
            "using the host's figures for it"
        )
    return None


def _relative(cgroup: str, mount_root: str) -> str | None:
    """``cgroup`` relative to ``mount_root`` (``""`` for the root itself); None when it lies outside."""
    parts = [p for p in cgroup.split("/") if p]
    root_parts = [p for p in mount_root.split("/") if p]
    if ".." in parts or parts[: len(root_parts)] != root_parts:
        return None
    return "/".join(parts[len(root_parts) :])


def _v2_controllers(top: Path) -> set[str]:
    try:
        return set((top / "cgroup.controllers").read_text().split())
    except (OSError, UnicodeDecodeError):
        return set()


def _levels(place: _Place) -> list[Path]:
    """The process's cgroup directory, then each parent up to the mount point."""
    levels = [place.directory]
    while levels[-1] != place.top and levels[-1].parent != levels[-1]:
        levels.append(levels[-1].parent)
    return levels


def _read(path: Path) -> str | None:
    """The file's text, stripped; None when it does not exist (a level without that controller's file)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _Unreadable(f"{path} is not text") from None


def _number(path: Path, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Unreadable(f"{path} says {text[:40]!r}") from None


def _check_leaf(place: _Place, controller: str, name: str) -> None:
    """Raise when the process's own cgroup lacks a file its controller always has there.

    v1: every cgroup of a hierarchy has its controller's files. v2: a non-root cgroup has them when its
    ``cgroup.controllers`` lists the controller (the top of the mount may be the real root, which has none).
    """
    if (place.directory / name).exists():
        return
    if place.version == 1 or (place.directory != place.top and controller in _v2_controllers(place.directory)):
        raise _Unreadable(f"{place.directory / name} is missing")


def _quota(place: _Place) -> Limit | None:
    """The tightest CPU quota over the levels, in CPUs."""
    _check_leaf(place, "cpu", "cpu.max" if place.version == 2 else "cpu.cfs_quota_us")
    best: Limit | None = None
    for level in _levels(place):
        if place.version == 2:
            path = level / "cpu.max"
            text = _read(path)
            if text is None:
                continue
            words = text.split()
            if not words or len(words) > 2:
                raise _Unreadable(f"{path} says {text[:40]!r}")
            if words[0] == "max":
                continue
            quota = _number(path, words[0])
            period = _number(path, words[1]) if len(words) == 2 else 100_000
        else:
            path = level / "cpu.cfs_quota_us"
            text = _read(path)
            if text is None:
                continue
            quota = _number(path, text)
            if quota < 0:  # -1: no quota
                continue
            period_path = level / "cpu.cfs_period_us"
            period_text = _read(period_path)
            if period_text is None:
                raise _Unreadable(f"{period_path} is missing")
            period = _number(period_path, period_text)
        if quota <= 0 or period <= 0:
            raise _Unreadable(f"{path} says {text[:40]!r}")
        cpus = quota / period
        if best is None or cpus < best.value:
            best = Limit(cpus, f"cgroup v{place.version} quota", str(path))
    return best


def parse_cpu_list(text: str) -> int:
    """The number of CPUs in a kernel CPU list such as ``0-3,8,10-11``.

    Raises:
        ValueError: for anything that is not such a list.
    """
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last) if last else int(first)
        if high < low or low < 0:
            raise ValueError(part)
        count += high - low + 1
    return count


def _cpuset(place: _Place) -> Limit | None:
    """The number of CPUs of the process's cpuset (effective where the kernel says so)."""
    names = ("cpuset.cpus.effective", "cpuset.cpus") if place.version == 2 else ("cpuset.effective_cpus", "cpuset.cpus")
    for level in _levels(place):
        for name in names:
            path = level / name
            text = _read(path)
            if not text:  # a v2 cgroup's own cpuset.cpus is empty until set: its parent's applies
                continue
            try:
                return Limit(float(parse_cpu_list(text)), f"cgroup v{place.version} cpuset", str(path))
            except ValueError:
                raise _Unreadable(f"{path} says {text[:40]!r}") from None
        if place.version == 1:
            break  # a v1 cpuset with tasks always has its own list
    if place.version == 1:
        raise _Unreadable(f"{place.directory / 'cpuset.cpus'} is missing")
    return None


def _inactive_file(level: Path, version: int) -> int:
    """The cgroup's inactive page cache (0 where ``memory.stat`` is missing or lacks it: its whole use counts)."""
    text = _read(level / "memory.stat")
    if text is None:
        return 0
    lines = text.splitlines()
    stats = dict(line.split(None, 1) for line in lines if " " in line)
    for key in ("total_inactive_file", "inactive_file") if version == 1 else ("inactive_file",):
        try:
            return max(int(stats[key]), 0)
        except (KeyError, ValueError):
            continue
    return 0


def _memory(place: _Place) -> tuple[Limit | None, int | None, int | None]:
    """The tightest memory limit over the levels, the least headroom under any, and the limiting level's use."""
    _check_leaf(place, "memory", "memory.max" if place.version == 2 else "memory.limit_in_bytes")
    best: Limit | None = None
    headroom: int | None = None
    usage_at_best: int | None = None
    for level in _levels(place):
        if place.version == 2:
            limit: Limit | None = None
            for name, source in (("memory.max", "cgroup v2 memory.max"), ("memory.high", "cgroup v2 memory.high")):
                path = level / name
                text = _read(path)
                if text is None:
                    continue
                if text == "max":
                    continue
                value = _number(path, text)
                if limit is None or value < limit.value:
                    limit = Limit(float(value), source, str(path))
            usage_name = "memory.current"
        else:
            path = level / "memory.limit_in_bytes"
            text = _read(path)
            if text is None:
                continue
            value = _number(path, text)
            limit = Limit(float(value), "cgroup v1 memory limit", str(path)) if value < V1_UNLIMITED_BYTES else None
            usage_name = "memory.usage_in_bytes"
        if limit is None:
            continue
        usage_path = level / usage_name
        usage_text = _read(usage_path)
        if usage_text is None:
            raise _Unreadable(f"{usage_path} is missing")
        used = max(_number(usage_path, usage_text) - _inactive_file(level, place.version), 0)
        room = max(int(limit.value) - used, 0)
        headroom = room if headroom is None else min(headroom, room)
        if best is None or limit.value < best.value:
            best, usage_at_best = limit, used
    return best, headroom, usage_at_best


# ---------------------------------------------------------------- combining with the host


def combine(
    cgroups: CgroupLimits,
    *,
    host_cores: int,
    affinity_cores: int,
    host_memory_total_bytes: int,
    host_memory_available_bytes: int,
) -> Limits:
    """The usable cores and memory: the host's figures, tightened by each limit the cgroups set."""
    cores: float = affinity_cores
    source, file = ("host" if affinity_cores >= host_cores else "CPU affinity"), None
    for limit in (cgroups.cpuset, cgroups.quota):  # a cpuset equal to the affinity explains it: named first
        if limit is not None and limit.value <= cores and limit.value < host_cores:
            cores, source, file = limit.value, limit.source, limit.file
    total, available = host_memory_total_bytes, host_memory_available_bytes
    memory_source, memory_file, usage = "host", None, None
    if cgroups.memory is not None and cgroups.memory.value < host_memory_total_bytes:
        total = int(cgroups.memory.value)
        memory_source, memory_file, usage = cgroups.memory.source, cgroups.memory.file, cgroups.memory_usage_bytes
    if cgroups.memory_headroom_bytes is not None:
        available = min(available, cgroups.memory_headroom_bytes)
    return Limits(
        cores=cores,
        cores_source=source,
        cores_file=file,
        host_cores=host_cores,
        affinity_cores=affinity_cores,
        memory_total_bytes=total,
        memory_available_bytes=available,
        memory_source=memory_source,
        memory_file=memory_file,
        host_memory_total_bytes=host_memory_total_bytes,
        host_memory_available_bytes=host_memory_available_bytes,
        memory_usage_bytes=usage,
        notes=cgroups.notes,
    )


def affinity_cores(pid: int = 0) -> int:
    """The cores of the process's CPU affinity where the platform has one, else every logical core."""
    try:
        return len(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_limits(root: str | os.PathLike[str] = "/", pid: int | None = None) -> Limits:
    """The limits of process ``pid`` (default: this one), the cgroups read under ``root``."""
    import psutil

    memory = psutil.virtual_memory()
    affinity = affinity_cores(pid or 0)
    return combine(
        read_cgroups(root, pid if pid is not None else "self"),
        host_cores=os.cpu_count() or affinity,
        affinity_cores=affinity,
        host_memory_total_bytes=int(memory.total),
        host_memory_available_bytes=int(memory.available),
    )


_cache: dict[int | None, tuple[float, Limits]] = {}
_cache_lock = threading.Lock()


def current_limits(pid: int | None = None) -> Limits:
    """``read_limits()`` for this process (or ``pid``), read again at most once every ``CACHE_S``."""
    now = time.monotonic()
    affinity = affinity_cores(pid or 0)  # a syscall: a changed affinity is seen at once, not a second later
    with _cache_lock:
        cached = _cache.get(pid)
        if cached is not None and now - cached[0] < CACHE_S and cached[1].affinity_cores == affinity:
            return cached[1]
    limits = read_limits(pid=pid)
    with _cache_lock:
        _cache[pid] = (now, limits)
    return limits
