"""Publishing a training process's loaders: every batch to ``--record``, the monitors' socket and a summary.

The loop's thread only builds a small record and puts it on a bounded queue; a writer thread
writes ``--record``, says loadertop's lines and publishes to the monitors' socket
(``RunServer``), whose own thread sends; monitors' switch requests arrive there. A launched
script publishes this way (``launched.LaunchedRun``) and so does the built-in trainer
(``core.session``): one stream of messages, whoever trains. Nothing heavy is imported here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from loadertop.core.measure.limits import current_limits
from loadertop.core.policy.stages import to_wire as stages_to_wire
from loadertop.core.probe.gpu_watch import GpuWatch
from loadertop.core.protocol.config import describe_workers
from loadertop.core.protocol.messages import (
    AutotuneEvent,
    Batch,
    Cpu,
    CpuReason,
    ExceptionEvent,
    ExitEvent,
    Hello,
    LoaderUpdate,
    Log,
    MessageError,
    ServerMessage,
    StagesUpdate,
    SwitchEvent,
)
from loadertop.core.protocol.records import record_line
from loadertop.core.protocol.stages import TURNED_OFF, StageFigures, describe_io, describe_tails
from loadertop.core.protocol.stages import describe as describe_stages

QUEUE_LIMIT = 10_000
"""Batches waiting for the writer thread; past that they are dropped (and counted), never waited for."""
STATUS_INTERVAL_S = 0.25
"""How often the writer looks for changed loader states (worker pids, pending requests) to publish."""
STAGES_INTERVAL_S = 1.0
"""How often the writer reads each loader's stage figures and sends the monitors those that changed."""
STAGE_FIGURES_SENT = 16
"""The most worker counts of a loader's figures in one ``stages`` message (the running count's always among them):
a message stays far below the codec's line limit."""
WRITER_PERIOD_S = 0.1
"""The writer thread's shortest period: what the loop queued meanwhile is written and published at once
(10 bursts a second: monitors draw 4 times a second, and each wake-up takes the GIL from the loop)."""


