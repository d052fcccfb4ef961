"""What is said on the wire, as typed messages (every message also has ``"v"`` and ``"type"``).

From the training process (a launched script) to each monitor:

- ``hello``: ``pid``, ``command``, ``cwd``, ``started``, ``log`` (its output file or null), under
  torchrun ``rank``, ``local_rank``, ``world_size``, ``local_world_size``, ``node_rank``,
  ``controller`` and ``controller_id`` (the pid and id of the monitor that may send commands, or null),
  ``threads`` (native ids of loadertop's own threads in the script: left out of its CPU).
- ``loader``: a DataLoader was created or changed: ``name``, ``num_workers``, ``batch_size``,
  ``batches_per_epoch`` (null when unsized), ``training`` (the one commands address by default),
  ``exact`` (a switch continues the running epoch; false for an IterableDataset: next epoch),
  ``pending`` (a requested count not yet applied), ``epoch``, ``worker_pids``.
- ``batch``: one batch the loop received: ``loader``, ``step``, ``epoch``, ``batch``,
  ``num_workers``, ``samples``, ``load_ms``, ``step_ms`` (null for an epoch's first),
  ``switch_ms``, ``time``.
- ``log``: ``loadertop.log(...)`` values for the training loader's latest batch: ``loader``, ``step``, metrics.
- ``event``: ``{"event": "switch", "loader", "from", "to", "after_step", "by"}``; ``{"event": "autotune",
  "change", "from", "to", "reason", "predicted", "ceiling", "loader", "step"}`` (and ``rank`` under
  torchrun): a decision of the autotuner, as ``--record`` has it (``change``: ``jump``, ``step``,
  ``settle``, ``retune`` or ``memory``; ``predicted``: ``{"count": samples/s or null}``, the model's
  curve then; ``ceiling``: the CPU budget's samples/s, null when unknown; ``step``: the training
  loader's batches so far). Every one is kept for monitors that attach later. Others: shown as they are.
- ``autotune``: the autotuner's status, sent when it changes (the latest is kept for monitors that
  attach later): ``loader`` (the tuned one, null before there is one), ``state`` (``off``,
  ``measuring``, ``switching``, ``settled``), ``workers`` (the count measured or held, null before
  any), ``changes`` (how many so far), ``predicted`` and ``ceiling`` (the latest model's, as in the
  event), and once the tuner exists its budgets: ``cores``, ``memory_bytes`` (null: no limit),
  ``max_workers``.
- ``cpu``: the script's process tree's CPU clock (``time`` monotonic, ``main_s`` without loadertop's
  threads, ``children_s`` reaped children included, ``rss_bytes``) read by the script itself:
  ``reason`` ``"boundary"`` where a configuration of the training loader ``loader`` begins (its
  old workers shut down, the new ones not yet started) and ``"end"`` at exit. Between them the
  monitor reads the same clock itself, from outside (costing the script nothing).
- ``control``: ``controller`` changed (a monitor took control or left).
- ``refused``: ``reason``: a command this monitor may not give, or one that cannot work.
- ``dropped``: ``count``: messages this monitor missed because it did not read them in time.
- ``history_end``: everything before the connection has been sent.
- ``peer``: a rank of the same torchrun job on another node, from the job's c10d store
  (``probe.peers``): ``rank``, ``local_rank``, ``node_rank``, ``host``, ``pid``, ``num_workers``,
  ``load_ms``, ``step_ms``, ``samples_per_s``, ``step``, ``time`` (its clock when it wrote it).
- ``stages``: where a loader's samples' time goes (``protocol.stages``), sent about once a second when its
  figures changed (the latest per loader is kept for monitors that attach later): ``loader``, ``figures`` (one
  per worker count run, in the order they first ran, each as ``StageFigures.to_wire`` has it: ``num_workers``,
  ``samples``, ``batches``, ``off`` (why timing is off, or null), ``stages`` (each ``name``, ``calls``,
  ``wall_s``, ``cpu_calls``, ``cpu_wall_s``, ``cpu_s``; the per-sample figures beside them are for readers)).

From a monitor: ``hello`` (``pid``, ``id``: its own, ``control``: whether it wants to give commands),
``switch`` (``loader``: a name or null for the training loader, ``workers``) and ``autotune``
(``enabled``: true or false: tune the training loader from its running count, or stop and keep
the count). Only the controller may send ``switch`` and ``autotune``; the others get ``refused``.

Each message is a frozen dataclass below (an ``event`` one per kind: ``SwitchEvent``, ``AutotuneEvent``,
``ExceptionEvent``, ``ExitEvent``, ``OtherEvent``), built by the side that sends it and read back by the other:
``to_wire()`` is the JSON object (``codec.encode_message`` adds ``"v"``), ``from_wire(dict)`` the message, and
``server_message`` / ``client_message`` read one of either side's by its ``type``. Fixed words are ``str``
enums (``MessageType``, ``EventKind``, ``TunerState``, ``ChangeKind``, ``CpuReason``): equal to their strings.

Fields, one rule: a field this side does not know is ignored (a later version may add fields), except where the
names are the user's or shown as they are: a ``log``'s ``metrics`` are kept whole, and so is every field of an
event of a kind this side does not know (``OtherEvent.extra``). A known field of the wrong type, or a required
one missing, makes ``from_wire`` raise ``MessageError`` (a ``ValueError``) in one line: a monitor counts the
message as malformed (``codec.Rejections``), the server answers a command with ``refused`` and that line.
Optional fields read a null as missing. Numbers are read by one set of parsers (``integer``, ``number``, and
their ``optional_`` forms): an integer is a JSON integer (never ``true``), a number an integer or a float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Final, TypeVar

from loadertop.core.protocol.stages import HIST_BUCKETS, StageFigures, StageTime

Wire = Mapping[str, object]
"""A message as JSON gives it (or as ``to_wire`` makes it)."""
Curve = tuple[tuple[int, float | None], ...]
"""A model's samples/s per worker count, by count (None: unknown, or past the memory budget)."""


