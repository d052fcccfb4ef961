"""Draw the screenshots of the README and docs/: the real app, fed the recorded sessions in screenshots/*.json.

    make screenshots        (or: python screenshots/make_screenshots.py)

The SVGs go to docs/images/ (mkdocs serves only what is under docs/; the README links there too).
The recordings are real runs on the machine named in docs/benchmarks.md: the built-in workload
(``screenshots/record_session.py`` makes a new one), a user's script under the monitor
(``screenshots/record_script_session.py``), a torchrun job, every rank's view, before and after
its straggler's switch (``screenshots/record_ranks_session.py``) and an autotuned run once it settled
(``screenshots/record_autotune_session.py``); drawing from them keeps every figure in the SVGs fixed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot

from loadertop.core.sessions.replay import ReplaySession, load_view
from loadertop.core.sessions.session import SessionView
from loadertop.tui.app import LoaderTopApp

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parent / "docs" / "images"


async def shoot(
    view: SessionView | Path, name: str, size: tuple[int, int], before: Callable[[Pilot], Awaitable[None]] | None = None
) -> Path:
    """``name``.svg: the app at ``size`` on a recorded view (or a recording's file: a torchrun job's every rank)."""
    session = ReplaySession.from_file(view) if isinstance(view, Path) else ReplaySession(dataclasses.replace(view))
    app = LoaderTopApp(session)
    async with app.run_test(size=size) as pilot:
        if before is not None:
            await before(pilot)
        await pilot.pause()
        path = IMAGES / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(IMAGES))
    return path


async def press(pilot: Pilot, *keys: str) -> None:
    await pilot.press(*keys)


async def main() -> int:
    view = load_view(HERE / "session.json")
    made = [
        await shoot(view, "monitor-120x36", (120, 36)),
        await shoot(view, "monitor-80x24", (80, 24)),
        await shoot(view, "pending-switch-120x36", (120, 36), lambda p: press(p, "plus", "plus")),
        await shoot(view, "help-120x36", (120, 36), lambda p: press(p, "question_mark")),
        await shoot(load_view(HERE / "script_session.json"), "script-120x36", (120, 36)),
        await shoot(HERE / "ranks_session.json", "ranks-120x40", (120, 40)),
        await shoot(HERE / "ranks_switched_session.json", "ranks-switched-120x40", (120, 40)),
        await shoot(load_view(HERE / "autotune_session.json"), "autotune-120x36", (120, 36)),
        await shoot(load_view(HERE / "memory_session.json"), "memory-120x36", (120, 36)),
    ]
    for path in made:
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
