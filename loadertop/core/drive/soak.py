"""Many hot restarts in a row, measuring what they leave behind (children, fds, /dev/shm, RSS)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from loadertop.core.measure.procs import child_processes
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.train.engine import Trainer

CYCLE = tuple(
    LoaderConfig(num_workers=w, batch_size=8, persistent_workers=p)
    for p, w in itertools.product((False, True), (0, 1, 2, 4))
    if not (p and w == 0)
)
"""0, 1, 2 and 4 workers, then 1, 2 and 4 with persistent_workers."""


@dataclass(frozen=True)
class Resources:
    """What a process holds: live children, open file descriptors, /dev/shm entries, resident memory."""

    children: int
    fds: int
    shm_entries: int
    rss_mb: float

    @classmethod
    def now(cls) -> Resources:
        me = psutil.Process()
        shm = len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0
        return cls(len(child_processes()), me.num_fds(), shm, me.memory_info().rss / (1024 * 1024))


def soak(
    trainer: Trainer,
    restarts: int,
    *,
    batches_between: int = 3,
    on_restart: Callable[[int, LoaderConfig], None] | None = None,
) -> tuple[Resources, Resources]:
    """Hot-restart ``trainer`` (running) ``restarts`` times through ``CYCLE``; resources before and after.

    The baseline is taken after one warm-up pass through the cycle (first use of each worker
    count allocates for good); the final figures once the run is back at 0 workers and idle.
    """

    def step() -> int:
        return trainer.status().step

    def restart_to(config: LoaderConfig) -> None:
        target = step() + batches_between
        trainer.restart(config)
        deadline = time.monotonic() + 60
        while (trainer.config != config or step() < target) and time.monotonic() < deadline:
            if trainer.state.is_done:
                raise RuntimeError(f"the run ended during the soak: {trainer.state.value} {trainer.error}")
            time.sleep(0.01)
        if trainer.config != config:
            raise RuntimeError(f"restart to {config.key} did not happen within 60 s")

    for config in CYCLE:  # warm-up pass
        restart_to(config)
    restart_to(CYCLE[0])
    time.sleep(0.5)
    baseline = Resources.now()
    for i in range(restarts):
        config = CYCLE[(i + 1) % len(CYCLE)]
        restart_to(config)
        if on_restart is not None:
            on_restart(i + 1, config)
    restart_to(CYCLE[0])
    time.sleep(0.5)
    return baseline, Resources.now()