class MessageError(ValueError):
    """A message of a known type whose fields are not what its type says (one line: which field, what it got)."""


# ---------------------------------------------------------------- words


class Word(str, Enum):
    """A fixed word of the protocol: equal to, hashed and printed as its string (``enum.StrEnum`` is 3.11+)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __hash__(self) -> int:
        return str.__hash__(self)


class MessageType(Word):
    """A message's ``type``."""

    HELLO = "hello"
    LOADER = "loader"
    BATCH = "batch"
    LOG = "log"
    CPU = "cpu"
    EVENT = "event"
    CONTROL = "control"
    REFUSED = "refused"
    DROPPED = "dropped"
    HISTORY_END = "history_end"
    PEER = "peer"
    AUTOTUNE = "autotune"
    STAGES = "stages"
    SWITCH = "switch"


class EventKind(Word):
    """An ``event`` message's ``event``, of the kinds a monitor reads (others are ``OtherEvent``)."""

    SWITCH = "switch"
    AUTOTUNE = "autotune"
    EXCEPTION = "exception"
    EXIT = "exit"


class TunerState(Word):
    """Where the autotuner stands (``policy.autotune.TunerStatus.state``)."""

    OFF = "off"
    MEASURING = "measuring"
    SWITCHING = "switching"
    SETTLED = "settled"


class ChangeKind(Word):
    """What a change of the autotuner is (``policy.autotune.Change.kind``)."""

    JUMP = "jump"
    STEP = "step"
    SETTLE = "settle"
    RETUNE = "retune"
    MEMORY = "memory"


class CpuReason(Word):
    """Why the script read its CPU clock: a configuration of its training loader begins, or the run ends."""

    BOUNDARY = "boundary"
    END = "end"


SERVER_TYPES = frozenset(
    {
        MessageType.HELLO,
        MessageType.LOADER,
        MessageType.BATCH,
        MessageType.LOG,
        MessageType.CPU,
        MessageType.EVENT,
        MessageType.CONTROL,
        MessageType.REFUSED,
        MessageType.DROPPED,
        MessageType.HISTORY_END,
        MessageType.PEER,
        MessageType.AUTOTUNE,
        MessageType.STAGES,
    }
)
"""The types a monitor accepts."""
CLIENT_TYPES = frozenset({MessageType.HELLO, MessageType.SWITCH, MessageType.AUTOTUNE})
"""The types the server accepts."""


# -------------------------------------------------------------- parsers


class _Required:
    """The default of a field that must be there."""


REQUIRED: Final = _Required()
W = TypeVar("W", bound=Word)


def _wrong(key: str, what: str, value: object) -> MessageError:
    return MessageError(f"{key} must be {what}, got {value!r}")


def _present(wire: Wire, key: str) -> object:
    if key not in wire:
        raise MessageError(f"{key} is missing")
    return wire[key]


def as_int(value: object, key: str, *, minimum: int | None = None) -> int:
    """``value`` as an integer (a JSON integer, not ``true``; at least ``minimum``), else ``MessageError``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _wrong(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return value


def as_float(value: object, key: str) -> float:
    """``value`` as a number (a JSON integer or float, not ``true``), else ``MessageError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(key, "a number", value)
    return float(value)


