"""PSS and USS of real processes from smaps_rollup, the fallback to RSS, and the figures built on them."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadertop.core.measure.cost import TreeCpu
from loadertop.core.measure.memory import MemoryReader, TreeMemory, WorkerMemory, parse_smaps_rollup
from loadertop.core.measure.store import MetricsStore, with_extra_memory
from loadertop.core.measure.system import SystemSampler
from loadertop.core.policy.advice import MachineFacts, advise
from loadertop.core.policy.model import MEMORY_HORIZON_S, Point, fit
from loadertop.core.policy.report import csv_text, markdown_table, report_json
from loadertop.core.protocol.config import LoaderConfig
from tests.helpers import summary, wait_for

MIB = 1024 * 1024
linux_only = pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/smaps_rollup"), reason="needs /proc/<pid>/smaps_rollup (Linux 4.14+)"
)
FORK = multiprocessing.get_context("fork") if sys.platform != "win32" else None


def fresh_reader() -> MemoryReader:
    """A reader whose CPU budget never holds a read back: every call reads smaps_rollup."""
    return MemoryReader(cpu_share=1e9)


def test_smaps_rollup_text_gives_rss_pss_and_uss_exactly() -> None:
    text = (
        b"5654298cb000-7ffe77b5b000 ---p 00000000 00:00 0                          [rollup]\n"
        b"Rss:              412176 kB\nPss:              138156 kB\nShared_Clean:       5648 kB\n"
        b"Shared_Dirty:     404588 kB\nPrivate_Clean:        12 kB\nPrivate_Dirty:      1940 kB\n"
        b"Private_Hugetlb:     2048 kB\nSwap:                  0 kB\n"
    )
    assert parse_smaps_rollup(text) == (412176 * 1024, 138156 * 1024, (12 + 1940 + 2048) * 1024)
    assert parse_smaps_rollup(b"") is None  # a zombie: no memory map


@pytest.fixture
def forked() -> Iterator[list[multiprocessing.Process]]:
    children: list[multiprocessing.Process] = []
    yield children
    for child in children:
        child.kill()
        child.join(10)


def _sleep_forever() -> None:
    time.sleep(120)


@linux_only
def test_the_pss_of_a_parent_and_its_forked_children_counts_their_shared_pages_once(forked) -> None:
    held = bytearray(128 * MIB)
    held[::4096] = b"\x01" * (len(held) // 4096)  # every page resident, in the parent's own memory
    for _ in range(3):
        child = FORK.Process(target=_sleep_forever, daemon=True)
        child.start()
        forked.append(child)
    reader = fresh_reader()
    sampler = SystemSampler(worker_pids=lambda: [c.pid for c in forked], read_gpus=False, memory=reader)
    snapshot = sampler.sample()
    memory = snapshot.memory
    assert memory is not None and memory.exact and memory.note == ""
    main, *workers = snapshot.processes
    assert [w.pid for w in workers] == [c.pid for c in forked] == [w.pid for w in memory.workers]
    # Each child maps the parent's pages (the 128 MB too) but holds next to nothing of its own.
    assert all(w.rss_bytes > 128 * MIB and w.uss_bytes < w.rss_bytes / 4 for w in workers)
    assert memory.rss_bytes == snapshot.tree_rss_bytes > main.rss_bytes + 3 * 128 * MIB
    # The tree's PSS holds every page once: at least the 128 MB, at most the parent plus what is the children's
    # (and whatever else this process has started before, e.g. multiprocessing's resource tracker, in full);
    # the RSS and the smaps_rollup of a process are two reads, moments apart: 8 MiB of slack for what moved between.
    others = memory.rss_bytes - main.rss_bytes - sum(w.rss_bytes for w in workers)
    assert 128 * MIB < memory.pss_bytes <= main.rss_bytes + sum(w.uss_bytes for w in workers) + others + 8 * MIB
    assert memory.pss_bytes < memory.rss_bytes / 2


def _touch(data: list[int], ready: Any, touched: Any) -> None:
    ready.wait(30)
    total = 0
    for value in data:  # reading a Python object writes its reference count: its page is copied
        total += value
    touched.set()
    time.sleep(120)


@linux_only
def test_a_forked_worker_that_reads_a_python_list_grows_its_uss_not_its_rss(forked) -> None:
    data = [n + 1_000_000 for n in range(2_000_000)]  # 2 million int objects (28 bytes each) in the parent
    ready, touched = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_touch, args=(data, ready, touched), daemon=True)
    child.start()
    forked.append(child)
    reader = fresh_reader()
    proc = psutil.Process(child.pid)
    wait_for(lambda: reader.read(proc) is not None)
    before = reader.read(proc)
    ready.set()
    assert touched.wait(60)
    after = reader.read(proc)
    assert before is not None and after is not None and before.exact and after.exact
    grown = after.uss_bytes - before.uss_bytes
    assert grown > 2_000_000 * 28 / 2  # at least half of the objects' pages copied
    assert abs(after.rss_bytes - before.rss_bytes) < grown / 4  # RSS counted them already: it cannot see this

    # The store turns two readings of the worker into its growth over its life, in MB a minute.
    config = LoaderConfig(num_workers=1)
    store = MetricsStore()
    store.open_cost(config, TreeCpu(time=0.0, main_s=0.0, children_s=0.0, rss_bytes=0))
    for reading, at in ((before, 1000.0), (after, 1003.0)):
        store.tick_memory(
            TreeMemory(at, reading.rss_bytes, reading.pss_bytes, (WorkerMemory(reading.pid, reading.uss_bytes, at),))
        )
    [summary] = store.summaries()
    assert summary.worker_uss_growth_mb_per_min == pytest.approx(grown / MIB / 3 * 60)
    assert summary.worker_uss_mb == pytest.approx((before.uss_bytes + after.uss_bytes) / 2 / MIB)


def test_where_smaps_rollup_cannot_be_read_the_figures_are_rss_and_say_so(tmp_path: Path) -> None:
    missing = MemoryReader(proc_root=str(tmp_path / "missing"))
    me = missing.read(psutil.Process())
    assert me is not None and not me.exact
    assert me.pss_bytes == me.uss_bytes == me.rss_bytes > 0
    assert me.note == (
        f"PSS/USS of pid {os.getpid()} unreadable: {tmp_path}/missing/{os.getpid()}/smaps_rollup "
        "does not exist (a kernel older than 4.14, or not Linux)"
    )
    (tmp_path / "odd" / str(os.getpid()) / "smaps_rollup").mkdir(parents=True)  # there, but no file to read
    odd = MemoryReader(proc_root=str(tmp_path / "odd")).read(psutil.Process())
    assert odd is not None and not odd.exact and "could not be read" in odd.note

    sampler = SystemSampler(read_gpus=False, memory=missing)
    snapshot = sampler.sample()
    assert snapshot.memory is not None and not snapshot.memory.exact and snapshot.memory.source == "rss"
    # Other children this process may have (a resource tracker from an earlier test) are named as a count.
    assert snapshot.memory.note.startswith(me.note)
    assert snapshot.memory.note.endswith(("; its RSS counted for PSS and USS", "; their RSS counted for PSS and USS"))
    assert snapshot.processes[0].memory_exact is False

    # The store, the report and the advice carry the fallback and its reason: never a silent figure.
    config = LoaderConfig(num_workers=0)
    store = MetricsStore()
    store.open_cost(config, TreeCpu(time=0.0, main_s=0.0, children_s=0.0, rss_bytes=0))
    store.tick_memory(snapshot.memory)
    [summary] = store.summaries()
    assert summary.memory_source == "rss" and summary.memory_note == snapshot.memory.note
    assert summary.pss_mb == summary.pss_mb_peak == snapshot.memory.rss_bytes / MIB
    document = report_json([summary], advise([summary], MachineFacts(2, 8 * 1024**3)), MachineFacts(2, 8 * 1024**3))
    assert document["memory_source"] == "rss" and document["memory_note"] == snapshot.memory.note
    assert document["rows"][0]["memory_source"] == "rss"


def test_a_gone_process_reads_as_none() -> None:
    child = psutil.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert fresh_reader().read(child) is None


@linux_only
def test_smaps_rollup_is_read_again_only_as_often_as_its_cpu_budget_allows() -> None:
    me = psutil.Process()
    thrifty = MemoryReader(cpu_share=1e-9)
    first = thrifty.read(me)
    second = thrifty.read(me)
    assert thrifty.smaps_reads == 1 and first is not None and second is not None
    assert second.pss_bytes == first.pss_bytes and second.measured_at == first.measured_at  # served from the cache
    eager = fresh_reader()
    eager.read(me)
    eager.read(me)
    assert eager.smaps_reads == 2
    thrifty.retain([])  # forgotten: the next read is a first one
    thrifty.read(me)
    assert thrifty.smaps_reads == 2


def _memory(at: float, pss_mb: float, uss_mb: tuple[float, ...], pids: tuple[int, ...] = (11, 12, 13)) -> TreeMemory:
    workers = tuple(WorkerMemory(pid, int(uss * MIB), at) for pid, uss in zip(pids, uss_mb, strict=False))
    return TreeMemory(at, int(3 * pss_mb * MIB), int(pss_mb * MIB), workers)


def test_each_configuration_gets_its_mean_and_peak_pss_worker_uss_growth_and_extra_per_worker() -> None:
    store = MetricsStore()
    zero, two = LoaderConfig(num_workers=0), LoaderConfig(num_workers=2)
    store.open_cost(zero, TreeCpu(time=0.0, main_s=0.0, children_s=0.0, rss_bytes=0))
    store.tick_memory(_memory(100.0, 700, ()))
    store.tick_memory(_memory(101.0, 710, ()))
    store.close_cost(TreeCpu(time=1.0, main_s=0.0, children_s=0.0, rss_bytes=0))
    store.open_cost(two, TreeCpu(time=1.0, main_s=0.0, children_s=0.0, rss_bytes=0))
    store.tick_memory(_memory(102.0, 690, (10,)))  # one worker up of two: only its peak counts
    store.tick_memory(_memory(110.0, 740, (20, 30)))
    store.tick_memory(_memory(170.0, 760, (30, 50)))
    z, t = store.summaries()
    assert (z.pss_mb, z.pss_mb_peak) == (705.0, 710.0) and math.isnan(z.worker_uss_mb)
    assert (t.pss_mb, t.pss_mb_peak, t.worker_uss_mb) == (750.0, 760.0, 32.5)
    # Worker 11: 10 -> 30 MB over 68 s; worker 12: 30 -> 50 MB over 60 s: 40 MB in 128 worker-seconds.
    assert t.worker_uss_growth_mb_per_min == pytest.approx(40 / 128 * 60)
    assert math.isnan(z.extra_mb_per_worker) and t.extra_mb_per_worker == (750.0 - 705.0) / 2
    unsampled = dataclasses.replace(z, pss_mb=math.nan, pss_mb_peak=math.nan, memory_source="")
    assert (
        report_json([unsampled], advise([unsampled], MachineFacts(2, 8 * 1024**3)), MachineFacts(2, 8 * 1024**3))[
            "rows"
        ][0]["memory_source"]
        is None
    )  # no memory sample: null, like every missing figure
    assert t.memory_source == z.memory_source == "smaps_rollup" and t.memory_note == ""
    # The same figures, named, in every text form.
    machine = MachineFacts(2, 8 * 1024**3)
    row = report_json([z, t], advise([z, t], machine), machine)["rows"][1]
    assert (row["pss_mb"], row["pss_mb_peak"], row["worker_uss_mb"], row["extra_mb_per_worker"]) == (
        750,
        760,
        32.5,
        22.5,
    )
    assert row["worker_uss_growth_mb_per_min"] == pytest.approx(18.75) and row["memory_source"] == "smaps_rollup"
    assert row["rss_mb"] is None  # the summed RSS comes from the CPU clock's readings: none were taken here
    header, _, second = csv_text([z, t]).splitlines()
    fields = dict(zip(header.split(","), second.split(","), strict=True))
    assert (fields["pss_mb"], fields["worker_uss_mb"], fields["extra_mb_per_worker"]) == ("750", "32.5", "22.5")
    markdown = markdown_table([z, t])
    assert "| PSS MB | peak | USS/wkr | USS MB/min | +MB/wkr | sum RSS |" in markdown
    assert "| 750 | 760 | 32 | 18.8 | 22 | - |" in markdown  # 32.5 and 22.5 round to even
    json.dumps(report_json([z, t], advise([z, t], machine), machine), allow_nan=False)


def test_extra_memory_is_measured_against_the_fewest_workers_with_the_same_other_settings() -> None:
    rows = [summary(1, 100), summary(3, 200), summary(2, 150, persistent=True), summary(4, 210, persistent=True)]
    rows = [dataclasses.replace(r, pss_mb=mb) for r, mb in zip(rows, (800.0, 860.0, 900.0, 1000.0), strict=True)]
    extra = [s.extra_mb_per_worker for s in with_extra_memory(rows)]
    assert math.isnan(extra[0]) and extra[1] == 30.0 and math.isnan(extra[2]) and extra[3] == 50.0


@linux_only
def test_a_tree_is_read_again_at_once_when_its_processes_change(forked) -> None:
    held = bytearray(64 * MIB)
    held[::4096] = b"\x01" * (len(held) // 4096)
    me = psutil.Process()
    thrifty = MemoryReader(cpu_share=1e-9)  # on its budget alone it would never read again
    [alone] = thrifty.read_tree([me])
    thrifty.read_tree([me])
    assert thrifty.smaps_reads == 1
    child = FORK.Process(target=_sleep_forever, daemon=True)
    child.start()
    forked.append(child)
    shared = thrifty.read_tree([me, psutil.Process(child.pid)])
    assert thrifty.smaps_reads == 3  # both read again: the parent's PSS is not what it was alone
    parent, worker = shared
    assert parent.pss_bytes < alone.pss_bytes - 64 * MIB / 4  # it now shares the 64 MB with the child
    assert parent.pss_bytes + worker.pss_bytes == pytest.approx(alone.pss_bytes, rel=0.1)  # the tree holds them once


def test_the_memory_budget_counts_what_a_worker_adds_and_how_fast_it_grows() -> None:
    uss, growth = 50 * MIB, 0.1 * MIB  # per second
    points = [Point(2, 100.0, 0.01, 0.01, 32.0, worker_uss_bytes=uss, worker_uss_growth_bytes_per_s=growth)]
    model = fit(points, cores=4, memory_budget_bytes=3 * (uss + growth * MEMORY_HORIZON_S))
    assert model is not None and model.worker_bytes == uss + growth * MEMORY_HORIZON_S
    assert model.fits_memory(3) and not model.fits_memory(4)
    still = fit([Point(2, 100.0, 0.01, 0.01, 32.0, worker_uss_bytes=uss)], cores=4, memory_budget_bytes=3 * uss)
    assert still is not None and still.fits_memory(3) and not still.fits_memory(4)  # growth unknown: USS alone


@linux_only
def test_the_tuners_reading_gives_the_workers_uss_not_their_rss(forked) -> None:
    from loadertop.core.measure.cost import TreeCpuClock
    from loadertop.core.probe.autotune_host import read_tree

    held = bytearray(64 * MIB)
    held[::4096] = b"\x01" * (len(held) // 4096)
    for _ in range(2):
        child = FORK.Process(target=_sleep_forever, daemon=True)
        child.start()
        forked.append(child)
    pids = [c.pid for c in forked]
    reading = read_tree(TreeCpuClock(), pids, fresh_reader())
    rss = sum(psutil.Process(pid).memory_info().rss for pid in pids)
    assert reading.workers == 2 and 0 < reading.worker_uss_bytes < rss / 4  # each maps the 64 MB, holds none
