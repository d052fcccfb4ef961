"""SVG snapshots of the real app drawn from a recorded session: every number on screen is fixed.

On a mismatch the new SVG is written beside the expected one as ``*.actual.svg``;
``pytest tests/app --snapshot-update`` rewrites the expected files after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from loadertop import TrainerState
from loadertop.core.measure.limits import Limits
from loadertop.core.measure.system import GpuSample
from loadertop.core.policy.advice import MachineFacts
from loadertop.core.protocol.stages import StageFigures
from loadertop.core.sessions.replay import ReplaySession, load_view
from loadertop.core.sessions.session import SessionView
from loadertop.core.train.engine import TrainerError
from loadertop.tui.app import LoaderTopApp

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
GIB = 1024**3


RANKS_RECORDED = Path(__file__).resolve().parent.parent / "data" / "ranks_session.json"


async def snapshot(
    request: pytest.FixtureRequest,
    view: SessionView | ReplaySession,
    name: str,
    size: tuple[int, int],
    run_before: Callable[[Pilot], Awaitable[None]] | None = None,
) -> None:
    app = LoaderTopApp(view if isinstance(view, ReplaySession) else ReplaySession(view))
    async with app.run_test(size=size) as pilot:
        if run_before is not None:
            await run_before(pilot)
        await pilot.pause()
        app.refresh_view()
        await pilot.pause()
        svg = app.export_screenshot(title=f"loadertop {size[0]}x{size[1]}")
    expected_path = SNAPSHOTS / f"{name}.svg"
    actual_path = SNAPSHOTS / f"{name}.actual.svg"
    if request.config.getoption("--snapshot-update") or not expected_path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        expected_path.write_text(svg, encoding="utf-8")
        actual_path.unlink(missing_ok=True)
        if not request.config.getoption("--snapshot-update"):
            pytest.fail(f"no snapshot yet: wrote {expected_path.name}; check it and run again")
        return
    if svg != expected_path.read_text(encoding="utf-8"):
        actual_path.write_text(svg, encoding="utf-8")
        pytest.fail(f"{name}: the screen differs from {expected_path.name}; see {actual_path.name}")
    actual_path.unlink(missing_ok=True)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_running(request: pytest.FixtureRequest, recorded_view: SessionView, size: tuple[int, int]) -> None:
    await snapshot(request, recorded_view, f"running_{size[0]}x{size[1]}", size)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_pending_change(
    request: pytest.FixtureRequest, recorded_view: SessionView, size: tuple[int, int]
) -> None:
    async def press(pilot: Pilot) -> None:
        await pilot.press("plus", "plus")

    await snapshot(request, recorded_view, f"pending_{size[0]}x{size[1]}", size, press)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_error(request: pytest.FixtureRequest, recorded_view: SessionView, size: tuple[int, int]) -> None:
    error = TrainerError("worker", "DataLoader worker (pid(s) 11496) exited unexpectedly", None, 300, "")
    status = dataclasses.replace(recorded_view.status, state=TrainerState.ERROR, error=error)
    await snapshot(request, dataclasses.replace(recorded_view, status=status), f"error_{size[0]}x{size[1]}", size)


async def test_help(request: pytest.FixtureRequest, recorded_view: SessionView) -> None:
    async def press(pilot: Pilot) -> None:
        await pilot.press("question_mark")

    await snapshot(request, recorded_view, "help_120x36", (120, 36), press)


async def test_settings_form(request: pytest.FixtureRequest, recorded_view: SessionView) -> None:
    async def press(pilot: Pilot) -> None:
        await pilot.press("c")

    await snapshot(request, recorded_view, "settings_80x24", (80, 24), press)


async def test_gpus(request: pytest.FixtureRequest, recorded_view: SessionView) -> None:
    """The GPU panel with two GPUs (values made up for the test: no GPU was lent to record one)."""
    assert recorded_view.system is not None
    gpus = (
        GpuSample(0, "NVIDIA H100 80GB HBM3", 87.0, 61 * GIB, 80 * GIB, 64.0, 412.0, 60 * GIB),
        GpuSample(1, "NVIDIA H100 80GB HBM3", 3.0, 1 * GIB, 80 * GIB, 38.0, 71.0, None),
    )
    system = dataclasses.replace(recorded_view.system, gpus=gpus, gpu_status="2 NVIDIA GPUs")
    view = dataclasses.replace(recorded_view, system=system, gpu_status="2 NVIDIA GPUs")
    await snapshot(request, view, "gpus_120x36", (120, 36))


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_confined_by_a_container(
    request: pytest.FixtureRequest, recorded_view: SessionView, size: tuple[int, int]
) -> None:
    """The header names a cgroup's limits (made up: 0.5 of the recording machine's 2 cores, 3 GiB of its memory)."""
    limits = Limits(
        cores=0.5,
        cores_source="cgroup v1 quota",
        cores_file="/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us",
        host_cores=2,
        affinity_cores=2,
        memory_total_bytes=3 * GIB,
        memory_available_bytes=2 * GIB,
        memory_source="cgroup v1 memory limit",
        memory_file="/sys/fs/cgroup/memory/job/memory.limit_in_bytes",
        host_memory_total_bytes=24 * GIB,
        host_memory_available_bytes=20 * GIB,
        memory_usage_bytes=GIB,
    )
    machine = MachineFacts(usable_cores=0.5, memory_total_bytes=3 * GIB, limits=limits)
    await snapshot(request, dataclasses.replace(recorded_view, machine=machine), f"confined_{size[0]}x{size[1]}", size)


async def test_too_small(request: pytest.FixtureRequest, recorded_view: SessionView) -> None:
    await snapshot(request, recorded_view, "too_small_40x12", (40, 12))


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_a_script(request: pytest.FixtureRequest, script_view: SessionView, size: tuple[int, int]) -> None:
    await snapshot(request, script_view, f"script_{size[0]}x{size[1]}", size)


async def test_a_script_with_a_pending_switch(request: pytest.FixtureRequest, script_view: SessionView) -> None:
    async def press(pilot: Pilot) -> None:
        await pilot.press("4")

    await snapshot(request, script_view, "script_pending_120x36", (120, 36), press)


async def test_a_torchrun_job_with_its_input_straggler(request: pytest.FixtureRequest) -> None:
    """A real two-rank job (ddp_loop.py --slow-rank 1), every rank recorded: rank 0 shown, rank 1 the straggler."""
    await snapshot(request, ReplaySession.from_file(RANKS_RECORDED), "ranks_120x40", (120, 40))


async def test_a_torchrun_job_k_shows_the_next_rank(request: pytest.FixtureRequest) -> None:
    """k: the screen is rank 1's own (its loader, its workers, its batches), the ranks panel marks it shown."""

    async def press(pilot: Pilot) -> None:
        await pilot.press("k")

    await snapshot(request, ReplaySession.from_file(RANKS_RECORDED), "ranks_k_120x40", (120, 40), press)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_autotune_settled(
    request: pytest.FixtureRequest, autotune_view: SessionView, size: tuple[int, int]
) -> None:
    """A real autotuned run (storage-bound, from 0 workers), settled: its state in the header, beside the table the
    model's predicted curve (measured, running, the CPU ceiling) and the latest change with its reason."""
    await snapshot(request, autotune_view, f"autotune_{size[0]}x{size[1]}", size)