def integer(wire: Wire, key: str, default: int | _Required = REQUIRED, *, minimum: int | None = None) -> int:
    """``wire[key]`` as an integer; missing or null: ``default`` (a required one: ``MessageError``)."""
    value = _present(wire, key) if isinstance(default, _Required) else wire.get(key)
    if value is None and not isinstance(default, _Required):
        return default
    return as_int(value, key, minimum=minimum)


def optional_integer(wire: Wire, key: str, *, minimum: int | None = None) -> int | None:
    """``wire[key]`` as an integer, or None (missing or null)."""
    value = wire.get(key)
    return None if value is None else as_int(value, key, minimum=minimum)


def number(wire: Wire, key: str, default: float | _Required = REQUIRED) -> float:
    """``wire[key]`` as a float; missing or null: ``default`` (a required one: ``MessageError``)."""
    value = _present(wire, key) if isinstance(default, _Required) else wire.get(key)
    if value is None and not isinstance(default, _Required):
        return default
    return as_float(value, key)


def optional_number(wire: Wire, key: str) -> float | None:
    """``wire[key]`` as a float, or None (missing or null)."""
    value = wire.get(key)
    return None if value is None else as_float(value, key)


def text(wire: Wire, key: str, default: str | _Required = REQUIRED, *, what: str = "a string") -> str:
    """``wire[key]`` as a string; missing or null: ``default`` (a required one: ``MessageError``)."""
    value = _present(wire, key) if isinstance(default, _Required) else wire.get(key)
    if value is None and not isinstance(default, _Required):
        return default
    if not isinstance(value, str):
        raise _wrong(key, what, value)
    return value


def optional_text(wire: Wire, key: str, *, what: str = "a string") -> str | None:
    """``wire[key]`` as a string, or None (missing or null)."""
    value = wire.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong(key, what, value)
    return value


def flag(wire: Wire, key: str, default: bool | _Required = REQUIRED) -> bool:
    """``wire[key]`` as true or false; missing or null: ``default`` (a required one: ``MessageError``)."""
    value = _present(wire, key) if isinstance(default, _Required) else wire.get(key)
    if value is None and not isinstance(default, _Required):
        return default
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def integers(wire: Wire, key: str) -> tuple[int, ...]:
    """``wire[key]``, a list of integers, as a tuple (missing or null: empty)."""
    value = wire.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, "a list of integers", value)
    return tuple(as_int(item, key) for item in value)


def _histogram(wire: Wire, key: str) -> tuple[int, ...]:
    """``wire[key]``, a stage's histogram (``StageTime.hist``): at most ``HIST_BUCKETS`` counts >= 0 (missing: ())."""
    counts = integers(wire, key)
    if len(counts) > HIST_BUCKETS or any(count < 0 for count in counts):
        raise MessageError(f"{key} must be at most {HIST_BUCKETS} integers >= 0, got {list(counts)[:30]!r}")
    return counts


def texts(wire: Wire, key: str) -> tuple[str, ...]:
    """``wire[key]``, a list of strings, as a tuple (missing or null: empty)."""
    value = wire.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _wrong(key, "a list of strings", value)
    return tuple(str(item) for item in value)


def word(wire: Wire, key: str, kind: type[W], default: W | _Required = REQUIRED) -> W:
    """``wire[key]`` as one of ``kind``'s words; missing or null: ``default`` (a required one: ``MessageError``)."""
    value = _present(wire, key) if isinstance(default, _Required) else wire.get(key)
    if value is None and not isinstance(default, _Required):
        return default
    for member in kind:
        if value == member.value:
            return member
    raise _wrong(key, "one of " + ", ".join(member.value for member in kind), value)


def mapping(wire: Wire, key: str) -> dict[str, object]:
    """``wire[key]``, an object, as a dict (missing or null: empty)."""
    value = wire.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _wrong(key, "an object", value)
    return dict(value)


def curve(wire: Wire, key: str) -> Curve:
    """``wire[key]``, ``{"count": samples/s or null}``, as a ``Curve`` sorted by count (missing or null: empty)."""
    points = []
    for count, rate in mapping(wire, key).items():
        if not count.isdigit():
            raise _wrong(key, "an object of worker counts", count)
        points.append((int(count), None if rate is None else as_float(rate, f"{key}[{count}]")))
    return tuple(sorted(points))


def curve_to_wire(points: Curve) -> dict[str, float | None]:
    """A ``Curve`` as the wire has it: ``{"count": samples/s or null}``."""
    return {str(count): rate for count, rate in points}


