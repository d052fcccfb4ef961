"""Cost boundaries: which loader configuration the process tree's CPU is credited to, from when to when."""

from __future__ import annotations

from loadertop.core.measure.cost import TreeCpu, TreeCpuClock
from loadertop.core.measure.memory import TreeMemory
from loadertop.core.measure.store import MetricsStore
from loadertop.core.protocol.config import LoaderConfig


class CostBoundaries:
    """Opens a configuration's CPU account in ``store`` when it starts or resumes and closes it when it stops.

    A pause, a restart and the end of a run close the running account; what each configuration finally
    costs is settled at these boundaries by the training thread, whatever the sampling interval.

    Args:
        store: where the accounts are kept.
        clock: the process tree's CPU clock.
    """

    def __init__(self, store: MetricsStore, clock: TreeCpuClock) -> None:
        self.store = store
        self.clock = clock
        self.credited: LoaderConfig | None = None
        """The configuration whose account is open (None: none is)."""

    @property
    def is_open(self) -> bool:
        """Whether a configuration's account is open."""
        return self.credited is not None

    def open(self, config: LoaderConfig, reading: TreeCpu | None = None) -> None:
        """``config`` starts (or resumes) running: its CPU is accounted from now (or from ``reading``)."""
        if self.credited is None:
            self.store.open_cost(config, reading or self.clock.read())
            self.credited = config

    def close(self, reading: TreeCpu | None = None) -> None:
        """The running configuration stops (restart, pause, end): credit it its CPU up to now (or ``reading``)."""
        if self.credited is not None:
            self.store.close_cost(reading or self.clock.read())
            self.credited = None

    def hand_to(self, config: LoaderConfig, apart: tuple[int, ...]) -> None:
        """From now ``config``'s CPU: the workers ``apart`` (an overlapped switch's new ones) are its already."""
        reading = self.clock.read(apart=apart).without_apart()
        self.close(reading)
        self.open(config, reading)

    def tick(self) -> None:
        """Read the clock now for the open account's figures so far (before workers go: their last CPU counts)."""
        self.store.tick_cost(self.clock.read())

    def sample(self, memory: TreeMemory | None = None) -> None:
        """``tick``, and the tree's memory toward the running configuration's peak (a sampling thread's call)."""
        self.store.tick_cost(self.clock.read())
        if memory is not None:
            self.store.tick_memory(memory)