class Publisher:
    """Watches loaders and publishes what they do, off the loop's path.

    Args:
        hello: what a monitor is told first (``pid``, ``command``, ``cwd``, ``started``, ``log``...).
        record: a JSONL file for one object per batch (None: none).
        serve: serve monitors on a socket (``loadertop attach``).
        say: where loadertop's own lines go (None: nowhere).
        kept_by: the process controls its loaders itself (says who): monitors watch only.
        rank: this process's rank in a torchrun job, added to its batches, logs and autotune events (None: not one).
        watch_gpu: set each loader's waits against this process's GPU's idle time (``gpu_watch``: a launched
            script's; the built-in run's session does it with its own sampler).
    """

    def __init__(
        self,
        *,
        hello: Hello,
        record: str | None = None,
        serve: bool = True,
        say: Callable[[str], None] | None = None,
        kept_by: str | None = None,
        rank: int | None = None,
        watch_gpu: bool = False,
    ) -> None:
        self._kept_by = kept_by
        self.gpu = GpuWatch() if watch_gpu else None
        """Each loader's GPU idle figures (None: not watched here)."""
        self._rank = rank
        self._tag: dict[str, Any] = {"rank": rank} if rank is not None else {}  # in --record's lines
        self.loaders: list[Any] = []  # the training loader first, once known
        self.training: Any = None
        self.framework_marks_training = False
        """A framework (Lightning) will mark the training loader: none is taken for it until then."""
        # A deque, not a queue.Queue: appending and popping are atomic, and neither side takes a lock
        # or wakes the other (the writer looks in bursts): the loop's cost is one append.
        self._queue: deque[tuple[str, Any]] = deque()
        self.recent: deque[tuple[float, float, int, int, int]] = deque(maxlen=50)
        """The training loader's latest batches (load s, step s, samples, workers, step), in the writer."""
        self.dropped = 0
        self._steps: dict[str, int] = {}
        self._say_to = say
        # Appended to: the launcher starts the file, and every rank of a torchrun job writes its lines to it.
        self._record: IO[str] | None = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115
        self.server: Any = self._serve(hello) if serve else None
        self._clock = _cpu_clock()
        self._writer = threading.Thread(target=self._write, name="loadertop-writer", daemon=True)
        self._writer.start()
        self._excluded: list[int] = []
        self._stages_failed: set[str] = set()  # loaders whose figures could not be read (said once)
        if self.server is not None:
            self.exclude_threads(self.thread_ids())

    def exclude_threads(self, thread_ids: list[int]) -> None:
        """Leave these threads (native ids) out of the CPU the training is billed, here and in every monitor."""
        self._excluded.extend(thread_ids)
        if self._clock is not None:
            self._clock.exclude_threads(thread_ids)
        if self.server is not None:
            self.server.update_hello(threads=list(self._excluded))  # monitors leave them out of their readings too

    def _serve(self, hello: Hello) -> Any:
        """The socket monitors attach to; None (and a line) when it cannot be made: training runs unwatched."""
        from loadertop.core.probe.server import RunServer
        from loadertop.core.protocol.runtime import RuntimeDirError, run_socket_path

        try:
            return RunServer(run_socket_path(), hello, self._switch_request, kept_by=self._kept_by)
        except (OSError, RuntimeDirError) as exc:
            self._say(f"no monitor can attach: {exc}")
            return None

    def thread_ids(self) -> list[int]:
        """Native ids of the publisher's own threads (the writer's, the server's): not the training's CPU."""
        return [self._writer.native_id or 0] + ([self.server.native_id] if self.server is not None else [])

    def watch(self, loader: Any, *, training: bool | None = None) -> None:
        """Publish ``loader``'s batches; the first one watched is the training loader (unless told, or
        unless a framework will say which one is: ``framework_marks_training``).

        A loader named as one watched before takes its place and goes on with its batch count.
        """
        if training is None:
            same = self.training is not None and self.training.name == loader.name
            training = same or (self.training is None and not self.framework_marks_training)
        index = next((i for i, known in enumerate(self.loaders) if known.name == loader.name), None)
        if index is None:
            self.loaders.append(loader)
        else:
            self.loaders[index] = loader
        self._steps.setdefault(loader.name, 0)
        loader.add_observer(lambda batch: self._on_batch(loader, batch, loader is self.training))
        if training:
            self.mark_training(loader)
        self._put(("loader", loader))

    def mark_training(self, loader: Any) -> None:
        """``loader`` is the training loader (a framework says so): the one --switch, the cost and the loss follow."""
        if loader is self.training:
            return
        if loader not in self.loaders:
            self.watch(loader, training=False)
        self.training = loader
        self.loaders.remove(loader)
        self.loaders.insert(0, loader)
        if not getattr(loader, "_loadertop_billed", False):
            loader._loadertop_billed = True
            loader.add_boundary_hook(self._boundary, at_handover=True)  # the CPU splits where the batches do
        for known in self.loaders:  # every monitor learns which loader trains
            self._put(("loader", known))

    def autotune(self, change: Any) -> None:
        """An autotune ``Change`` (the tuner's thread): to ``--record``, the monitors and loadertop's lines."""
        self._put(("autotune", change))

    def exception(self, text: str) -> None:
        """The run failed: tell the monitors (the last 8,000 characters of ``text``)."""
        self._put(("exception", text))

    def _boundary(self, loader: Any) -> None:
        """A configuration of the training loader begins (loop thread): the tree's CPU now, off to the writer."""
        if self._clock is not None:  # an overlapped switch's new workers run already: their CPU so far is theirs
            with contextlib.suppress(Exception):
                reading = self._clock.read(apart=loader.status().worker_pids).without_apart()
                self._put(("cpu", (CpuReason.BOUNDARY, loader.name, reading)))

    def _find(self, name: str | None) -> Any:
        if name is None:
            return self.training
        return next((loader for loader in self.loaders if loader.name == name), None)

    def _switch_request(self, name: str | None, workers: int, rank: int | None = None) -> str | None:
        """A monitor's switch (in the server's thread): applied by the loader at its next batch boundary."""
        if rank is not None and rank != self.own_rank():
            return self._relay_switch(rank, name, workers)
        loader = self._find(name)
        if loader is None:
            return "no DataLoader yet" if name is None else f"no DataLoader named {name!r}"
        loader.switch(workers)
        when = "at the next batch" if loader.continues_exactly else "at the next epoch (an IterableDataset)"
        self._put(("say", f"{loader.name}: the monitor asks for {describe_workers(workers)}, {when}"))
        self._put(("loader", loader))
        return None

    # -------------------------------------------------------- loop thread

    def _on_batch(self, loader: Any, batch: Any, training: bool) -> None:
        step = self._steps[loader.name] = self._steps[loader.name] + 1
        self._put(("batch", (step, batch)))

    def steps_of(self, loader: Any) -> int:
        """Batches ``loader`` (by name) has delivered over the run: its latest batch's ``step``."""
        return self._steps.get(loader.name, 0)

    def log(self, metrics: dict[str, Any]) -> None:
        """Queue ``metrics`` for the training loader's latest batch (tensors detached, not read)."""
        if self.training is not None:
            self.log_at(self._steps[self.training.name], metrics)

    def log_at(self, step: int, metrics: dict[str, Any]) -> None:
        """Queue ``metrics`` for the training loader's batch ``step`` (a framework that fetches ahead knows which)."""
        if self.training is None:
            return
        values = {k: v.detach() if hasattr(v, "detach") else v for k, v in metrics.items()}
        self._put(("log", (self.training.name, step, values)))

    def _put(self, item: tuple[str, Any]) -> None:
        if len(self._queue) < QUEUE_LIMIT:
            self._queue.append(item)
        else:
            self.dropped += 1

    # ------------------------------------------------------- writer thread

    def _publish(self, message: ServerMessage) -> None:
        if self.server is not None:
            self.server.publish(message, wake=False)

    def _publish_loader(self, loader: Any) -> Any:
        status = loader.status()
        try:
            batches: int | None = len(loader)
        except TypeError:
            batches = None
        self._publish(
            LoaderUpdate(
                name=loader.name,
                num_workers=status.num_workers,
                batch_size=batch_size_of(loader),
                batches_per_epoch=batches,
                training=loader is self.training,
                exact=loader.continues_exactly,
                pending=status.pending,
                epoch=status.epoch,
                worker_pids=tuple(status.worker_pids),
                dropped=self.dropped,
            )
        )
        return status

    def _publish_cpu(self, reason: CpuReason, loader: str, reading: Any) -> None:
        self._publish(
            Cpu(
                reason=reason,
                loader=loader,
                time=reading.time,
                main_s=reading.main_s,
                children_s=reading.children_s,
                rss_bytes=reading.rss_bytes,
            )
        )

    def _write(self) -> None:
        sums: dict[tuple[str, int], list[float]] = {}  # (loader, workers) -> [batches, load_s, step_s, samples]
        epochs: dict[str, tuple[int, list[float]]] = {}  # loader -> (epoch, [batches, load_s, step_s, samples])
        seen: dict[str, Any] = {}  # loader -> the status last published
        workers_of: dict[str, int] = {}  # loader -> workers of its latest batch
        next_status = 0.0
        stages_sent: dict[str, tuple[StageFigures, ...]] = {}  # loader -> the stage figures last sent
        next_stages = 0.0
        waiting: deque[tuple[str, Any]] = deque()
        while True:
            if not waiting:
                try:
                    self._tick()
                except Exception as exc:  # noqa: BLE001 - the writer must outlive anything an extra does
                    self._say(f"stopped sharing this rank's summary ({type(exc).__name__}: {exc})")
                    self._tick = lambda: None  # type: ignore[method-assign]
                if self.server is not None:
                    self.server.flush()  # one wake-up of the serving thread for all that was published
                # Work in bursts, at most 10 a second: each wake-up of this thread takes the GIL from the loop.
                time.sleep(WRITER_PERIOD_S)
                queued = self._queue
                while queued:
                    waiting.append(queued.popleft())
                if not waiting:
                    waiting.append(("idle", None))
            kind, payload = waiting.popleft()
            now = time.monotonic()
            if now >= next_status:  # worker pids and pending requests, as they change
                next_status = now + STATUS_INTERVAL_S
                for loader in list(self.loaders):
                    if loader.status() != seen.get(loader.name):
                        seen[loader.name] = self._publish_loader(loader)
            if now >= next_stages:
                next_stages = now + STAGES_INTERVAL_S
                self._publish_stages(stages_sent)
            if self.gpu is not None and kind == "batch":
                self._watch_gpu(now)
            if kind == "idle":
                continue
            if kind == "close":
                for name, (number, totals) in epochs.items():  # the last epoch of each loader
                    self._say(f"{name} epoch {number}: " + _describe(*totals))
                self._summary(sums)
                self._publish_stages(stages_sent)  # the figures at the end, for the monitors still watching
                if self._clock is not None and self.training is not None:
                    with contextlib.suppress(Exception):
                        self._publish_cpu(CpuReason.END, self.training.name, self._clock.read())
                self._publish(ExitEvent(dropped=self.dropped))
                return
            if kind == "cpu":
                self._publish_cpu(*payload)
                continue
            if kind == "loader":
                seen[payload.name] = self._publish_loader(payload)
                continue
            if kind == "exception":
                self._publish(ExceptionEvent(traceback=payload[-8000:]))
                continue
            if kind == "say":
                self._say(payload)
                continue
            if kind == "autotune":
                name = self.training.name if self.training is not None else None
                event = {
                    **payload.to_event(),
                    **self._tag,
                    "loader": name,
                    "step": self._steps.get(name, 0) if name else 0,
                }
                if self._record is not None:
                    self._record.write(record_line(event))
                    self._record.flush()
                try:
                    self._publish(AutotuneEvent.from_wire(event))  # the event is the record's line
                except MessageError as exc:
                    self._say(f"autotune: a change not sent to the monitors ({exc})")
                self._say(f"{name + ': ' if name else ''}autotune: {payload.line()}")
                continue
            if kind == "log":
                self._write_log(*payload, epochs)
                continue
            step, batch = payload
            message = Batch(
                loader=batch.loader,
                step=step,
                epoch=batch.epoch,
                batch=batch.batch,
                num_workers=batch.num_workers,
                samples=batch.samples,
                load_ms=round(batch.load_s * 1000, 4),
                step_ms=None if batch.step_s is None else round(batch.step_s * 1000, 4),
                switch_ms=round(batch.switch_s * 1000, 4),
                time=round(batch.time, 6),
                rank=self._rank,
            )
            if self.gpu is not None:
                self.gpu.batch(batch.loader, batch.num_workers, batch.load_s, batch.step_s, batch.time)
            if self._record is not None:
                fields = message.to_wire()
                del fields["type"]  # the record's line is the message's fields
                self._record.write(record_line(fields))
                self._record.flush()
            before = workers_of.get(batch.loader)
            workers_of[batch.loader] = batch.num_workers
            if before is not None and before != batch.num_workers:
                self._publish(
                    SwitchEvent(
                        loader=batch.loader, from_workers=before, to_workers=batch.num_workers, after_step=step - 1
                    )
                )
            self._publish(message)
            if self.training is not None and batch.loader == self.training.name and batch.step_s is not None:
                self.recent.append((batch.load_s, batch.step_s, batch.samples, batch.num_workers, step))
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

    def _publish_stages(self, sent: dict[str, tuple[StageFigures, ...]]) -> None:
        """Each loader's stage figures, to the monitors where they changed since ``sent`` (the writer's thread).

        Read only while a monitor is connected (the server keeps the latest for one that connects later). A report:
        a loader whose figures cannot be read is said once and never fails the script.
        """
        if self.server is None or not self.server.monitors:
            return
        for loader in list(self.loaders):
            try:
                figures = self._stage_figures(loader)
            except Exception as exc:  # noqa: BLE001 - the figures are a report: never the script's failure
                if loader.name not in self._stages_failed:
                    self._stages_failed.add(loader.name)
                    self._say(f"{loader.name}: no stage figures for the monitors ({type(exc).__name__}: {exc})")
                continue
            if figures is not None and sent.get(loader.name) != figures:
                sent[loader.name] = figures
                self._publish(StagesUpdate(loader.name, figures))

    @staticmethod
    def _stage_figures(loader: Any) -> tuple[StageFigures, ...] | None:
        """``loader.stages()`` as sent: said to be off where the user turned timing off; the running count's and the
        most sampled others' where there are more than ``STAGE_FIGURES_SENT`` (None: a loader that has none)."""
        stages = getattr(loader, "stages", None)
        if stages is None:
            return None
        figures = tuple(stages())
        if not figures and not getattr(loader, "time_stages", True):
            return (StageFigures(loader.status().num_workers, 0, 0, (), TURNED_OFF),)
        if len(figures) > STAGE_FIGURES_SENT:
            running = loader.status().num_workers
            ranked = sorted(figures, key=lambda f: (f.num_workers != running, -f.samples))
            kept = {id(f) for f in ranked[:STAGE_FIGURES_SENT]}
            figures = tuple(f for f in figures if id(f) in kept)
        return figures

    def _write_log(
        self, loader: str, step: int, values: dict[str, Any], epochs: dict[str, tuple[int, list[float]]]
    ) -> None:
        numbers = {k: _number(v) for k, v in values.items()}
        if self._record is not None:
            line = {"event": "log", **self._tag, "loader": loader, "step": step, **numbers}
            self._record.write(record_line(line))
            self._record.flush()
        self._publish(
            Log(
                loader=loader,
                step=step,
                metrics={k: v for k, v in numbers.items() if isinstance(v, (int, float)) or v is None},
            )
        )
        loss = numbers.get("loss")
        current = epochs.get(loader)
        if isinstance(loss, float) and current is not None:
            current[1][4] += loss
            current[1][5] += 1

    def _summary(self, sums: dict[tuple[str, int], list[float]]) -> None:
        for (name, workers), row in sums.items():
            self._say(f"{name} with {describe_workers(workers)}: " + _describe(*row))
        if self.dropped:
            self._say(f"{self.dropped} batch records dropped: the writer could not keep up")
        self._stages_summary()
        self._gpu_summary()

    def _watch_gpu(self, now: float) -> None:
        """NVML once a second while batches come (the writer thread); anything it raises turns it off."""
        assert self.gpu is not None
        try:
            self.gpu.tick(now=now)
        except Exception as exc:  # noqa: BLE001 - a figure: never the script's failure
            self._say(f"GPU idle not measured ({type(exc).__name__}: {exc})")
            self.gpu.stop()

    def _gpu_summary(self) -> None:
        """Each loader's GPU idle time per worker count: lines, and ``gpu_idle`` events in ``--record``."""
        if self.gpu is None:
            return
        try:
            self.gpu.tick(force=True)  # the last batches' samples
        except Exception:  # noqa: BLE001, S110 - the figures so far stand
            pass
        for name, figures in self.gpu.figures().items():
            for idle in figures:
                self._say(f"{name} with {describe_workers(idle.num_workers)}: {idle.line()}")
                if self._record is not None:
                    event = {"event": "gpu_idle", **self._tag, "loader": name, **idle.to_wire()}
                    self._record.write(record_line(event))
                    self._record.flush()
        if not self.gpu.figures() and self.gpu.note:
            self._say(f"GPU idle not measured: {self.gpu.note}")
        self.gpu.stop()

    def _stages_summary(self) -> None:
        """Where each loader's samples' time went, per worker count: lines, and ``stages`` events in ``--record``."""
        cores = current_limits().cores
        for loader in self.loaders:
            try:
                all_figures = loader.stages()
            except Exception as exc:  # noqa: BLE001 - the figures are a report: never the script's failure
                self._say(f"{loader.name}: no stage figures ({type(exc).__name__}: {exc})")
                continue
            for figures in all_figures:
                if not figures.samples and not figures.off:
                    continue
                wire = stages_to_wire(figures, cores)
                self._say(
                    f"{loader.name} stages with {describe_workers(figures.num_workers)}: "
                    f"{describe_stages(figures, top=12)}"
                )
                for line in (describe_io(figures), describe_tails(figures)):
                    if line is not None:
                        self._say(f"{loader.name} with {describe_workers(figures.num_workers)}: {line}")
                if not figures.off:
                    self._say(f"{loader.name} with {describe_workers(figures.num_workers)}: {wire['verdict']}")
                if self._record is not None:
                    self._record.write(record_line({"event": "stages", **self._tag, "loader": loader.name, **wire}))
                    self._record.flush()

    def close(self) -> None:
        """Write what is queued and the summary, then close the socket."""
        if self._writer.is_alive():
            self._queue.append(("close", None))  # past the limit too: the writer finishes what is queued
            self._writer.join(5.0)
        if self._record is not None and not self._record.closed:
            self._record.close()
        if self.server is not None:
            self.server.close()
            self.server = None

    def _tick(self) -> None:
        """Called by the writer thread between its bursts (a launched rank shares its summary there)."""

    def own_rank(self) -> int | None:
        """This process's rank in a torchrun job (None: not one)."""
        return None

    def run_memory(self) -> Any:
        """The run history this process's loaders are written to (a ``RunMemory``; None: the run has its own)."""
        return None

    def _relay_switch(self, rank: int, name: str | None, workers: int) -> str | None:
        """A switch for a rank of another node: passed on through the job's store, where there is one."""
        return f"rank {rank} is not one of this run's: no store reaches it from here"

    def recent_summary(self) -> dict[str, Any] | None:
        """The training loader's latest batches in a few numbers (for the ranks of other nodes)."""
        kept = [r for r in self.recent if r[3] == self.recent[-1][3]] if self.recent else []
        if not kept:
            return None
        load, step = sum(r[0] for r in kept), sum(r[1] for r in kept)
        return {
            "pid": os.getpid(),
            "num_workers": kept[-1][3],
            "load_ms": load / len(kept) * 1000,
            "step_ms": step / len(kept) * 1000,
            "step": kept[-1][4],
            "time": time.time(),
            "samples_per_s": sum(r[2] for r in kept) / (load + step) if load + step > 0 else None,
        }

    def _say(self, text: str) -> None:
        if self._say_to is not None:
            self._say_to(text)