def _objects(value: object, key: str) -> list[Mapping[str, object]]:
    """``value``, a list of objects (null: empty), else ``MessageError``."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, Mapping) for item in value):
        raise _wrong(key, "a list of objects", value)
    return list(value)


def stage_figures(wire: Wire, key: str) -> tuple[StageFigures, ...]:
    """``wire[key]``, a list of ``StageFigures.to_wire`` objects, as figures (missing or null: empty).

    Read field by field with this module's parsers (a count is a JSON integer >= 0); a bad field names its place,
    e.g. ``figures[0].stages[1].calls must be an integer >= 0, got 'x'``.
    """
    figures = []
    for i, item in enumerate(_objects(wire.get(key), key)):
        where = f"{key}[{i}]"
        try:
            stages = []
            for j, stage in enumerate(_objects(item.get("stages"), "stages")):
                try:
                    stages.append(
                        StageTime(
                            name=text(stage, "name"),
                            calls=integer(stage, "calls", minimum=0),
                            wall_s=number(stage, "wall_s"),
                            cpu_calls=integer(stage, "cpu_calls", minimum=0),
                            cpu_wall_s=number(stage, "cpu_wall_s"),
                            cpu_s=number(stage, "cpu_s"),
                            hist=_histogram(stage, "hist"),
                        )
                    )
                except MessageError as exc:
                    raise MessageError(f"stages[{j}].{exc}") from None
            figures.append(
                StageFigures(
                    num_workers=integer(item, "num_workers", minimum=0),
                    samples=integer(item, "samples", minimum=0),
                    batches=integer(item, "batches", minimum=0),
                    stages=tuple(stages),
                    off=optional_text(item, "off"),
                    io_samples=integer(item, "io_samples", 0, minimum=0),
                    storage_bytes=integer(item, "storage_bytes", 0, minimum=0),
                    read_bytes=integer(item, "read_bytes", 0, minimum=0),
                )
            )
        except MessageError as exc:
            raise MessageError(f"{where}.{exc}") from None
    return tuple(figures)


def _wire(kind: MessageType, fields: Mapping[str, object], *, omit_none: tuple[str, ...] = ()) -> dict[str, object]:
    """``{"type": kind, **fields}``, the fields in ``omit_none`` left out when None (those only some runs have)."""
    wire: dict[str, object] = {"type": kind.value}
    for key, value in fields.items():
        if value is None and key in omit_none:
            continue
        wire[key] = str(value) if isinstance(value, Word) else list(value) if isinstance(value, tuple) else value
    return wire


class Message:
    """A message of the protocol: ``TYPE`` on the wire, ``to_wire`` its JSON object."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]

    def to_wire(self) -> dict[str, object]:
        """The message as a JSON object, with its ``type`` (without ``v``: the codec adds it)."""
        raise NotImplementedError


# ----------------------------------------------- training process -> monitor


_RANKED = ("rank", "local_rank", "world_size", "local_world_size", "node_rank")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The first message a monitor gets: the run (see the module's docstring for each field)."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    pid: int
    command: tuple[str, ...] = ()
    cwd: str | None = None
    started: float | None = None
    log: str | None = None
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    node_rank: int | None = None
    controller: int | None = None
    controller_id: str | None = None
    kept_by: str | None = None
    builtin: str | None = None
    threads: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "pid": self.pid,
                "command": self.command,
                "cwd": self.cwd,
                "started": self.started,
                "log": self.log,
                "rank": self.rank,
                "local_rank": self.local_rank,
                "world_size": self.world_size,
                "local_world_size": self.local_world_size,
                "node_rank": self.node_rank,
                "controller": self.controller,
                "controller_id": self.controller_id,
                "kept_by": self.kept_by,
                "builtin": self.builtin,
                "threads": self.threads,
            },
            omit_none=(*_RANKED, "cwd", "kept_by", "builtin"),
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Hello:
        return cls(
            pid=integer(wire, "pid"),
            command=texts(wire, "command"),
            cwd=optional_text(wire, "cwd"),
            started=optional_number(wire, "started"),
            log=optional_text(wire, "log"),
            rank=optional_integer(wire, "rank", minimum=0),
            local_rank=optional_integer(wire, "local_rank", minimum=0),
            world_size=optional_integer(wire, "world_size", minimum=0),
            local_world_size=optional_integer(wire, "local_world_size", minimum=0),
            node_rank=optional_integer(wire, "node_rank", minimum=0),
            controller=optional_integer(wire, "controller"),
            controller_id=optional_text(wire, "controller_id"),
            kept_by=optional_text(wire, "kept_by"),
            builtin=optional_text(wire, "builtin"),
            threads=integers(wire, "threads"),
        )


