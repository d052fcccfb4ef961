"""Stage timing: where each sample's time goes inside a loader's workers, measured without edits.

The stages and what is measured of them are in ``loadertop.core.protocol.stages``. How:

- In a worker (the loader's ``worker_init_fn`` is wrapped while its iterator starts the workers,
  ``StageInit``), torch's map-style fetcher is timed (``torch_compat.time_map_fetches``): each
  ``dataset[index]`` (or ``__getitems__``) and the ``collate_fn``; the ``Compose`` transforms of the
  worker's copy of the dataset are given a timed subclass of their own class (``isinstance``, the
  object and its state unchanged); PIL's and ``torchvision.io``'s decoders and file reads, as
  the worker's modules have them, are wrapped. None of this touches the loop's process.
- At 0 workers the loop's process fetches: its iterator's fetcher is wrapped, so a sample is timed
  as a whole and the collate apart; transforms and decoders there are not wrapped (they are the
  script's own objects and modules).
- Each process adds up its figures in one flat list and writes it to its row of a small tensor in
  shared memory after each collate (once a batch; at 0 workers the list is read where it is): no
  message per sample, no lock on the loop's path. The loader reads the rows when asked
  (``LoaderStages.figures``).
- Nothing here draws a random number from torch's, Python's or NumPy's global generators or the
  loader's: which fetches read the CPU clock comes from a private ``random.Random``.
- A timer that fails to install turns itself off for that worker with a reason the loader reports
  (``StageFigures.off``); the fetch goes on as torch's own.
"""

from __future__ import annotations

import copyreg
import ctypes
import functools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from loadertop.core.probe import torch_compat
from loadertop.core.protocol.stages import (
    BATCH_STAGES,
    COLLATE,
    CPU_EVERY,
    DECODE,
    HIST_BUCKETS,
    PIN,
    READ,
    REST,
    StageFigures,
    StageTime,
    bucket_of,
)

_clock = time.perf_counter
_cpu = time.thread_time

FIELDS = 5
"""Per stage in a sheet's row: calls, wall seconds, calls whose CPU was read, their wall seconds, their CPU seconds."""


HEADER = 5
"""A row's first fields: samples, batches, then the samples its storage figures cover, the bytes read from storage
and the bytes read in all (``/proc``'s ``read_bytes`` and ``rchar``). A recorder leaves the first two at 0: they
are the sample stage's calls and the collate's, read from there (``StageSheet.totals``): two additions fewer a
fetch."""


def field_at(stage: int) -> int:
    """Where stage number ``stage``'s fields begin in a row: after the row's ``HEADER``."""
    return HEADER + FIELDS * stage


class IoCounter:
    """Bytes a process (``/proc/self/io``) or a thread (``/proc/thread-self/io``) has read: from storage
    (``read_bytes``: what came from the block device, so not a page-cache hit) and in all (``rchar``: every
    ``read`` and ``pread``, the cache's included). One ``pread`` of a file kept open: about 2 us.

    The counter's own reads of the file are left out of ``rchar`` (the kernel counts them: ~110 bytes each).
    ``read()`` is None where the file cannot be opened (not Linux, a locked-down ``/proc``).
    """

    __slots__ = ("fd", "own")

    def __init__(self, path: str) -> None:
        self.own = 0  # bytes this counter's reads returned so far
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self.fd = None

    def read(self) -> tuple[int, int] | None:
        """``(read_bytes, rchar)`` now, less this counter's own reads, or None."""
        if self.fd is None:
            return None
        try:
            data = os.pread(self.fd, 512, 0)
            fields = data.split()
            counts = int(fields[fields.index(b"read_bytes:") + 1]), int(fields[1]) - self.own
        except (OSError, ValueError, IndexError):
            return None
        self.own += len(data)
        return counts

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # the loader went away with its latest generation's counter open
        self.close()


_OFF_CHARS = 240
"""Bytes of a row's reason for turning off (UTF-8, NUL-padded)."""

_CHAIN_DEPTH = 4
"""How deep ``.dataset`` attributes are followed to find a ``transform`` (a Subset of a wrapper of the dataset)."""

STAGE_NOTE = "loadertop: raised in the sample's "
"""How the note stage timing adds to a sample's exception begins (the stage's name follows)."""

_RECORDER: Recorder | None = None
"""This worker process's recorder (None in the loop's process and where timing is off)."""

IO_GAP_S = 0.05
"""At 0 workers, a fetch that reads the CPU clock reads the thread's bytes too where this long has passed since the
last one that did (two ``pread`` of ``/proc/thread-self/io``: 2 us each when called in a row, 10-20 us each
between a loop's batches, its kernel paths gone cold): at most 20 such fetches a second, whatever the batch rate."""

LOOP_CPU_GAP_S = 0.004
"""At 0 workers, the fetches that read the CPU clock are one in ``CPU_EVERY``, or fewer where a fetch is shorter
than this over ``CPU_EVERY``: one in about this long over a fetch's wall (the mean of the loop's first
``LOOP_CALIBRATION``), at most ``LOOP_EVERY_MAX``. Set once, so that every later fetch of the loop is as likely to
be read (no bias to slow periods).
A fetch that reads it costs the loop three ``thread_time`` calls (system calls, ~0.5 us each between a loop's
batches, and as much again in the cold caches after them): on a 50 us fetch of trivial samples one in 8 cost 4%."""

