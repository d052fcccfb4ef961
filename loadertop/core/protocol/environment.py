"""The probe's environment contract: what ``loadertop run`` tells the processes it starts (``LOADERTOP_PROBE``,
JSON), and a process's place in a torchrun job (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` ...). No torch here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

ENV = "LOADERTOP_PROBE"


@dataclass(frozen=True)
class ProbeSettings:
    """What the launcher asks of the script's loaders (``LOADERTOP_PROBE``, JSON).

    Attributes:
        workers: every loader's worker count instead of the script's (None: the script's own).
        switches: ``{"STEP": workers}`` switches the training loader after STEP of its batches,
            ``{"LOADER@STEP": workers}`` the loader named LOADER; ``rankR:`` before either: rank R's only.
        record: a JSONL file for one object per batch (None: none).
        claim: a path the first process to import torch creates, to be the one that acts.
        command: the command line the launcher ran (for monitors).
        log: the file the script's output goes to (None: the terminal).
        serve: serve monitors on a socket (``loadertop attach``).
        autotune: tune the training loader's worker count from the start (``--autotune``).
        cpu_budget: the tuner's cores (None: the usable cores); shared among a torchrun job's ranks on the node.
        memory_budget_gib: the memory all workers may hold (None: half the available); shared likewise.
        stages: time each sample's stages in the loaders' workers (``--no-stages``: False).
        forget: autotune does not start where a loader settled last on this machine (``--forget``).
    """

    workers: int | None = None
    switches: dict[str, int] = field(default_factory=dict)
    record: str | None = None
    claim: str | None = None
    command: tuple[str, ...] = ()
    log: str | None = None
    serve: bool = True
    autotune: bool = False
    cpu_budget: float | None = None
    memory_budget_gib: float | None = None
    stages: bool = True
    forget: bool = False

    def to_environment(self) -> str:
        """The value of ``LOADERTOP_PROBE``."""
        return json.dumps(
            {
                "workers": self.workers,
                "switches": dict(self.switches),
                "record": self.record,
                "claim": self.claim,
                "command": list(self.command),
                "log": self.log,
                "serve": self.serve,
                "autotune": self.autotune,
                "cpu_budget": self.cpu_budget,
                "memory_budget_gib": self.memory_budget_gib,
                "stages": self.stages,
                "forget": self.forget,
            }
        )

    @classmethod
    def from_environment(cls, text: str) -> ProbeSettings:
        """Parse ``LOADERTOP_PROBE``."""
        data = json.loads(text)
        return cls(
            workers=data.get("workers"),
            switches={str(k): int(v) for k, v in data.get("switches", {}).items()},
            record=data.get("record"),
            claim=data.get("claim"),
            command=tuple(data.get("command") or ()),
            log=data.get("log"),
            serve=bool(data.get("serve", True)),
            autotune=bool(data.get("autotune")),
            cpu_budget=_number_or_none(data.get("cpu_budget")),
            memory_budget_gib=_number_or_none(data.get("memory_budget_gib")),
            stages=bool(data.get("stages", True)),
            forget=bool(data.get("forget", False)),
        )


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rank_of_process() -> Rank | None:
    """This process's place in a torch.distributed job (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE), if any."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return Rank(
        rank, _env_int("LOCAL_RANK", rank), world, _env_int("LOCAL_WORLD_SIZE", world), _env_int("GROUP_RANK", 0)
    )


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


@dataclass(frozen=True)
class Rank:
    """A process's rank, local rank (on its node), the world size, the ranks on its node and the node's number."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int = 1
    node_rank: int = 0
