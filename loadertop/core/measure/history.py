"""What loadertop remembers between runs: a per-user SQLite store of each loader's settled worker count and its
measurements, by the loader's signature and the machine's.

The store is ``history.sqlite3`` in ``$LOADERTOP_HOME`` (else ``$XDG_DATA_HOME/loadertop``, else
``~/.local/share/loadertop``). Its schema is versioned (``PRAGMA user_version``); several runs may write at once
(WAL, a busy timeout: SQLite serialises the writers). A store that is not SQLite, or is corrupt, or was written
by a newer loadertop, is moved aside with one line and a new one started; where nothing can be written (a
read-only or full disk) the run goes on and ``History.problem`` says once why nothing was remembered.

What a row is: one loader of one run (``loader_runs``): the loader's signature (the program, the dataset's class
and length, the batch size, the loader's name), the machine's (usable cores and where that came from, the
memory limit, the GPUs, the start method, torch's version), the count it settled on and its samples/s (at each
settle), and at the end of the run the comparison table's rows and the stage figures, as JSON.

Standard library only: the monitor, the sweep and a script's probe all use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
"""The store's schema (``PRAGMA user_version``); a store of a higher one is moved aside, never read."""

FILE_NAME = "history.sqlite3"
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another run's (SQLite has one writer at a time)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    program TEXT NOT NULL,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    machine_key TEXT NOT NULL,
    machine TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS loader_runs (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    loader_key TEXT NOT NULL,
    machine_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    settled_workers INTEGER,
    settled_samples_per_s REAL,
    settled_at REAL,
    rows TEXT,
    stages TEXT,
    updated REAL NOT NULL,
    UNIQUE (run_id, name)
);
CREATE INDEX IF NOT EXISTS loader_runs_by_key ON loader_runs (loader_key, machine_key, settled_at);
"""


def home() -> Path:
    """Where the store lives: ``$LOADERTOP_HOME``, else ``$XDG_DATA_HOME/loadertop``, else
    ``~/.local/share/loadertop``."""
    explicit = os.environ.get("LOADERTOP_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data).expanduser() if data else Path.home() / ".local" / "share") / "loadertop"


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class MachineSignature:
    """What makes two runs' measurements comparable on the machine's side.

    Attributes:
        cores: the cores this process may use (``limits.Limits.cores``), rounded to 0.01.
        cores_source: what set them (``host``, ``CPU affinity``, ``cgroup v2 quota``...).
        memory_bytes: the memory limit that confines the process, else the host's memory, in MiB steps.
        memory_source: where that came from.
        gpus: the GPUs' names (NVIDIA's, as CUDA names them), one per GPU.
        start_method: the workers' start method (``fork``, ``spawn``, ``forkserver``).
        torch: torch's version.
        host: the machine's name (a copy of the same image elsewhere is another machine).
    """

    cores: float
    cores_source: str
    memory_bytes: int
    memory_source: str
    gpus: tuple[str, ...]
    start_method: str
    torch: str
    host: str

    @property
    def key(self) -> str:
        """A short hash of every field."""
        return _key(asdict(self))

    def describe(self) -> str:
        """``2 cores (host), 23.4 GiB (host), no GPU, fork, torch 2.14.1 on vm-12``."""
        gpus = f"{len(self.gpus)} x {self.gpus[0]}" if self.gpus else "no GPU"
        return (
            f"{self.cores:g} cores ({self.cores_source}), {self.memory_bytes / 2**30:.1f} GiB ({self.memory_source}), "
            f"{gpus}, {self.start_method}, torch {self.torch} on {self.host}"
        )


def machine_signature(*, gpus: Sequence[str], start_method: str, torch_version: str) -> MachineSignature:
    """This machine's signature as this process sees it (its limits read now)."""
    import platform

    from loadertop.core.measure.limits import current_limits

    limits = current_limits()
    mib = 2**20
    return MachineSignature(
        cores=round(float(limits.cores), 2),
        cores_source=limits.cores_source,
        memory_bytes=int(limits.memory_total_bytes // mib * mib),
        memory_source=limits.memory_source,
        gpus=tuple(gpus),
        start_method=start_method,
        torch=torch_version,
        host=platform.node(),
    )


@dataclass(frozen=True, slots=True)
class LoaderSignature:
    """What makes a loader the same loader in another run.

    Attributes:
        program: the script (its path, absolute) or the workload (``module:callable``, ``built-in``).
        name: the loader's name (a script's ``train.py:40``; the built-in run's ``train``).
        dataset: the dataset's class, ``module.QualName``.
        length: the dataset's length (None: it has none).
        batch_size: the loader's batch size (None: a batch sampler's).
    """

    program: str
    name: str
    dataset: str
    length: int | None
    batch_size: int | None

    @property
    def key(self) -> str:
        """A short hash of every field."""
        return _key(asdict(self))


def loader_signature(program: str, name: str, dataset: Any, batch_size: int | None) -> LoaderSignature:
    """``dataset``'s loader's signature (its class and length read here)."""
    kind = type(dataset)
    try:
        length: int | None = len(dataset)
    except TypeError:
        length = None
    return LoaderSignature(program, name, f"{kind.__module__}.{kind.__qualname__}", length, batch_size)


@dataclass(frozen=True, slots=True)
class Remembered:
    """A loader's settled count as a past run found it on this machine."""

    workers: int
    samples_per_s: float
    at: float  # UNIX time of the settle
    run_id: int

    def reason(self) -> str:
        """``settled there on 2026-11-30 for this loader on this machine (715 samples/s)``."""
        day = time.strftime("%Y-%m-%d", time.localtime(self.at))
        return f"settled there on {day} for this loader on this machine ({self.samples_per_s:,.0f} samples/s)"


@dataclass(frozen=True, slots=True)
class LoaderRun:
    """One loader of one past run, as ``loadertop history`` shows it."""

    run_id: int
    program: str
    kind: str
    started: float
    ended: float | None
    name: str
    signature: dict[str, Any]
    machine: dict[str, Any]
    settled_workers: int | None
    settled_samples_per_s: float | None
    rows: list[dict[str, Any]]
    stages: list[dict[str, Any]]

    @property
    def best(self) -> tuple[int, float] | None:
        """The fastest measured count and its samples/s (the table's), else the settled one."""
        measured = [(int(r["num_workers"]), float(r["samples_per_s"])) for r in self.rows if r.get("samples_per_s")]
        if measured:
            return max(measured, key=lambda pair: pair[1])
        if self.settled_workers is not None and self.settled_samples_per_s is not None:
            return self.settled_workers, self.settled_samples_per_s
        return None

    def to_wire(self) -> dict[str, Any]:
        """As JSON (``loadertop history --json``)."""
        best = self.best
        return {
            "run": self.run_id,
            "program": self.program,
            "kind": self.kind,
            "started": self.started,
            "ended": self.ended,
            "loader": self.name,
            "signature": self.signature,
            "machine": self.machine,
            "settled_workers": self.settled_workers,
            "settled_samples_per_s": self.settled_samples_per_s,
            "best_workers": best[0] if best else None,
            "best_samples_per_s": best[1] if best else None,
            "rows": self.rows,
            "stages": self.stages,
        }


class History:
    """The store, opened at ``path`` (default: ``home() / FILE_NAME``); see the module's docstring.

    Every method that writes returns quietly where the store cannot be written: ``problem`` then says why (once
    to ``on_problem``), and the run goes on.

    Args:
        path: the SQLite file.
        on_problem: told, once, a line on why nothing is remembered, or that a store was moved aside.
    """

    def __init__(self, path: Path | None = None, *, on_problem: Callable[[str], None] | None = None) -> None:
        self.path = path if path is not None else home() / FILE_NAME
        self.problem: str | None = None
        self._on_problem = on_problem
        self._told = False

    # ------------------------------------------------------------------ opening

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection to a store of this schema (made, moved aside and made again as needed), or None where
        there is none to read (``write`` False: a missing store is not made) or it cannot be written."""
        if not write and not self.path.exists():
            yield None
            return
        try:
            connection = self._open(write=write)
        except (OSError, sqlite3.Error) as exc:
            self._fail(f"nothing was remembered: {self.path}: {exc}")
            yield None
            return
        try:
            with connection:
                yield connection
        except sqlite3.Error as exc:
            self._fail(f"nothing was remembered: {self.path}: {exc}")
        finally:
            connection.close()

    def _open(self, *, write: bool) -> sqlite3.Connection:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    connection.close()
                    self._move_aside(
                        f"written by a newer loadertop (schema {version}, this one reads {SCHEMA_VERSION})"
                    )
                    continue
                if version < SCHEMA_VERSION:
                    if not write:
                        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a real store?
                        return connection
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.executescript(_SCHEMA)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.isolation_level = "DEFERRED"  # transactions as ``with connection`` makes them
                return connection
            except sqlite3.DatabaseError as exc:
                connection.close()
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).replace("-", ""):
                    raise
                self._move_aside(f"not a loadertop store or corrupt ({exc})")
        raise sqlite3.DatabaseError(f"{self.path} could not be made anew")

    def _move_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.aside")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{aside}{suffix}"))
        self._say(f"the run history {self.path} was {why}: moved to {aside.name}, a new one started")

    def _fail(self, line: str) -> None:
        if self.problem is None:
            self.problem = line
        self._say(line)

    def _say(self, line: str) -> None:
        if self._on_problem is not None and not (self._told and line.startswith("nothing was remembered")):
            self._on_problem(line)
        if line.startswith("nothing was remembered"):
            self._told = True

    # ------------------------------------------------------------------ writing

    def begin_run(
        self, program: str, kind: str, machine: MachineSignature, *, started: float | None = None
    ) -> int | None:
        """A new run of ``program`` (``kind``: ``built-in``, ``workload``, ``script``) that began at ``started``
        (default: now); its id, or None where nothing can be remembered."""
        with self._connect(write=True) as db:
            if db is None:
                return None
            cursor = db.execute(
                "INSERT INTO runs (program, kind, started, machine_key, machine) VALUES (?, ?, ?, ?, ?)",
                (
                    program,
                    kind,
                    started if started is not None else time.time(),
                    machine.key,
                    json.dumps(asdict(machine)),
                ),
            )
            return int(cursor.lastrowid or 0)
        return None

    def settled(
        self, run_id: int | None, loader: LoaderSignature, machine: MachineSignature, workers: int, sps: float
    ) -> None:
        """``loader`` settled at ``workers`` (``sps`` samples/s measured there): remembered now."""
        self._loader_row(run_id, loader, machine, settled=(workers, sps, time.time()))

    def finished(
        self,
        run_id: int | None,
        loaders: Sequence[tuple[LoaderSignature, Sequence[dict[str, Any]], Sequence[dict[str, Any]]]],
        machine: MachineSignature,
    ) -> None:
        """The run ended: each loader's comparison rows and stage figures (as JSON), and the run's end time."""
        if run_id is None:
            return
        for loader, rows, stages in loaders:
            self._loader_row(run_id, loader, machine, rows=list(rows), stages=list(stages))
        with self._connect(write=True) as db:
            if db is not None:
                db.execute("UPDATE runs SET ended = ? WHERE id = ?", (time.time(), run_id))

    def _loader_row(
        self,
        run_id: int | None,
        loader: LoaderSignature,
        machine: MachineSignature,
        *,
        settled: tuple[int, float, float] | None = None,
        rows: list[dict[str, Any]] | None = None,
        stages: list[dict[str, Any]] | None = None,
    ) -> None:
        if run_id is None:
            return
        with self._connect(write=True) as db:
            if db is None:
                return
            now = time.time()
            db.execute(
                "INSERT INTO loader_runs (run_id, name, loader_key, machine_key, signature, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO NOTHING",
                (run_id, loader.name, loader.key, machine.key, json.dumps(asdict(loader)), now),
            )
            if settled is not None:
                db.execute(
                    "UPDATE loader_runs SET settled_workers = ?, settled_samples_per_s = ?, settled_at = ?, "
                    "updated = ? WHERE run_id = ? AND name = ?",
                    (*settled, now, run_id, loader.name),
                )
            if rows is not None or stages is not None:
                db.execute(
                    "UPDATE loader_runs SET rows = ?, stages = ?, updated = ? WHERE run_id = ? AND name = ?",
                    (json.dumps(rows or []), json.dumps(stages or []), now, run_id, loader.name),
                )

    # ------------------------------------------------------------------ reading

    def remembered(self, loader: LoaderSignature, machine: MachineSignature) -> Remembered | None:
        """The latest settle of the same loader on the same machine, None where there is none."""
        with self._connect(write=False) as db:
            if db is None or not _has_tables(db):
                return None
            row = db.execute(
                "SELECT settled_workers, settled_samples_per_s, settled_at, run_id FROM loader_runs "
                "WHERE loader_key = ? AND machine_key = ? AND settled_workers IS NOT NULL "
                "ORDER BY settled_at DESC LIMIT 1",
                (loader.key, machine.key),
            ).fetchone()
            return Remembered(int(row[0]), float(row[1]), float(row[2]), int(row[3])) if row else None
        return None

    def loader_runs(self, *, name: str | None = None, limit: int = 50) -> list[LoaderRun]:
        """Past runs' loaders, newest first (``name``: that loader's only)."""
        with self._connect(write=False) as db:
            if db is None or not _has_tables(db):
                return []
            query = (
                "SELECT r.id, r.program, r.kind, r.started, r.ended, l.name, l.signature, r.machine, "
                "l.settled_workers, l.settled_samples_per_s, l.rows, l.stages "
                "FROM loader_runs l JOIN runs r ON r.id = l.run_id "
                + ("WHERE l.name = ? " if name is not None else "")
                + "ORDER BY r.started DESC, l.id LIMIT ?"
            )
            args: tuple[Any, ...] = (name, limit) if name is not None else (limit,)
            return [
                LoaderRun(
                    int(row[0]),
                    str(row[1]),
                    str(row[2]),
                    float(row[3]),
                    None if row[4] is None else float(row[4]),
                    str(row[5]),
                    json.loads(row[6]),
                    json.loads(row[7]),
                    None if row[8] is None else int(row[8]),
                    None if row[9] is None else float(row[9]),
                    json.loads(row[10]) if row[10] else [],
                    json.loads(row[11]) if row[11] else [],
                )
                for row in db.execute(query, args).fetchall()
            ]
        return []


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'loader_runs'").fetchone() is not None