LOOP_EVERY_MAX = 64

LOOP_CALIBRATION = 32
"""The fetches a loop makes, one in ``CPU_EVERY`` of them read, before its gap is set from their mean wall time (a
loop's first fetches are its slowest: cold caches, lazy set-up)."""

_PINNING: dict[int, tuple[threading.Thread, BatchTimer, bool]] = {}
"""In the loop's process, by thread ident: the thread, the pin-memory stage's timer of the loader it pins for
and whether for its next pinning only (a pin-memory thread: its generation's, while it lives; a 0-worker loop's
thread: the batch it just fetched)."""


def _pin_for(thread: threading.Thread, timer: BatchTimer, *, once: bool) -> None:
    """Time ``thread``'s pinning into ``timer`` (``once``: its next only); threads that ended are forgotten."""
    for ident in [ident for ident, (other, _, _) in _PINNING.items() if not other.is_alive()]:
        _PINNING.pop(ident, None)
    if thread.ident is not None:
        _PINNING[thread.ident] = (thread, timer, once)


# ------------------------------------------------------------------ the plan: which stages, in which order


def composes(dataset: Any) -> list[Any]:
    """The torchvision ``Compose`` objects of ``dataset``'s ``transform`` (or of a dataset it wraps), outermost
    first."""
    found: list[Any] = []
    seen: set[int] = set()
    node = dataset
    for _ in range(_CHAIN_DEPTH):
        if node is None or id(node) in seen:
            break
        seen.add(id(node))
        try:
            transform = getattr(node, "transform", None)
        except Exception:  # noqa: BLE001 - a property that raises: nothing to time there
            transform = None
        if _is_compose(transform) and all(transform is not known for known in found):
            found.append(transform)
        try:
            node = getattr(node, "dataset", None)
        except Exception:  # noqa: BLE001
            break
    return found


def _is_compose(obj: Any) -> bool:
    """A torchvision ``Compose`` (v1 or v2), by its class's name and module and a list of its transforms."""
    kind = type(obj)
    return (
        kind.__name__ == "Compose"
        and kind.__module__.startswith("torchvision.transforms")
        and isinstance(getattr(obj, "transforms", None), (list, tuple))
    )


def stage_names(dataset: Any) -> tuple[str, ...]:
    """The stages of ``dataset``'s samples, in their order: read, decode, each transform, the rest, collate."""
    names = [READ, DECODE]
    counts: dict[str, int] = {}
    for compose in composes(dataset):
        for transform in compose.transforms:
            name = type(transform).__name__
            counts[name] = counts.get(name, 0) + 1
            names.append(name if counts[name] == 1 else f"{name}#{counts[name]}")
    return (*names, REST, COLLATE)


_READ_AT, _DECODE_AT, _FIRST_TRANSFORM = 0, 1, 2


# ------------------------------------------------------------------ the shared sheet