MEMORY_RECORDED = Path(__file__).resolve().parent.parent / "data" / "memory_session.json"


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=["120x36", "80x24"])
async def test_memory_as_the_kernel_accounts_it(request: pytest.FixtureRequest, size: tuple[int, int]) -> None:
    """A recording with PSS and USS (``screenshots/record_session.py``): each process's USS (RSS beside it where
    there is room), the tree's PSS, and the table's PSS, USS a worker, its growth and the PSS added per worker."""
    await snapshot(request, load_view(MEMORY_RECORDED), f"memory_{size[0]}x{size[1]}", size)


STAGES_RECORDED = Path(__file__).resolve().parent.parent / "data" / "stages_builtin.json"


def with_stages(view: SessionView) -> SessionView:
    """``view`` with the built-in workload's stage figures at 0, 2 and 1 workers, from a real run's ``--record``
    (``loadertop run --headless --workers 0 --switch 40:2 --switch 110:1 --max-batches 170``, 2 usable cores)."""
    figures = tuple(StageFigures.from_wire(wire) for wire in json.loads(STAGES_RECORDED.read_text()))
    return dataclasses.replace(
        view, stages=figures, machine=MachineFacts(usable_cores=2.0, memory_total_bytes=24 * GIB)
    )


async def test_where_a_samples_time_goes(request: pytest.FixtureRequest, recorded_view: SessionView) -> None:
    """Beside the charts at 120 columns: the running count's stages slowest first, a bar per count, the verdict."""
    await snapshot(request, with_stages(recorded_view), "stages_120x36", (120, 36))


async def test_t_shows_the_stages_in_the_loss_charts_place_on_a_small_screen(
    request: pytest.FixtureRequest, recorded_view: SessionView
) -> None:
    async def press(pilot: Pilot) -> None:
        await pilot.press("t")

    await snapshot(request, with_stages(recorded_view), "stages_t_80x24", (80, 24), press)