@dataclass(frozen=True, slots=True)
class LoaderUpdate(Message):
    """``loader``: a DataLoader was created or changed."""

    TYPE: ClassVar[MessageType] = MessageType.LOADER
    name: str
    num_workers: int
    batch_size: int | None = None
    batches_per_epoch: int | None = None
    training: bool = False
    exact: bool = True
    pending: int | None = None
    epoch: int = 0
    worker_pids: tuple[int, ...] = ()
    dropped: int = 0
    """Batch records the script dropped so far (its writer could not keep up)."""

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "name": self.name,
                "num_workers": self.num_workers,
                "batch_size": self.batch_size,
                "batches_per_epoch": self.batches_per_epoch,
                "training": self.training,
                "exact": self.exact,
                "pending": self.pending,
                "epoch": self.epoch,
                "worker_pids": self.worker_pids,
                "dropped": self.dropped,
            },
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> LoaderUpdate:
        return cls(
            name=text(wire, "name"),
            num_workers=integer(wire, "num_workers", minimum=0),
            batch_size=optional_integer(wire, "batch_size"),
            batches_per_epoch=optional_integer(wire, "batches_per_epoch"),
            training=flag(wire, "training", False),
            exact=flag(wire, "exact", True),
            pending=optional_integer(wire, "pending", minimum=0),
            epoch=integer(wire, "epoch", 0),
            worker_pids=integers(wire, "worker_pids"),
            dropped=integer(wire, "dropped", 0),
        )


@dataclass(frozen=True, slots=True)
class Batch(Message):
    """``batch``: one batch the loop received (``step_ms`` None for an epoch's first)."""

    TYPE: ClassVar[MessageType] = MessageType.BATCH
    loader: str
    step: int
    epoch: int
    batch: int
    num_workers: int
    samples: int
    load_ms: float
    step_ms: float | None
    time: float
    switch_ms: float = 0.0
    rank: int | None = None

    def to_wire(self) -> dict[str, object]:
        # Built directly: one a batch, in the writer thread (no words or tuples to convert).
        ranked: dict[str, object] = {} if self.rank is None else {"rank": self.rank}
        return {
            "type": "batch",
            **ranked,
            "loader": self.loader,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "num_workers": self.num_workers,
            "samples": self.samples,
            "load_ms": self.load_ms,
            "step_ms": self.step_ms,
            "switch_ms": self.switch_ms,
            "time": self.time,
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> Batch:
        return cls(
            loader=text(wire, "loader"),
            step=integer(wire, "step"),
            epoch=integer(wire, "epoch"),
            batch=integer(wire, "batch"),
            num_workers=integer(wire, "num_workers", minimum=0),
            samples=integer(wire, "samples"),
            load_ms=number(wire, "load_ms"),
            step_ms=optional_number(wire, "step_ms"),
            time=number(wire, "time"),
            switch_ms=number(wire, "switch_ms", 0.0),
            rank=optional_integer(wire, "rank"),
        )


@dataclass(frozen=True, slots=True)
class Log(Message):
    """``log``: ``loadertop.log(...)``'s values for batch ``step`` (the user's names: ``metrics`` kept whole)."""

    TYPE: ClassVar[MessageType] = MessageType.LOG
    loader: str
    step: int
    metrics: Mapping[str, object] = field(default_factory=dict)
    rank: int | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {"rank": self.rank, "loader": self.loader, "step": self.step, "metrics": dict(self.metrics)},
            omit_none=("rank",),
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Log:
        return cls(
            loader=text(wire, "loader"),
            step=integer(wire, "step"),
            metrics=mapping(wire, "metrics"),
            rank=optional_integer(wire, "rank"),
        )


@dataclass(frozen=True, slots=True)
class Cpu(Message):
    """``cpu``: the script's own reading of its tree's CPU clock (``reason``: where, see ``CpuReason``)."""

    TYPE: ClassVar[MessageType] = MessageType.CPU
    reason: CpuReason
    loader: str
    time: float
    main_s: float
    children_s: float
    rss_bytes: int

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "reason": self.reason,
                "loader": self.loader,
                "time": self.time,
                "main_s": self.main_s,
                "children_s": self.children_s,
                "rss_bytes": self.rss_bytes,
            },
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Cpu:
        return cls(
            reason=word(wire, "reason", CpuReason),
            loader=text(wire, "loader"),
            time=number(wire, "time"),
            main_s=number(wire, "main_s"),
            children_s=number(wire, "children_s"),
            rss_bytes=integer(wire, "rss_bytes"),
        )