class BatchTimer:
    """A stage once a batch in the loop's process (``BATCH_STAGES``): every call's wall and thread CPU, in
    ``FIELDS`` figures as a sheet row has them. A call inside a call (torch's ``pin_memory`` pins a batch's
    parts through itself) is part of the outer one."""

    __slots__ = ("active", "fields", "hist")

    def __init__(self) -> None:
        self.fields = [0.0] * FIELDS
        self.hist = [0] * HIST_BUCKETS
        self.active = False

    def add(self, wall_s: float, cpu_s: float) -> None:
        """One call of ``wall_s`` seconds and ``cpu_s`` of the thread's CPU."""
        fields = self.fields
        fields[0] += 1
        fields[1] += wall_s
        fields[2] += 1
        fields[3] += wall_s
        fields[4] += cpu_s
        self.hist[bucket_of(wall_s)] += 1

    def time(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, timed as one call."""
        if self.active:
            return fn(*args)
        self.active = True
        c0 = _cpu()
        t0 = _clock()
        try:
            return fn(*args)
        finally:
            self.add(_clock() - t0, _cpu() - c0)
            self.active = False


def _timed_pin(stock: Callable[..., Any]) -> Callable[..., Any]:
    """Torch's ``pin_memory``, timed for the loader the calling thread pins for (else torch's own)."""

    @functools.wraps(stock)
    def pin_memory(data: Any, device: Any = None) -> Any:
        entry = _PINNING.get(threading.get_ident())
        if entry is None:
            return stock(data, device)
        thread, timer, once = entry
        if thread is not threading.current_thread():  # a thread that ended had this ident
            return stock(data, device)
        if once and not timer.active:
            _PINNING.pop(thread.ident or 0, None)
        return timer.time(stock, data, device)

    return pin_memory


def _pinning_for(fetch: Callable[[Any], Any], timer: BatchTimer) -> Callable[[Any], Any]:
    """A 0-worker loop's timed ``fetch``, after which the fetching thread's pinning counts for ``timer``."""

    def fetch_then_pin(index: Any) -> Any:
        batch = fetch(index)
        _PINNING[threading.get_ident()] = (threading.current_thread(), timer, True)
        return batch

    return fetch_then_pin


def _writer(row: torch.Tensor, kind: Any) -> Callable[[list[Any]], None]:
    """A function writing a list into ``row`` (a tensor of ``kind``'s C type) through a ``ctypes`` view."""
    view = (kind * row.numel()).from_address(row.data_ptr())

    def write(values: list[Any]) -> None:
        view[:] = values
        _ = row  # the view's memory stays the tensor's

    return write


class StageSheet:
    """One worker generation's figures: a row of a small shared-memory tensor per worker (one at 0 workers), and
    the loop's process's once-a-batch stages (``batch``)."""

    def __init__(self, names: tuple[str, ...], num_workers: int) -> None:
        self.names = names
        self.num_workers = num_workers
        slots = max(1, num_workers)
        self.table = torch.zeros((slots, field_at(len(names))), dtype=torch.float64)
        self.hists = torch.zeros((slots, HIST_BUCKETS * len(names)), dtype=torch.int64)
        """Each worker's histograms: ``HIST_BUCKETS`` a stage, in the stages' order (written on the fetches whose
        CPU was read, the calls they count)."""
        self.off = torch.zeros((slots, _OFF_CHARS), dtype=torch.uint8)
        if num_workers:  # the workers write their rows; a fork shares it, a spawn receives it as shared memory
            self.table.share_memory_()
            self.hists.share_memory_()
            self.off.share_memory_()
        self.local_recorder: Recorder | None = None
        """At 0 workers, the loop's process's recorder while its generation runs: its row and histograms are read
        where they are (no write a batch); its bytes-read counter is closed when the generation is done."""
        self.batch = {name: BatchTimer() for name in BATCH_STAGES}
        """The stages once a batch in the loop's process: pinning, the copy to the device."""

    @property
    def frozen(self) -> bool:
        """Its generation is done and its figures are in private memory (``freeze``)."""
        return self.local_recorder is None and not self.table.is_shared()

    def freeze(self) -> None:
        """Keep the figures in private memory: the generation's workers are gone (a shared tensor holds a file
        descriptor and a mapping while it lives; at 0 workers the recorder's own list is copied)."""
        if self.table.is_shared():
            self.table = self.table.clone()
            self.hists = self.hists.clone()
            self.off = self.off.clone()
        recorder = self.local_recorder
        if recorder is not None:
            self.table[0] = torch.tensor(recorder.loop_row(), dtype=torch.float64)
            self.hists[0] = torch.tensor(recorder.hist, dtype=torch.int64)
            recorder.close()
            self.local_recorder = None
        pin = self.batch[PIN]
        for ident in [ident for ident, (_, timer, _) in _PINNING.items() if timer is pin]:  # its pinning is done
            _PINNING.pop(ident, None)

    def absorb(self, other: StageSheet) -> None:
        """Add a frozen sheet of the same stages and worker count to this frozen one (one sheet a count, however
        many generations ran it: reading the figures stays as cheap)."""
        self.table += other.table
        self.hists += other.hists
        for name, timer in other.batch.items():
            mine = self.batch[name]
            mine.fields[:] = [a + b for a, b in zip(mine.fields, timer.fields, strict=True)]
            mine.hist[:] = [a + b for a, b in zip(mine.hist, timer.hist, strict=True)]
        if self.off_reason() is None and (reason := other.off_reason()) is not None:
            self.turn_off(0, reason)

    def row_writer(self, slot: int) -> Callable[[list[float]], None]:
        """A function writing ``slot``'s row (``HEADER``, then each stage's fields): a slice assignment through a
        ``ctypes`` view of the tensor's memory (well under a microsecond; the tensor is kept alive)."""
        return _writer(self.table[slot], ctypes.c_double)

    def hist_writer(self, slot: int) -> Callable[[list[int]], None]:
        """A function writing ``slot``'s histograms, as ``row_writer`` writes its row."""
        return _writer(self.hists[slot], ctypes.c_int64)

    def hist_totals(self) -> dict[str, list[int]]:
        """Each stage's histogram by name, over the workers (then the loop process's once-a-batch stages)."""
        local = self.local_recorder
        summed = list(local.hist) if local is not None else self.hists.sum(dim=0).tolist()
        hists = {name: summed[HIST_BUCKETS * i : HIST_BUCKETS * (i + 1)] for i, name in enumerate(self.names)}
        for name, timer in self.batch.items():
            hists[name] = list(timer.hist)
        return hists

    def turn_off(self, slot: int, reason: str) -> None:
        """Record why ``slot``'s timing turned itself off."""
        data = reason.encode("utf-8", "replace")[: _OFF_CHARS - 1]
        self.off[slot].zero_()
        if data:
            self.off[slot, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)

    def off_reason(self) -> str | None:
        """The first worker's reason for turning off, if one did."""
        for slot in range(self.off.shape[0]):
            data = bytes(self.off[slot].tolist()).rstrip(b"\0")
            if data:
                return data.decode("utf-8", "replace")
        return None

    def totals(self) -> tuple[list[float], dict[str, list[float]]]:
        """The ``HEADER`` fields and each stage's fields by name, over the workers (then the loop process's
        once-a-batch stages)."""
        local = self.local_recorder
        summed = local.loop_row() if local is not None else self.table.sum(dim=0).tolist()
        fields = {name: summed[field_at(i) : field_at(i + 1)] for i, name in enumerate(self.names)}
        summed[0] = fields[self.names[-2]][0]  # the samples: the sample stage's calls
        summed[1] = fields[self.names[-1]][0]  # the batches: the collate's
        for name, timer in self.batch.items():
            fields[name] = list(timer.fields)
        return summed[:HEADER], fields


def figures_of(sheets: list[StageSheet]) -> StageFigures:
    """The figures of ``sheets`` (generations with the same worker count), added up stage by stage, by name: a
    dataset whose transforms changed between epochs has the stages of both, in the order they first ran.

    The recorded sample stage is a fetch's samples as a whole: its rest is that less what the other stages
    measured inside it (read, decode and transforms run only inside the samples).
    """
    header = [0.0] * HEADER
    sums: dict[str, list[float]] = {}  # insertion order: the order the stages first ran
    hists: dict[str, list[int]] = {}
    for sheet in sheets:
        got, fields = sheet.totals()
        header = [a + b for a, b in zip(header, got, strict=True)]
        for name, field in fields.items():
            total = sums.setdefault(name, [0.0] * FIELDS)
            for i in range(FIELDS):
                total[i] += field[i]
        for name, hist in sheet.hist_totals().items():
            counted = hists.setdefault(name, [0] * HIST_BUCKETS)
            counted[:] = [a + b for a, b in zip(counted, hist, strict=True)]
    outer = (REST, COLLATE, *BATCH_STAGES)  # the stages not inside a sample, in their order
    inner = [field for name, field in sums.items() if name not in outer]
    names = [*(name for name in sums if name not in outer), *outer]
    rest = sums.setdefault(REST, [0.0] * FIELDS)
    for name in outer:
        sums.setdefault(name, [0.0] * FIELDS)
    rest[1] = max(0.0, rest[1] - sum(stage[1] for stage in inner))
    # The sampled samples' rest: their whole wall and CPU less the inner stages' on those same samples.
    rest[3] = max(0.0, rest[3] - sum(stage[3] for stage in inner))
    rest[4] = max(0.0, rest[4] - sum(stage[4] for stage in inner))
    stages = tuple(
        StageTime(name, int(field[0]), field[1], int(field[2]), field[3], field[4], _trimmed(hists.get(name)))
        for name in names
        if (field := sums[name])[0] > 0
    )
    off = next((reason for sheet in sheets if (reason := sheet.off_reason())), None)
    samples, batches, io_samples, storage, read = (int(x) for x in header)
    return StageFigures(sheets[0].num_workers, samples, batches, stages, off, io_samples, storage, read)


def _trimmed(hist: list[int] | None) -> tuple[int, ...]:
    """A histogram as ``StageTime.hist`` has it: () where nothing was counted."""
    return tuple(int(count) for count in hist) if hist and any(hist) else ()


# ------------------------------------------------------------------ the recorder: one per fetching process


class Recorder:
    """Adds up one process's stage figures in a flat list laid out as its sheet row, written after each collate.

    ``row[2:5]`` the bytes read (``HEADER``; the samples and batches are the stages' calls), then per stage ``FIELDS``
    figures from ``field_at(stage)``: calls, wall seconds, calls whose CPU was read, their wall seconds, their CPU
    seconds.

    Bytes read: in a worker (``whole_process``) everything the process read since its recorder started, read at
    each collate (a worker does nothing but fetch); in the loop's process the fetching thread's reads during
    the fetches that read the CPU clock, ``IO_GAP_S`` apart or more (the rest of the thread's reads are the
    training's).
    """

    __slots__ = (
        "active",
        "countdown",
        "depth",
        "every",
        "hist",
        "inner",
        "inner_cpu",
        "io",
        "io_base",
        "io_next",
        "io_thread",
        "loop_totals",
        "names",
        "parts",
        "pick",
        "rest_at",
        "row",
        "sampled",
        "write",
        "write_hist",
    )

    def __init__(
        self,
        names: tuple[str, ...],
        write: Callable[[list[float]], None] | None,
        seed: int,
        *,
        whole_process: bool,
        write_hist: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.names = names
        self.write = write  # None: the row is read where it is (the loop's own process)
        self.write_hist = write_hist  # with ``write``: the histograms' (written after a fetch that counts them)
        self.row = [0.0] * field_at(len(names))
        self.hist = [0] * (HIST_BUCKETS * len(names))  # each stage's, from HIST_BUCKETS * its number
        self.rest_at = field_at(len(names) - 2)  # the sample stage (a fetch's samples as a whole)
        self.active = False  # inside a fetch's samples
        self.sampled = False  # this fetch reads the CPU clock
        self.depth = 0  # inside a decode or read (nested ones are part of the outer)
        self.inner = 0.0  # wall seconds of decodes and reads so far (a transform subtracts those inside it)
        self.inner_cpu = 0.0
        self.pick = random.Random(seed).random  # a private generator: no draw from the script's
        # The first between the 2nd fetch and the CPU_EVERY + 1st: a process's first fetch pays its first calls
        # (imports, lazy set-up; in a spawned worker tens of ms) that no later sample costs.
        self.countdown = 2 + int(self.pick() * CPU_EVERY)
        self.every = CPU_EVERY if whole_process else 0  # one fetch in this many is sampled (0: LOOP_CPU_GAP_S's)
        self.io: IoCounter | None = IoCounter("/proc/self/io") if whole_process else None
        self.io_base = self.io.read() if self.io is not None else None
        self.io_thread = 0  # at 0 workers: the thread whose counter ``io`` is (opened by the fetching thread)
        self.io_next = 0.0  # at 0 workers: the clock from which a sampled fetch reads the thread's bytes
        self.parts: tuple[Any, ...] | None = None  # (fetcher, get, collate_fn, single) of the fetcher seen last
        self.loop_totals: Callable[[], tuple[int, float, int, float]] | None = None  # at 0 workers (loop_fetch)

    def thread_io(self) -> tuple[int, int] | None:
        """The fetching thread's bytes read so far (its counter opened by it, once)."""
        ident = threading.get_ident()
        if ident != self.io_thread:
            if self.io is not None:
                self.io.close()
            self.io, self.io_thread = IoCounter("/proc/thread-self/io"), ident
        return self.io.read() if self.io is not None else None

    def close(self) -> None:
        """Close the bytes-read counter (the generation is done)."""
        if self.io is not None:
            self.io.close()

    # The loop's path of a fetch: each function below is as short as it can be.

    def timed_fetch(self, fetcher: Any, index: Any) -> Any:
        """Torch's map-style fetch of ``index`` by ``fetcher``, its samples (a fetch's samples together, as the
        sample stage: one pair of clock reads a batch, whatever its size) and its collate timed.

        The common case is done here with three clock reads and one call more than torch's fetch makes (``samples``;
        its ``get`` and ``collate_fn`` found once a fetcher, ``torch_compat.fetch_parts``); one fetch in
        ``CPU_EVERY``, and one inside another's, goes through ``sampled_fetch``."""
        countdown = self.countdown - 1
        if countdown <= 0 or self.active:
            return self.sampled_fetch(fetcher, index)
        self.countdown = countdown
        parts = self.parts
        if parts is None or parts[0] is not fetcher:
            parts = self.parts_of(fetcher)
        _, get, collate_fn, single = parts
        t0 = _clock()
        data = self.samples(get, index)
        t1 = _clock()
        batch = collate_fn(data)
        t2 = _clock()
        row = self.row
        at = self.rest_at
        row[at] += 1 if single else len(index)
        row[at + 1] += t1 - t0
        row[at + FIELDS] += 1
        row[at + FIELDS + 1] += t2 - t1
        if self.write is not None:
            self.write_row(row)
        return batch

    def loop_fetch(self, fetcher: Any) -> Callable[[Any], Any]:
        """At 0 workers, ``fetcher.fetch`` timed as ``timed_fetch`` times it, as a closure over what it reads and
        adds up: the loop's path with no attribute read and no list written (its totals are read through
        ``loop_totals``; a fetch that reads the CPU clock adds to the row). No fetch is inside another's there:
        this fetcher's dataset cannot fetch through it; a fetch of another loader's is timed by that one's
        recorder."""
        _, get, collate_fn, single = self.parts_of(fetcher)
        countdown = self.countdown
        samples = fetches = 0
        sample_s = collate_s = 0.0
        sampled_fetch, name_stage = self.sampled_fetch, self._name_stage

        def fetch(index: Any) -> Any:
            nonlocal countdown, samples, fetches, sample_s, collate_s
            countdown -= 1
            if countdown <= 0:
                batch = sampled_fetch(fetcher, index)
                countdown = self.countdown
                if not self.every and fetches >= LOOP_CALIBRATION:  # once: from the loop's mean fetch so far
                    countdown = self.calibrate((sample_s + collate_s) / fetches)
                return batch
            t0 = _clock()
            try:
                data = get(index)
            except BaseException as exc:
                name_stage(exc, None)
                raise
            t1 = _clock()
            batch = collate_fn(data)
            t2 = _clock()
            samples += 1 if single else len(index)
            fetches += 1
            sample_s += t1 - t0
            collate_s += t2 - t1
            return batch

        def totals() -> tuple[int, float, int, float]:
            return samples, sample_s, fetches, collate_s

        self.loop_totals = totals
        return fetch

    def calibrate(self, mean_fetch_s: float) -> int:
        """Set a loop's gap between fetches that read the CPU clock (``LOOP_CPU_GAP_S``) from its mean fetch; the
        countdown to the next."""
        every = self.every = min(LOOP_EVERY_MAX, max(CPU_EVERY, round(LOOP_CPU_GAP_S / max(mean_fetch_s, 1e-9))))
        self.countdown = 1 + int(self.pick() * (2 * every - 1))
        return self.countdown

    def loop_row(self) -> list[float]:
        """At 0 workers, this recorder's row as a sheet has it: the sampled fetches' figures and the loop's
        other fetches' totals (``loop_fetch``)."""
        row = list(self.row)
        if self.loop_totals is not None:
            samples, sample_s, fetches, collate_s = self.loop_totals()
            at = self.rest_at
            row[at] += samples
            row[at + 1] += sample_s
            row[at + FIELDS] += fetches
            row[at + FIELDS + 1] += collate_s
        return row

    def sampled_fetch(self, fetcher: Any, index: Any) -> Any:
        """A fetch that reads the CPU clock too, at its samples (each stage inside them reads it as it runs,
        ``self.sampled``) and its collate; at 0 workers, ``IO_GAP_S`` apart or more, the thread's bytes read.
        A fetch inside another's (a dataset that fetches through a timed fetcher) is part of that one: untimed."""
        parts = self.parts
        if parts is None or parts[0] is not fetcher:
            parts = self.parts_of(fetcher)
        _, get, collate_fn, single = parts
        if self.active:
            return collate_fn(get(index))
        io0 = None
        if self.write is None and (now := _clock()) >= self.io_next:  # the loop's thread: its bytes (IO_GAP_S)
            self.io_next = now + IO_GAP_S
            io0 = self.thread_io()
        self.sampled = True
        c0 = _cpu()
        t0 = _clock()
        data = self.samples(get, index)
        t1 = _clock()
        c1 = _cpu()
        batch = collate_fn(data)
        t2 = _clock()
        c2 = _cpu()
        self.sampled = False
        count = 1 if single else len(index)
        row, at = self.row, self.rest_at
        row[at] += count
        row[at + 1] += t1 - t0
        row[at + 2] += count
        row[at + 3] += t1 - t0
        row[at + 4] += c1 - c0
        at += FIELDS
        row[at] += 1
        row[at + 1] += t2 - t1
        row[at + 2] += 1
        row[at + 3] += t2 - t1
        row[at + 4] += c2 - c1
        hist = self.hist
        samples_at = HIST_BUCKETS * (len(self.names) - 2)  # each sample at its fetch's mean
        hist[samples_at + bucket_of((t1 - t0) / max(count, 1))] += count
        hist[samples_at + HIST_BUCKETS + bucket_of(t2 - t1)] += 1
        # The next one 1 to 2 x every - 1 fetches on: one in ``every``, with no period to alias.
        self.countdown = 1 + int(self.pick() * (2 * (self.every or CPU_EVERY) - 1))
        if io0 is not None and (io1 := self.thread_io()) is not None:
            row[2] += count
            row[3] += io1[0] - io0[0]
            row[4] += io1[1] - io0[1]
        if self.write is not None:
            self.write_row(row)
            if self.write_hist is not None:
                self.write_hist(hist)
        return batch

    def samples(self, get: Callable[[Any], Any], index: Any) -> Any:
        """``get(index)``, a fetch's samples, inside the fetch (``active``: the stages within them time
        themselves), the stage a sample raised in named on its exception."""
        self.active = True
        try:
            return get(index)
        except BaseException as exc:
            self._name_stage(exc, None)
            raise
        finally:
            self.active = False

    def parts_of(self, fetcher: Any) -> tuple[Any, ...]:
        """``(fetcher, get, collate_fn, single)`` for ``fetcher`` (``torch_compat.fetch_parts``), kept for its next
        fetches."""
        parts = self.parts = (fetcher, *torch_compat.fetch_parts(fetcher))
        return parts

    def write_row(self, row: list[float]) -> None:
        """Write this worker's row (after a collate), with the bytes its process read so far."""
        base = self.io_base
        if base is not None and self.io is not None and (now := self.io.read()) is not None:
            row[2] = row[self.rest_at]
            row[3] = now[0] - base[0]
            row[4] = now[1] - base[1]
        if self.write is not None:
            self.write(row)

    def nested(self, at: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn(*args, **kwargs)`` (a decode or a read inside a sample), timed as stage ``at``."""
        sampled = self.sampled
        self.depth += 1
        c0 = _cpu() if sampled else 0.0
        t0 = _clock()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            self._name_stage(exc, at)
            raise
        finally:
            dt = _clock() - t0
            self.depth -= 1
            row, base = self.row, field_at(at)
            row[base] += 1
            row[base + 1] += dt
            self.inner += dt
            if sampled:
                cpu = _cpu() - c0
                row[base + 2] += 1
                row[base + 3] += dt
                row[base + 4] += cpu
                self.inner_cpu += cpu
                self.hist[HIST_BUCKETS * at + bucket_of(dt)] += 1

    def transforms(self, transforms: Any, first: int, inputs: tuple[Any, ...]) -> Any:
        """A ``Compose``'s loop (v1's and v2's: several inputs are passed on unpacked), each transform timed
        as its stage less the decodes and reads inside it."""
        row = self.row
        sampled = self.sampled
        unpack = len(inputs) > 1
        outputs: Any = inputs[0] if inputs else None
        at = first
        base = field_at(first)
        t = _clock()
        inner = self.inner
        c = _cpu() if sampled else 0.0
        inner_cpu = self.inner_cpu
        for transform in transforms:
            try:
                outputs = transform(*inputs)
            except BaseException as exc:
                self._name_stage(exc, at)
                raise
            inputs = outputs if unpack else (outputs,)
            now = _clock()
            spent = (now - t) - (self.inner - inner)
            row[base] += 1
            row[base + 1] += spent
            if sampled:
                c_now = _cpu()
                row[base + 2] += 1
                row[base + 3] += spent
                row[base + 4] += (c_now - c) - (self.inner_cpu - inner_cpu)
                c, inner_cpu = c_now, self.inner_cpu
                self.hist[HIST_BUCKETS * at + bucket_of(spent)] += 1
            t, inner = now, self.inner
            at += 1
            base += FIELDS
        return outputs

    def _name_stage(self, exc: BaseException, at: int | None) -> None:
        """Name the stage a sample raised in on its exception, the innermost first: ``exc.loadertop_stage``
        and a note; an exception raised from one already named (``raise X from exc``) takes its name."""
        if getattr(exc, "loadertop_stage", None) is not None:
            return
        cause = getattr(exc.__cause__, "loadertop_stage", None) or getattr(exc.__context__, "loadertop_stage", None)
        stage = self.names[at] if at is not None else cause
        if stage is None:  # raised by __getitem__ itself: nothing to add to what the exception says
            return
        try:
            exc.loadertop_stage = stage  # type: ignore[attr-defined]
            add_note = getattr(exc, "add_note", None)  # Python 3.11 and newer
            if add_note is not None:
                add_note(f"{STAGE_NOTE}{stage} stage")
        except Exception:  # noqa: BLE001,S110 - an exception that takes no attributes: the stage goes unnamed
            pass


# ------------------------------------------------------------------ in a worker


def _worker_fetch(stock: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The worker's fetcher ``fetch``: timed while this worker's recorder is on, else torch's own."""

    @functools.wraps(stock)
    def timed_fetch(self: Any, possibly_batched_index: Any) -> Any:
        recorder = _RECORDER
        if recorder is None:
            return stock(self, possibly_batched_index)
        return recorder.timed_fetch(self, possibly_batched_index)

    return timed_fetch


_timed_classes: dict[tuple[type, int], type] = {}


def _timed_compose_class(kind: type, first: int) -> type:
    """A subclass of the ``Compose`` class ``kind`` whose call times each transform (first stage ``first``)."""
    key = (kind, first)
    found = _timed_classes.get(key)
    if found is not None:
        return found
    is_module = isinstance(kind, type) and issubclass(kind, torch.nn.Module)

    if is_module:  # v2: nn.Module.__call__ (hooks) runs, then this forward

        def forward(self: Any, *inputs: Any) -> Any:
            recorder = _RECORDER
            if recorder is None or not recorder.active:
                return kind.forward(self, *inputs)  # type: ignore[attr-defined]
            return recorder.transforms(self.transforms, first, inputs)

        namespace: dict[str, Any] = {"__slots__": (), "forward": forward}
    else:

        def call(self: Any, *inputs: Any) -> Any:
            recorder = _RECORDER
            if recorder is None or not recorder.active:
                return kind.__call__(self, *inputs)  # type: ignore[operator]
            return recorder.transforms(self.transforms, first, inputs)

        namespace = {"__slots__": (), "__call__": call}

    def reduce_ex(self: Any, protocol: Any) -> Any:
        """Pickled as the class it was (a worker that pickles its transform: the timed class has no importable name)."""
        self.__class__ = kind
        try:
            reduced = kind.__reduce_ex__(self, protocol)
        finally:
            self.__class__ = timed
        if isinstance(reduced, tuple) and reduced and reduced[0] is copyreg.__newobj__:
            return (_new_object, (kind,), *reduced[2:])
        return reduced

    namespace.update(
        __module__=kind.__module__, __qualname__=kind.__qualname__, __doc__=kind.__doc__, __reduce_ex__=reduce_ex
    )
    timed = type(kind.__name__, (kind,), namespace)
    _timed_classes[key] = timed
    return timed


def _new_object(kind: type) -> Any:
    """An object of ``kind`` made as ``copyreg.__newobj__`` makes one (its state follows)."""
    return kind.__new__(kind)


def _wrap(owner: Any, name: str, at: int) -> None:
    """Time ``owner.name`` (a function or method) as stage ``at`` inside a sample, once."""
    original = getattr(owner, name, None)
    if original is None or getattr(original, "__loadertop_stage__", None) is not None:
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        recorder = _RECORDER
        if recorder is None or not recorder.active or recorder.depth:
            return original(*args, **kwargs)
        return recorder.nested(at, original, args, kwargs)

    timed.__loadertop_stage__ = at  # type: ignore[attr-defined]
    setattr(owner, name, timed)


def _subclasses(kind: type) -> Iterator[type]:
    for sub in kind.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _wrap_decoders() -> None:
    """Time the image decoders and file reads this worker's modules have (PIL's, torchvision.io's)."""
    image_file = sys.modules.get("PIL.ImageFile")
    if image_file is not None:
        _wrap(image_file.ImageFile, "load", _DECODE_AT)
        for sub in _subclasses(image_file.ImageFile):
            if "load" in vars(sub):
                _wrap(sub, "load", _DECODE_AT)
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None:
        _wrap(pil_image, "open", _DECODE_AT)
    for module_name in ("torchvision.io", "torchvision.io.image"):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in ("decode_image", "decode_jpeg", "decode_png", "decode_webp", "decode_avif", "decode_heic"):
            _wrap(module, name, _DECODE_AT)
        _wrap(module, "read_image", _DECODE_AT)
        _wrap(module, "read_file", _READ_AT)


def install_in_worker(
    names: tuple[str, ...],
    write: Callable[[list[float]], None],
    dataset: Any,
    seed: int,
    write_hist: Callable[[list[int]], None] | None = None,
) -> None:
    """Time this worker's fetches, transforms and decoders into ``write`` (see the module's docstring)."""
    global _RECORDER
    first = _FIRST_TRANSFORM
    found = composes(dataset)
    if stage_names(dataset) != names:
        raise RuntimeError("the worker's dataset has other transforms than the loader's")
    for compose in found:
        compose.__class__ = _timed_compose_class(type(compose), first)
        first += len(compose.transforms)
    _wrap_decoders()
    torch_compat.time_map_fetches(_worker_fetch)
    _RECORDER = Recorder(names, write, seed, whole_process=True, write_hist=write_hist)


class StageInit:
    """A loader's ``worker_init_fn`` while stage timing is on: installs the worker's timing, then calls the script's.

    Picklable (spawn and forkserver send it to each worker) where the script's ``worker_init_fn`` is.
    """

    def __init__(self, sheet: StageSheet, user_init: Callable[[int], Any] | None) -> None:
        self.sheet = sheet
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        sheet = self.sheet
        try:
            info = torch.utils.data.get_worker_info()
            if info is None or isinstance(info.dataset, IterableDataset):
                raise RuntimeError("an IterableDataset's samples are not timed")
            install_in_worker(
                sheet.names, sheet.row_writer(worker_id), info.dataset, worker_id, sheet.hist_writer(worker_id)
            )
        except Exception as exc:  # noqa: BLE001 - timing is off for this worker; the fetch stays torch's
            sheet.turn_off(worker_id, f"{type(exc).__name__}: {exc}")
        if self.user_init is not None:
            self.user_init(worker_id)


# ------------------------------------------------------------------ in the loop's process


class LoaderStages:
    """A loader's stage timing: one sheet per worker generation, its figures by worker count."""

    __slots__ = ("enabled", "off", "sheets")

    def __init__(self) -> None:
        self.enabled = True  # until a timer fails for the loader (its ``time_stages`` is read at each iterator)
        self.sheets: list[StageSheet] = []
        self.off: str | None = None  # why timing is off for the whole loader

    def creating(self, loader: Any) -> _Creating:
        """A context around making a torch iterator for ``loader``'s current settings; ``attach`` it after."""
        return _Creating(self, loader)

    def batch_timer(self, name: str) -> BatchTimer | None:
        """The running generation's timer of ``name`` (one of ``BATCH_STAGES``), None where timing is off."""
        if not self.enabled or not self.sheets:
            return None
        return self.sheets[-1].batch[name]

    def figures(self) -> tuple[StageFigures, ...]:
        """Per worker count (in the order they first ran): where the samples' time went."""
        if not self.sheets and self.off is not None:
            return (StageFigures(0, 0, 0, (), self.off),)
        by_count: dict[int, list[StageSheet]] = {}
        for sheet in list(self.sheets):
            by_count.setdefault(sheet.num_workers, []).append(sheet)
        return tuple(figures_of(sheets) for sheets in by_count.values())


class _Creating:
    """Wraps ``worker_init_fn`` while torch starts the workers; ``attach`` times a 0-worker iterator's fetcher."""

    def __init__(self, stages: LoaderStages, loader: Any) -> None:
        self.stages = stages
        self.loader = loader
        self.sheet: StageSheet | None = None
        self.user_init: Any = None

    def __enter__(self) -> _Creating:
        stages, loader = self.stages, self.loader
        if not (stages.enabled and loader.time_stages):
            return self
        try:
            if isinstance(loader.dataset, IterableDataset):
                raise RuntimeError("an IterableDataset's samples are not timed")
            self.sheet = StageSheet(stage_names(loader.dataset), loader.num_workers)
        except Exception as exc:  # noqa: BLE001 - no timing for this loader; it runs as torch's
            self._turn_off(f"{type(exc).__name__}: {exc}")
            return self
        if loader.num_workers:
            self.user_init = loader.worker_init_fn
            loader.worker_init_fn = StageInit(self.sheet, self.user_init)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.sheet is not None and self.loader.num_workers:
            self.loader.worker_init_fn = self.user_init

    def attach(self, iterator: Any, *, fresh: bool) -> None:
        """``iterator`` was made (``fresh``: a new one, not a persistent one going on): keep its sheet."""
        sheet = self.sheet
        if sheet is None or not fresh:
            return
        pin = sheet.batch[PIN]
        try:
            if not sheet.num_workers:
                recorder = Recorder(sheet.names, None, seed=0, whole_process=False)
                sheet.local_recorder = recorder
                pinned = torch_compat.pins(iterator)
                if pinned:  # the loop's thread pins what it fetched, at once
                    torch_compat.time_pinning(_timed_pin)

                def timed(stock: Any) -> Callable[[Any], Any]:
                    fetch = recorder.loop_fetch(stock)
                    return _pinning_for(fetch, pin) if pinned else fetch

                torch_compat.wrap_fetcher(iterator, timed)
            elif (thread := torch_compat.pin_thread(iterator)) is not None and thread.ident is not None:
                torch_compat.time_pinning(_timed_pin)
                _pin_for(thread, pin, once=False)
        except Exception as exc:  # noqa: BLE001
            self._turn_off(f"{type(exc).__name__}: {exc}")
            return
        stages = self.stages
        # A generation starts only once the one before it has handed over: all but the latest are done.
        for done in stages.sheets[:-1]:
            done.freeze()
        kept: list[StageSheet] = []
        first_of: dict[tuple[tuple[str, ...], int], StageSheet] = {}
        for old in stages.sheets:
            key = (old.names, old.num_workers)
            if old.frozen and key in first_of:
                first_of[key].absorb(old)
                continue
            if old.frozen:
                first_of[key] = old
            kept.append(old)
        stages.sheets = [*kept, sheet]

    def _turn_off(self, reason: str) -> None:
        stages = self.stages
        stages.enabled = False
        if stages.off is None:
            stages.off = reason
