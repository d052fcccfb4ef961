"""Inside a script that ``loadertop run -- COMMAND`` started: every DataLoader becomes loadertop's.

The launcher puts ``bootstrap/`` on the script's PYTHONPATH and its settings in the
``LOADERTOP_PROBE`` environment variable. ``bootstrap/sitecustomize.py`` calls
``install_from_environment``, which waits for the script to import torch (nothing is imported
before: a script that never imports torch runs as it would) and then makes
``torch.utils.data.DataLoader`` loadertop's drop-in class. The first process of the run that
imports torch claims it (the script, not a spawned DataLoader worker); there ``--workers``
sets every loader's worker count, ``--switch`` changes the training loader's (the first one
created) after the batches named, and each batch goes to ``--record`` and to loadertop's lines
on stderr through a bounded queue and a writer thread: the loop never waits on the writing.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import IO, Any

ENV = "LOADERTOP_PROBE"
QUEUE_LIMIT = 10_000
"""Batches waiting for the writer thread; past that they are dropped (and counted), never waited for."""
STATUS_INTERVAL_S = 0.25
"""How often the writer looks for changed loader states (worker pids, pending requests) to publish."""
WRITER_PERIOD_S = 0.05
"""The writer thread's shortest period: what the loop queued meanwhile is written and published at once."""


@dataclass(frozen=True)
class ProbeSettings:
    """What the launcher asks of the script's loaders (``LOADERTOP_PROBE``, JSON).

    Attributes:
        workers: every loader's worker count instead of the script's (None: the script's own).
        switches: ``{"STEP": workers}`` switches the training loader after STEP of its batches,
            ``{"LOADER@STEP": workers}`` the loader named LOADER.
        record: a JSONL file for one object per batch (None: none).
        claim: a path the first process to import torch creates, to be the one that acts.
        command: the command line the launcher ran (for monitors).
        log: the file the script's output goes to (None: the terminal).
        serve: serve monitors on a socket (``loadertop attach``).
    """

    workers: int | None = None
    switches: dict[str, int] = field(default_factory=dict)
    record: str | None = None
    claim: str | None = None
    command: tuple[str, ...] = ()
    log: str | None = None
    serve: bool = True

    def to_environment(self) -> str:
        """The value of ``LOADERTOP_PROBE``."""
        return json.dumps({"workers": self.workers, "switches": dict(self.switches),
                           "record": self.record, "claim": self.claim, "command": list(self.command),
                           "log": self.log, "serve": self.serve})

    @classmethod
    def from_environment(cls, text: str) -> ProbeSettings:
        """Parse ``LOADERTOP_PROBE``."""
        data = json.loads(text)
        return cls(workers=data.get("workers"), switches={str(k): int(v) for k, v in data.get("switches", {}).items()},
                   record=data.get("record"), claim=data.get("claim"), command=tuple(data.get("command") or ()),
                   log=data.get("log"), serve=bool(data.get("serve", True)))


_run: LaunchedRun | None = None  # the run this process acts for, once it claimed it


def log(**metrics: Any) -> None:
    """Record metrics (``loss=...``) for the training loader's latest batch; nothing outside ``loadertop run``.

    Tensors are detached and read by loadertop's writer thread, never here: the training thread
    is not made to wait for the device. In ``--record`` each call is a line ``{"event": "log",
    "loader": ..., "step": ..., "loss": ...}``; the epoch lines show the mean loss.
    """
    run = _run
    if run is not None:
        run.log(metrics)


def install_from_environment() -> None:
    """Instrument torch's DataLoader as soon as the script imports torch (from sitecustomize)."""
    settings = ProbeSettings.from_environment(os.environ[ENV])
    if "torch" in sys.modules:
        _instrument(settings)
    else:
        sys.meta_path.insert(0, _AfterImport("torch", lambda _module: _instrument(settings)))


def _instrument(settings: ProbeSettings) -> None:
    import torch.utils.data

    from loadertop.core.probe.loader import DataLoader

    global _run
    torch.utils.data.DataLoader = DataLoader  # type: ignore[misc]
    if _claim(settings.claim):
        _run = LaunchedRun(settings)
        DataLoader.creation_hook = _run