@dataclass(frozen=True, slots=True)
class SwitchEvent(Message):
    """``event`` ``switch``: a loader's batches came from another worker count after batch ``after_step``."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    KIND: ClassVar[EventKind] = EventKind.SWITCH
    loader: str
    from_workers: int
    to_workers: int
    after_step: int
    by: str | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "event": self.KIND,
                "loader": self.loader,
                "after_step": self.after_step,
                "from": self.from_workers,
                "to": self.to_workers,
                "by": self.by,
            },
            omit_none=("by",),
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> SwitchEvent:
        return cls(
            loader=text(wire, "loader"),
            from_workers=integer(wire, "from", minimum=0),
            to_workers=integer(wire, "to", minimum=0),
            after_step=integer(wire, "after_step"),
            by=optional_text(wire, "by"),
        )


@dataclass(frozen=True, slots=True)
class AutotuneEvent(Message):
    """``event`` ``autotune``: a change of the autotuner, as ``--record`` has it (``ceiling`` None: unknown)."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    KIND: ClassVar[EventKind] = EventKind.AUTOTUNE
    change: ChangeKind
    from_workers: int
    to_workers: int
    reason: str = ""
    predicted: Curve = ()
    ceiling: float | None = None
    loader: str | None = None
    step: int = 0
    rank: int | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "event": self.KIND,
                "change": self.change,
                "from": self.from_workers,
                "to": self.to_workers,
                "reason": self.reason,
                "predicted": curve_to_wire(self.predicted),
                "ceiling": self.ceiling,
                "rank": self.rank,
                "loader": self.loader,
                "step": self.step,
            },
            omit_none=("rank",),
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> AutotuneEvent:
        return cls(
            change=word(wire, "change", ChangeKind),
            from_workers=integer(wire, "from", minimum=0),
            to_workers=integer(wire, "to", minimum=0),
            reason=text(wire, "reason", ""),
            predicted=curve(wire, "predicted"),
            ceiling=optional_number(wire, "ceiling"),
            loader=optional_text(wire, "loader"),
            step=integer(wire, "step", 0),
            rank=optional_integer(wire, "rank"),
        )


@dataclass(frozen=True, slots=True)
class ExceptionEvent(Message):
    """``event`` ``exception``: the run failed; ``traceback`` as it printed it (its last 8,000 characters)."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    KIND: ClassVar[EventKind] = EventKind.EXCEPTION
    traceback: str = ""

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"event": self.KIND, "traceback": self.traceback})

    @classmethod
    def from_wire(cls, wire: Wire) -> ExceptionEvent:
        return cls(traceback=text(wire, "traceback", ""))


@dataclass(frozen=True, slots=True)
class ExitEvent(Message):
    """``event`` ``exit``: the run is ending (``dropped``: batch records its writer dropped)."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    KIND: ClassVar[EventKind] = EventKind.EXIT
    dropped: int = 0

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"event": self.KIND, "dropped": self.dropped})

    @classmethod
    def from_wire(cls, wire: Wire) -> ExitEvent:
        return cls(dropped=integer(wire, "dropped", 0, minimum=0))


@dataclass(frozen=True, slots=True)
class OtherEvent(Message):
    """An ``event`` of a kind this side does not read: shown as it is, every field kept (``extra``)."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    event: str
    extra: Mapping[str, object] = field(default_factory=dict)

    def to_wire(self) -> dict[str, object]:
        return {**self.extra, "type": self.TYPE.value, "event": self.event}

    @classmethod
    def from_wire(cls, wire: Wire) -> OtherEvent:
        return cls(event=text(wire, "event"), extra={k: v for k, v in wire.items() if k not in ("v", "type", "event")})


Event = SwitchEvent | AutotuneEvent | ExceptionEvent | ExitEvent | OtherEvent
_EVENTS: dict[str, Callable[[Wire], Event]] = {
    EventKind.SWITCH: SwitchEvent.from_wire,
    EventKind.AUTOTUNE: AutotuneEvent.from_wire,
    EventKind.EXCEPTION: ExceptionEvent.from_wire,
    EventKind.EXIT: ExitEvent.from_wire,
}


def event_message(wire: Wire) -> Event:
    """An ``event`` message by its ``event`` kind (one this side does not read: ``OtherEvent``)."""
    kind = text(wire, "event")
    return _EVENTS.get(kind, OtherEvent.from_wire)(wire)


@dataclass(frozen=True, slots=True)
class Control(Message):
    """``control``: who controls the run now (the monitor's pid and id; None: nobody)."""

    TYPE: ClassVar[MessageType] = MessageType.CONTROL
    controller: int | None = None
    controller_id: str | None = None
    kept_by: str | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {"controller": self.controller, "controller_id": self.controller_id, "kept_by": self.kept_by},
            omit_none=("kept_by",),
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Control:
        return cls(
            controller=optional_integer(wire, "controller"),
            controller_id=optional_text(wire, "controller_id"),
            kept_by=optional_text(wire, "kept_by"),
        )


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """``refused``: a command this monitor may not give, or one that cannot work, and why."""

    TYPE: ClassVar[MessageType] = MessageType.REFUSED
    reason: str

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"reason": self.reason})

    @classmethod
    def from_wire(cls, wire: Wire) -> Refused:
        return cls(reason=text(wire, "reason"))


