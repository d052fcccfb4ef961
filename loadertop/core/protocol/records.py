"""What the trainer publishes: one record per batch and one event per (re)start of the loader; ``--record``'s lines.

Every run (the built-in trainer, a script under ``loadertop run``, each rank of a torchrun job) writes
``--record`` in one schema, ``record.schema.json`` beside this module; each line carries its version as
``"schema"``. ``read_record`` and ``read_records`` read older lines as the current schema has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadertop.core.protocol.config import LoaderConfig

RECORD_SCHEMA = 2
"""The version of ``--record``'s lines, written in every line as ``"schema"``. Version 1 (lines without
``"schema"``): the built-in run's batches had ``compute_ms`` where this version (and scripts always) has ``step_ms``."""
SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
"""The JSON Schema of a ``--record`` line (shipped with the package; loadertop itself never validates with it)."""


class RecordError(ValueError):
    """A ``--record`` line that cannot be read: not a JSON object, or of a schema this loadertop does not know."""


def record_line(fields: Mapping[str, Any]) -> str:
    """One ``--record`` line: ``{"schema": RECORD_SCHEMA, ...fields}`` as JSON, with its newline."""
    return json.dumps({"schema": RECORD_SCHEMA, **fields}) + "\n"


def read_record(line: Mapping[str, Any]) -> dict[str, Any]:
    """A ``--record`` line of any known schema, as the current schema has it (``"schema"`` set to it).

    Raises:
        RecordError: a line of a newer (or unknown) schema, in one line naming its version.
    """
    version = line.get("schema", 1)
    if version == RECORD_SCHEMA and not isinstance(version, bool):
        return dict(line)
    if version != 1 or isinstance(version, bool):
        raise RecordError(f"a --record line of schema {version!r}: this loadertop reads schemas 1 to {RECORD_SCHEMA}")
    batch = "event" not in line and "step_ms" not in line
    # Keys keep their places: a version 1 built-in batch reads as if written today.
    return {
        "schema": RECORD_SCHEMA,
        **{("step_ms" if batch and key == "compute_ms" else key): value for key, value in line.items()},
    }


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line of a ``--record`` file, read with ``read_record``; a last line cut short (the run was killed
    while writing it) is left out.

    Raises:
        RecordError: a line that is not a JSON object, or of an unknown schema (``PATH:LINE: ...``).
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            raise RecordError(f"{path}:{number}: not JSON: {raw[:60]!r}") from None
        if not isinstance(data, dict):
            raise RecordError(f"{path}:{number}: not a JSON object: {raw[:60]!r}")
        try:
            records.append(read_record(data))
        except RecordError as exc:
            raise RecordError(f"{path}:{number}: {exc}") from None
    return records


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One training batch, as measured in the training thread.

    Attributes:
        step: batches done in the whole run, this one included (1, 2, ...).
        epoch: 1-based epoch the batch belongs to.
        batch_in_epoch: 1-based position of the batch within its epoch.
        config_key: the loader configuration's key (see LoaderConfig.key).
        num_workers: DataLoader workers that produced the batch.
        batch_size: the configured batch size.
        samples: samples in this batch (the last one of an epoch may be short).
        load_s: seconds blocked in ``next(iterator)`` waiting for the batch.
        compute_s: seconds of the training step (forward, backward, optimizer; synchronised on CUDA):
            ``step_ms`` in ``--record``.
        loss: the batch's loss.
        accuracy: share of correct predictions, or None when the task is not classification.
        time: wall-clock time (UNIX seconds) at the end of the step.
        elapsed_s: seconds since the run started, at the end of the step.
        warmup: one of the first ``max(1, num_workers)`` batches after a start or hot restart
            (made during worker start-up, so they arrive in a burst); kept out of steady-state figures.
    """

    step: int
    epoch: int
    batch_in_epoch: int
    config_key: str
    num_workers: int
    batch_size: int
    samples: int
    load_s: float
    compute_s: float
    loss: float
    accuracy: float | None
    time: float
    elapsed_s: float
    warmup: bool = False

    @property
    def iter_s(self) -> float:
        """Load plus compute: the batch's whole iteration."""
        return self.load_s + self.compute_s

    def to_json(self) -> dict[str, Any]:
        """The batch's ``--record`` fields (``record.schema.json``'s batch line, without ``"schema"``), times in ms."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "num_workers": self.num_workers,
            "config": self.config_key,
            "samples": self.samples,
            "load_ms": round(self.load_s * 1000.0, 4),
            "step_ms": round(self.compute_s * 1000.0, 4),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "warmup": self.warmup,
            "time": round(self.time, 6),
        }


@dataclass(frozen=True, slots=True)
class StartEvent:
    """A (re)start of the DataLoader: at the beginning, on a hot restart, or at an epoch boundary.

    Attributes:
        reason: ``"start"``, ``"restart"`` or ``"epoch"``.
        config: the configuration that started.
        after_step: batches done before this start (its first batch is ``after_step + 1``).
        epoch: 1-based epoch the loader starts in.
        position: samples of that epoch already consumed before the start.
        startup_s: from ``iter(loader)`` to the first batch in hand (worker start-up and first batch).
        latency_s: from the request (or the end of the last batch) to the first batch in hand,
            including shutting the old workers down.
        worker_pids: pids of the worker processes it started (empty with 0 workers).
    """

    reason: str
    config: LoaderConfig
    after_step: int
    epoch: int
    position: int
    startup_s: float
    latency_s: float
    worker_pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        data = asdict(self)
        data["config"] = asdict(self.config)
        return data