def _claim(path: str | None) -> bool:
    """Be the process of the run that acts on its loaders: the first to get here (atomic create)."""
    if path is None:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return False
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once module ``name`` has been imported, without changing how it is found."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then
        self._finding = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """A module loader that calls ``then(module)`` after the module ran; everything else is the original's."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._then(module)
        except Exception as exc:  # noqa: BLE001 - the script must run even when loadertop cannot watch it
            print(f"loadertop: cannot instrument DataLoaders ({type(exc).__name__}: {exc}); the script runs "
                  "unwatched", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class LaunchedRun:
    """The creation hook of a launched script: settings applied, every batch recorded, published and summed up.

    The loop's thread only builds a small record and puts it on a bounded queue; the writer
    thread writes ``--record``, prints loadertop's lines and publishes to the monitors'
    socket (``RunServer``), whose own thread sends; monitors' switch requests arrive there.
    """

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.loaders: list[Any] = []
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self._steps: dict[str, int] = {}
        self._record: IO[str] | None = open(settings.record, "w", encoding="utf-8") if settings.record else None  # noqa: SIM115
        self.server: Any = self._serve() if settings.serve else None
        self._clock = _cpu_clock()
        self._writer = threading.Thread(target=self._write, name="loadertop-writer", daemon=True)
        self._writer.start()
        if self.server is not None:
            ours = [self._writer.native_id or 0, self.server.native_id]
            if self._clock is not None:
                self._clock.exclude_threads(ours)
            self.server.update_hello(threads=ours)  # monitors leave them out of their own readings too
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self.close)

    def _serve(self) -> Any:
        """The socket monitors attach to; None (and a line) when it cannot be made: the script runs unwatched."""
        from loadertop.core.probe.server import RunServer
        from loadertop.core.protocol.runtime import RuntimeDirError, run_socket_path

        hello = {"pid": os.getpid(), "command": list(self.settings.command) or list(sys.argv),
                 "cwd": os.getcwd(), "started": time.time(), "log": self.settings.log}
        try:
            return RunServer(run_socket_path(), hello, self._switch_request)
        except (OSError, RuntimeDirError) as exc:
            self._say(f"no monitor can attach: {exc}")
            return None

    # ---------------------------------------------------------------- hook

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``--workers`` replaces the script's count; settings that need workers are dropped at 0."""
        workers = self.settings.workers
        if workers is None:
            return arguments
        arguments = dict(arguments, num_workers=workers)
        if workers == 0:
            for name, neutral in (("prefetch_factor", None), ("persistent_workers", False),
                                  ("multiprocessing_context", None), ("timeout", 0)):
                if name in arguments:
                    arguments[name] = neutral
        return arguments

    def created(self, loader: Any) -> None:
        """Watch ``loader``; the first one created is the training loader that ``--switch`` addresses."""
        training = not self.loaders
        self.loaders.append(loader)
        self._steps[loader.name] = 0
        loader.add_observer(lambda batch: self._on_batch(loader, batch, training))
        if training:
            loader.add_boundary_hook(self._boundary)
        role = " (training: --switch applies to it)" if training else ""
        self._put(("loader", loader))
        self._say(f"DataLoader {loader.name}: {_workers(loader.num_workers)}, batch {loader.batch_size}{role}")

    def _boundary(self, loader: Any) -> None:
        """A configuration of the training loader begins (loop thread): the tree's CPU now, off to the writer."""
        if self._clock is not None:
            with contextlib.suppress(Exception):
                self._put(("cpu", ("boundary", loader.name, self._clock.read())))

    def _find(self, name: str | None) -> Any:
        if name is None:
            return self.loaders[0] if self.loaders else None
        return next((loader for loader in self.loaders if loader.name == name), None)

    def _switch_request(self, name: str | None, workers: int) -> str | None:
        """A monitor's switch (in the server's thread): applied by the loader at its next batch boundary."""
        loader = self._find(name)
        if loader is None:
            return "no DataLoader yet" if name is None else f"no DataLoader named {name!r}"
        loader.switch(workers)
        when = "at the next batch" if loader.continues_exactly else "at the next epoch (an IterableDataset)"
        self._put(("say", f"{loader.name}: the monitor asks for {_workers(workers)}, {when}"))
        self._put(("loader", loader))
        return None

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, value, tb))
        self._put(("exception", text))
        self._previous_excepthook(kind, value, tb)

    # -------------------------------------------------------- loop thread

    def _on_batch(self, loader: Any, batch: Any, training: bool) -> None:
        step = self._steps[loader.name] = self._steps[loader.name] + 1
        self._put(("batch", (step, batch)))
        switches = self.settings.switches
        if not switches:  # the common case: nothing more to do on the loop's path
            return
        workers = switches.get(f"{loader.name}@{step}", switches.get(str(step)) if training else None)
        if workers is not None:
            loader.switch(workers)
            self._put(("say", f"{loader.name}: switching {batch.num_workers} -> {_workers(workers)} after batch {step}"))

    def log(self, metrics: dict[str, Any]) -> None:
        """Queue ``metrics`` for the training loader's latest batch (tensors detached, not read)."""
        if not self.loaders:
            return
        name = self.loaders[0].name
        values = {k: v.detach() if hasattr(v, "detach") else v for k, v in metrics.items()}
        self._put(("log", (name, self._steps[name], values)))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------------- writer thread

    def _publish(self, kind: str, **fields: Any) -> None:
        if self.server is not None:
            self.server.publish(kind, wake=False, **fields)

    def _publish_loader(self, loader: Any) -> Any:
        status = loader.status()
        try:
            batches: int | None = len(loader)
        except TypeError:
            batches = None
        self._publish("loader", name=loader.name, num_workers=status.num_workers, batch_size=loader.batch_size,
                      batches_per_epoch=batches, training=loader is self.loaders[0], exact=loader.continues_exactly,
                      pending=status.pending, epoch=status.epoch, worker_pids=list(status.worker_pids),
                      dropped=self.dropped)
        return status

    def _publish_cpu(self, reason: str, loader: str, reading: Any) -> None:
        self._publish("cpu", reason=reason, loader=loader, time=reading.time, main_s=reading.main_s,
                      children_s=reading.children_s, rss_bytes=reading.rss_bytes)

    def _write(self) -> None:
        sums: dict[tuple[str, int], list[float]] = {}  # (loader, workers) -> [batches, load_s, step_s, samples]
        epochs: dict[str, tuple[int, list[float]]] = {}  # loader -> (epoch, [batches, load_s, step_s, samples])
        seen: dict[str, Any] = {}  # loader -> the status last published
        workers_of: dict[str, int] = {}  # loader -> workers of its latest batch
        next_status = 0.0
        waiting: deque[tuple[str, Any]] = deque()
        while True:
            if not waiting:
                if self.server is not None:
                    self.server.flush()  # one wake-up of the serving thread for all that was published
                # Work in bursts, at most 20 a second: each wake-up of this thread takes the GIL from the loop.
                time.sleep(WRITER_PERIOD_S)
                try:
                    waiting.append(self._queue.get(timeout=STATUS_INTERVAL_S))
                except queue.Empty:
                    waiting.append(("idle", None))
                with contextlib.suppress(queue.Empty):
                    while True:
                        waiting.append(self._queue.get_nowait())
            kind, payload = waiting.popleft()
            now = time.monotonic()
            if now >= next_status:  # worker pids and pending requests, as they change
                next_status = now + STATUS_INTERVAL_S
                for loader in list(self.loaders):
                    if loader.status() != seen.get(loader.name):
                        seen[loader.name] = self._publish_loader(loader)
            if kind == "idle":
                continue
            if kind == "close":
                for name, (number, totals) in epochs.items():  # the last epoch of each loader
                    self._say(f"{name} epoch {number}: " + _describe(*totals))
                self._summary(sums)
                if self._clock is not None and self.loaders:
                    with contextlib.suppress(Exception):
                        self._publish_cpu("end", self.loaders[0].name, self._clock.read())
                self._publish("event", event="exit", dropped=self.dropped)
                return
            if kind == "cpu":
                self._publish_cpu(*payload)
                continue
            if kind == "loader":
                seen[payload.name] = self._publish_loader(payload)
                continue
            if kind == "exception":
                self._publish("event", event="exception", traceback=payload[-8000:])
                continue
            if kind == "say":
                self._say(payload)
                continue
            if kind == "log":
                self._write_log(*payload, epochs)
                continue
            step, batch = payload
            fields = {"loader": batch.loader, "step": step, "epoch": batch.epoch, "batch": batch.batch,
                      "num_workers": batch.num_workers, "samples": batch.samples,
                      "load_ms": round(batch.load_s * 1000, 4),
                      "step_ms": None if batch.step_s is None else round(batch.step_s * 1000, 4),
                      "switch_ms": round(batch.switch_s * 1000, 4), "time": round(batch.time, 6)}
            if self._record is not None:
                self._record.write(json.dumps(fields) + "\n")
                self._record.flush()
            before = workers_of.get(batch.loader)
            workers_of[batch.loader] = batch.num_workers
            if before is not None and before != batch.num_workers:
                self._publish("event", event="switch", loader=batch.loader, after_step=step - 1,
                              **{"from": before, "to": batch.num_workers})
            self._publish("batch", **fields)
            current = epochs.get(batch.loader)
            if current is not None and current[0] != batch.epoch:
                self._say(f"{batch.loader} epoch {current[0]}: " + _describe(*current[1]))
            if current is None or current[0] != batch.epoch:
                current = epochs[batch.loader] = (batch.epoch, [0, 0.0, 0.0, 0, 0.0, 0])
            row = sums.setdefault((batch.loader, batch.num_workers), [0, 0.0, 0.0, 0])
            for totals in (row, current[1]):
                totals[0] += 1
                totals[1] += batch.load_s
                totals[2] += batch.step_s or 0.0
                totals[3] += batch.samples

    def _write_log(self, loader: str, step: int, values: dict[str, Any],
                   epochs: dict[str, tuple[int, list[float]]]) -> None:
        numbers = {k: _number(v) for k, v in values.items()}
        if self._record is not None:
            self._record.write(json.dumps({"event": "log", "loader": loader, "step": step, **numbers}) + "\n")
            self._record.flush()
        self._publish("log", loader=loader, step=step,
                      metrics={k: v for k, v in numbers.items() if isinstance(v, (int, float)) or v is None})
        loss = numbers.get("loss")
        current = epochs.get(loader)
        if isinstance(loss, float) and current is not None:
            current[1][4] += loss
            current[1][5] += 1

    def _summary(self, sums: dict[tuple[str, int], list[float]]) -> None:
        for (name, workers), row in sums.items():
            self._say(f"{name} with {_workers(workers)}: " + _describe(*row))
        names = {loader.name for loader in self.loaders}
        for key in self.settings.switches:
            loader, _, _ = key.rpartition("@")
            if loader and loader not in names:
                known = ", ".join(sorted(names)) or "none"
                self._say(f"--switch {key}:{self.settings.switches[key]}: the script created no DataLoader named "
                          f"{loader!r} (its loaders: {known})")
        if self.dropped:
            self._say(f"{self.dropped} batch records dropped: the writer could not keep up")

    def close(self) -> None:
        """Write what is queued and the summary (at the script's exit), then close the socket."""
        if self._writer.is_alive():
            try:
                self._queue.put(("close", None), timeout=2.0)
            except queue.Full:
                pass
            else:
                self._writer.join(5.0)
        if self._record is not None and not self._record.closed:
            self._record.close()
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.settings.claim:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.claim)

    @staticmethod
    def _say(text: str) -> None:
        print(f"loadertop: {text}", file=sys.stderr, flush=True)


def _cpu_clock() -> Any:
    """The CPU clock of this process's tree (None where psutil cannot read it: no cost shown)."""
    try:
        from loadertop.core.cost import TreeCpuClock

        return TreeCpuClock()
    except Exception:  # noqa: BLE001 - cost is optional, the run is not
        return None


def _describe(batches: float, load_s: float, step_s: float, samples: float, loss: float = 0.0,
              losses: float = 0) -> str:
    busy = load_s + step_s
    speed = f", {samples / busy:,.0f} samples/s" if busy > 0 else ""
    mean_loss = f", loss {loss / losses:.4f}" if losses else ""
    return (f"{batches:.0f} batches, load {load_s / batches * 1000:.1f} ms, step {step_s / batches * 1000:.1f} ms"
            f"{speed}{mean_loss}")


def _number(value: Any) -> Any:
    """A logged value as JSON: tensors read here, in the writer thread (``item()`` waits for the device here)."""
    if hasattr(value, "item"):
        try:
            return float(value.item()) if getattr(value, "numel", lambda: 1)() == 1 else value.tolist()
        except (RuntimeError, ValueError):
            return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"