@dataclass(frozen=True, slots=True)
class Dropped(Message):
    """``dropped``: messages this monitor missed because it did not read them in time."""

    TYPE: ClassVar[MessageType] = MessageType.DROPPED
    count: int

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"count": self.count})

    @classmethod
    def from_wire(cls, wire: Wire) -> Dropped:
        return cls(count=integer(wire, "count", 0, minimum=0))


@dataclass(frozen=True, slots=True)
class HistoryEnd(Message):
    """``history_end``: everything before the connection has been sent."""

    TYPE: ClassVar[MessageType] = MessageType.HISTORY_END

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {})

    @classmethod
    def from_wire(cls, wire: Wire) -> HistoryEnd:
        return cls()


@dataclass(frozen=True, slots=True)
class Peer(Message):
    """``peer``: a rank of the same torchrun job on another node, from the job's store (its figures None: unknown)."""

    TYPE: ClassVar[MessageType] = MessageType.PEER
    rank: int
    local_rank: int | None = None
    node_rank: int | None = None
    host: str | None = None
    pid: int | None = None
    num_workers: int | None = None
    load_ms: float | None = None
    step_ms: float | None = None
    samples_per_s: float | None = None
    step: int | None = None
    time: float | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE,
            {
                "rank": self.rank,
                "local_rank": self.local_rank,
                "node_rank": self.node_rank,
                "host": self.host,
                "pid": self.pid,
                "num_workers": self.num_workers,
                "load_ms": self.load_ms,
                "step_ms": self.step_ms,
                "samples_per_s": self.samples_per_s,
                "step": self.step,
                "time": self.time,
            },
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Peer:
        return cls(
            rank=integer(wire, "rank", minimum=0),
            local_rank=optional_integer(wire, "local_rank", minimum=0),
            node_rank=optional_integer(wire, "node_rank", minimum=0),
            host=optional_text(wire, "host"),
            pid=optional_integer(wire, "pid"),
            num_workers=optional_integer(wire, "num_workers", minimum=0),
            load_ms=optional_number(wire, "load_ms"),
            step_ms=optional_number(wire, "step_ms"),
            samples_per_s=optional_number(wire, "samples_per_s"),
            step=optional_integer(wire, "step"),
            time=optional_number(wire, "time"),
        )