def batch_size_of(loader: Any) -> int | None:
    """A loader's batch size: its own, or its batch sampler's (None when neither says)."""
    size = loader.batch_size if loader.batch_size is not None else getattr(loader.batch_sampler, "batch_size", None)
    return size if isinstance(size, int) else None


def say_on_stderr(text: str) -> None:
    """loadertop's line on stderr, prefixed ``loadertop:`` (a launched script's output stays its own).

    One write of the whole line: the ranks of a torchrun job share one stderr, and ``print`` writes the
    newline apart (unbuffered, as under ``PYTHONUNBUFFERED``, two ranks' lines ran together).
    """
    sys.stderr.write(f"loadertop: {text}\n")
    sys.stderr.flush()


def _cpu_clock() -> Any:
    """The CPU clock of this process's tree (None where psutil cannot read it: no cost shown)."""
    try:
        from loadertop.core.measure.cost import TreeCpuClock

        return TreeCpuClock()
    except Exception:  # noqa: BLE001 - cost is optional, the run is not
        return None


def _describe(
    batches: float, load_s: float, step_s: float, samples: float, loss: float = 0.0, losses: float = 0
) -> str:
    busy = load_s + step_s
    speed = f", {samples / busy:,.0f} samples/s" if busy > 0 else ""
    mean_loss = f", loss {loss / losses:.4f}" if losses else ""
    return (
        f"{batches:.0f} batches, load {load_s / batches * 1000:.1f} ms, step {step_s / batches * 1000:.1f} ms"
        f"{speed}{mean_loss}"
    )


def _number(value: Any) -> Any:
    """A logged value as JSON: tensors read here, in the writer thread (``item()`` waits for the device here)."""
    if hasattr(value, "item"):
        try:
            return float(value.item()) if getattr(value, "numel", lambda: 1)() == 1 else value.tolist()
        except (RuntimeError, ValueError):
            return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