@dataclass(frozen=True, slots=True)
class AutotuneStatus(Message):
    """``autotune``: the autotuner's status (its budgets ``cores``, ``memory_bytes``, ``max_workers`` once it exists:
    ``cores`` None before; ``memory_bytes`` None: no limit)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTOTUNE
    loader: str | None = None
    state: TunerState = TunerState.OFF
    workers: int | None = None
    changes: int = 0
    predicted: Curve = ()
    ceiling: float | None = None
    cores: float | None = None
    memory_bytes: int | None = None
    max_workers: int | None = None

    def to_wire(self) -> dict[str, object]:
        budgets = (
            {}
            if self.cores is None
            else {"cores": self.cores, "memory_bytes": self.memory_bytes, "max_workers": self.max_workers}
        )
        return _wire(
            self.TYPE,
            {
                "loader": self.loader,
                "state": self.state,
                "workers": self.workers,
                "changes": self.changes,
                "predicted": curve_to_wire(self.predicted),
                "ceiling": self.ceiling,
                **budgets,
            },
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> AutotuneStatus:
        return cls(
            loader=optional_text(wire, "loader"),
            state=word(wire, "state", TunerState, TunerState.OFF),
            workers=optional_integer(wire, "workers", minimum=0),
            changes=integer(wire, "changes", 0),
            predicted=curve(wire, "predicted"),
            ceiling=optional_number(wire, "ceiling"),
            cores=optional_number(wire, "cores"),
            memory_bytes=optional_integer(wire, "memory_bytes"),
            max_workers=optional_integer(wire, "max_workers"),
        )


@dataclass(frozen=True, slots=True)
class StagesUpdate(Message):
    """``stages``: where ``loader``'s samples' time goes, one ``StageFigures`` per worker count run."""

    TYPE: ClassVar[MessageType] = MessageType.STAGES
    loader: str
    figures: tuple[StageFigures, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"loader": self.loader, "figures": [f.to_wire() for f in self.figures]})

    @classmethod
    def from_wire(cls, wire: Wire) -> StagesUpdate:
        return cls(loader=text(wire, "loader"), figures=stage_figures(wire, "figures"))


ServerMessage = (
    Hello
    | LoaderUpdate
    | Batch
    | Log
    | Cpu
    | SwitchEvent
    | AutotuneEvent
    | ExceptionEvent
    | ExitEvent
    | OtherEvent
    | Control
    | Refused
    | Dropped
    | HistoryEnd
    | Peer
    | AutotuneStatus
    | StagesUpdate
)
"""What a training process sends its monitors."""
_SERVER: dict[str, Callable[[Wire], ServerMessage]] = {
    MessageType.HELLO: Hello.from_wire,
    MessageType.LOADER: LoaderUpdate.from_wire,
    MessageType.BATCH: Batch.from_wire,
    MessageType.LOG: Log.from_wire,
    MessageType.CPU: Cpu.from_wire,
    MessageType.EVENT: event_message,
    MessageType.CONTROL: Control.from_wire,
    MessageType.REFUSED: Refused.from_wire,
    MessageType.DROPPED: Dropped.from_wire,
    MessageType.HISTORY_END: HistoryEnd.from_wire,
    MessageType.PEER: Peer.from_wire,
    MessageType.AUTOTUNE: AutotuneStatus.from_wire,
    MessageType.STAGES: StagesUpdate.from_wire,
}


def server_message(wire: Wire) -> ServerMessage:
    """A message from the training process, by its ``type``; ``MessageError`` when it is not one."""
    kind = wire.get("type")
    read = _SERVER.get(kind) if isinstance(kind, str) else None
    if read is None:
        raise MessageError(f"not a message from a run: type {kind!r}")
    return read(wire)


# ----------------------------------------------- monitor -> training process


@dataclass(frozen=True, slots=True)
class MonitorHello(Message):
    """A monitor's ``hello``: its ``pid`` and ``id`` (several may share a process), and whether it wants control."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    pid: int | None = None
    id: str | None = None
    control: bool = False

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"pid": self.pid, "id": self.id, "control": self.control})

    @classmethod
    def from_wire(cls, wire: Wire) -> MonitorHello:
        return cls(
            pid=optional_integer(wire, "pid"), id=optional_text(wire, "id"), control=flag(wire, "control", False)
        )


@dataclass(frozen=True, slots=True)
class Switch(Message):
    """``switch``: run ``workers`` in ``loader`` (None: the training loader), of rank ``rank`` (None: this one)."""

    TYPE: ClassVar[MessageType] = MessageType.SWITCH
    workers: int
    loader: str | None = None
    rank: int | None = None

    def to_wire(self) -> dict[str, object]:
        return _wire(
            self.TYPE, {"workers": self.workers, "loader": self.loader, "rank": self.rank}, omit_none=("rank",)
        )

    @classmethod
    def from_wire(cls, wire: Wire) -> Switch:
        return cls(
            workers=integer(wire, "workers", minimum=0),
            loader=optional_text(wire, "loader", what="a name"),
            rank=optional_integer(wire, "rank"),
        )


@dataclass(frozen=True, slots=True)
class AutotuneRequest(Message):
    """A monitor's ``autotune``: tune the training loader from its running count (``enabled``) or stop."""

    TYPE: ClassVar[MessageType] = MessageType.AUTOTUNE
    enabled: bool

    def to_wire(self) -> dict[str, object]:
        return _wire(self.TYPE, {"enabled": self.enabled})

    @classmethod
    def from_wire(cls, wire: Wire) -> AutotuneRequest:
        return cls(enabled=flag(wire, "enabled"))


ClientMessage = MonitorHello | Switch | AutotuneRequest
"""What a monitor sends the training process."""
_CLIENT: dict[str, Callable[[Wire], ClientMessage]] = {
    MessageType.HELLO: MonitorHello.from_wire,
    MessageType.SWITCH: Switch.from_wire,
    MessageType.AUTOTUNE: AutotuneRequest.from_wire,
}


def client_message(wire: Wire) -> ClientMessage:
    """A message from a monitor, by its ``type``; ``MessageError`` when it is not one."""
    kind = wire.get("type")
    read = _CLIENT.get(kind) if isinstance(kind, str) else None
    if read is None:
        raise MessageError(f"not a message from a monitor: type {kind!r}")
    return read(wire)
