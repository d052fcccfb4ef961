"""Helpers shared by the tests: poll a condition (never sleep a fixed time and hope), check --record lines, and
what several test modules do alike (the command line, sweeps, a raw monitor, launched scripts, the app's screen).

Test modules import from here or get a fixture from a conftest.py; never from one another. This module loads no
torch and no textual itself (the helpers that need them import them when called), so any test can import it.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from loadertop.core.measure.procs import child_processes
from loadertop.core.measure.store import ConfigSummary
from loadertop.core.protocol.codec import LineReader, encode
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import SERVER_TYPES
from loadertop.core.protocol.records import SCHEMA_PATH

if TYPE_CHECKING:
    from loadertop.core.policy.advice import Advice
    from loadertop.core.train.workload import Workload
    from loadertop.tui.app import LoaderTopApp

ROOT = Path(__file__).resolve().parents[1]


def eventually(condition: Callable[[], object], timeout: float = 5.0, poll_s: float = 0.02) -> bool:
    """True as soon as ``condition()`` is; False if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Fail the test unless ``condition()`` becomes true within ``timeout`` seconds."""
    assert eventually(condition, timeout), f"timed out after {timeout} s"


def no_children_left(timeout: float = 5.0) -> bool:
    """True once this process has no live child processes (Python's own helpers aside)."""
    return eventually(lambda: not child_processes(), timeout, poll_s=0.05)


def made_at(script: str, text: str) -> str:
    """The name loadertop gives a loader that ``script`` (a path from the repository root) makes at the line
    holding ``text``: ``file:line``."""
    path = ROOT / script
    lines = path.read_text().splitlines()
    return f"{path.name}:{next(i for i, line in enumerate(lines, 1) if text in line)}"


@functools.cache
def _record_validator() -> Any:
    import jsonschema  # the tests' only: loadertop ships the schema and never validates with it

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def record_schema_errors(line: dict[str, Any]) -> list[str]:
    """Why ``line`` (one ``--record`` object) does not follow ``record.schema.json``: empty when it does."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(line)'}: {error.message}"
        for error in _record_validator().iter_errors(line)
    ]


def assert_records_follow_the_schema(path: Path) -> list[dict[str, Any]]:
    """Every line of the ``--record`` file ``path`` is a JSON object that follows the schema; returns them."""
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    assert lines, f"{path} is empty"
    wrong = {number: errors for number, line in enumerate(lines, 1) if (errors := record_schema_errors(line))}
    assert not wrong, f"{path}: lines not in the record schema: {dict(list(wrong.items())[:5])}"
    return lines


# ------------------------------------------------------------------ the command line


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``loadertop ARGS`` in this process: its exit code, stdout and stderr."""
    from loadertop.cli import main  # loads torch: only the tests that run the command line pay for it

    try:
        code = main(args)
    except SystemExit as exc:  # argparse exits by itself
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(result: tuple[int, str, str], message: str) -> None:
    """Exit 2, nothing on stdout, and one line on stderr that starts with loadertop and says ``message``."""
    code, out, err = result
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("loadertop"), err


# ------------------------------------------------------------------ sweeps and their summaries


def sweep(
    workload: Workload, counts: tuple[int, ...], batches: int, batch_size: int = 8
) -> tuple[tuple[ConfigSummary, ...], Advice, str]:
    """A headless sweep of ``counts`` on the built-in trainer: its rows, its advice and what it printed."""
    from loadertop.cli.headless import run_sweep_headless  # loads torch, as the trainer does
    from loadertop.core.drive.sweep import Sweep
    from loadertop.core.train.engine import Trainer

    config = LoaderConfig(num_workers=counts[0], batch_size=batch_size)
    trainer = Trainer(workload, config, epochs=1000, device="cpu")
    out = io.StringIO()
    code, rows, advice = run_sweep_headless(trainer, Sweep(trainer, counts, batches), out=out, err=out)
    assert code == 0, out.getvalue()
    assert not child_processes()
    return rows, advice, out.getvalue()


@dataclass
class OthersCpu:
    cores: float = 0.0


@contextmanager
def others_cpu() -> Iterator[OthersCpu]:
    """The CPU other processes (and the hypervisor) took meanwhile, in cores, for tests that need idle cores."""
    result = OthersCpu()
    mine0, machine0, t0 = sum(os.times()[:4]), psutil.cpu_times(), time.monotonic()
    yield result
    mine1, machine1, t1 = sum(os.times()[:4]), psutil.cpu_times(), time.monotonic()
    busy = sum(
        getattr(machine1, f) - getattr(machine0, f)
        for f in ("user", "nice", "system", "irq", "softirq", "steal")
        if hasattr(machine0, f)
    )
    result.cores = max(0.0, busy - (mine1 - mine0)) / max(t1 - t0, 1e-9)


def summary(
    workers: int,
    samples_per_s: float,
    *,
    batches: int = 50,
    load_ms: float = 5.0,
    compute_ms: float = 20.0,
    rss_mb: float = math.nan,
    persistent: bool = False,
    startup_ms: float = 100.0,
    sem: float | None = None,
) -> ConfigSummary:
    """A made-up summary; the throughput's standard error is 0.5% of it unless given."""
    config = LoaderConfig(num_workers=workers, persistent_workers=persistent)
    return ConfigSummary(
        config.key,
        config,
        batches,
        1,
        batches * 32,
        load_ms,
        load_ms,
        compute_ms,
        compute_ms,
        32_000 / samples_per_s,
        32_000 / samples_per_s,
        samples_per_s,
        startup_ms,
        1,
        rss_mb=rss_mb,
        samples_per_s_sem=0.005 * samples_per_s if sem is None else sem,
    )


# ------------------------------------------------------------------ a run's socket


class Client:
    """A raw monitor: a socket and a reader."""

    def __init__(self, path: Path, *, control: bool | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5.0)
        self.reader = LineReader(known=SERVER_TYPES)
        self.messages: list[dict[str, Any]] = []
        if control is not None:
            self.send("hello", pid=os.getpid() if control else 1, control=control)

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.sendall(encode(kind, **fields))

    def read_until(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for m in self.messages:
            if predicate(m):
                return m
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for m in self.reader.feed(data):
                self.messages.append(m)
                if predicate(m):
                    return m
        raise AssertionError(f"not received; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ users' scripts, launched

DDP = "tests/scripts/ddp_loop.py"


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``args`` from the repository root, to the end: its exit code and output."""
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def launched(*options: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``loadertop run --headless OPTIONS -- COMMAND``, to the end."""
    return run([sys.executable, "-m", "loadertop", "run", "--headless", *options, "--", *command])


def records(path: Path) -> list[dict]:
    """The JSON lines of ``path``."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch_records(path: Path) -> list[dict]:
    """The batch lines of ``path`` (its events left out: ``stages`` at the end of a run, ``log``, ...)."""
    return [line for line in records(path) if "event" not in line]


def torchrun(out: Path, *extra: str, script: str = DDP) -> list[str]:
    """``script`` on two ranks of one node, as users start it (``torchrun`` is ``python -m torch.distributed.run``)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        script,
        str(out),
        *extra,
    ]


# ------------------------------------------------------------------ the app

SIZE = (120, 36)
"""The terminal the app tests run in (columns, rows)."""


def screen_text(app: LoaderTopApp, widget_type: type) -> str:
    """What the one ``widget_type`` on the app's screen shows, as plain text."""
    widget = app.query_one(widget_type)
    return str(widget.render())


class FakeNvml:
    """A stand-in for the ``pynvml`` module (put in ``sys.modules``): one GPU, the real library's sample structs.

    ``samples`` is what ``nvmlDeviceGetSamples`` has in its buffer as ``(timeStamp µs, percent)``; a call returns
    those after the timestamp asked for, or raises ``NVMLError(NVML_ERROR_NOT_FOUND)`` when there are none, as the
    driver does. ``samples_error``: the error code every call raises instead (``NVML_ERROR_NOT_SUPPORTED``, ...).
    ``pids``: the processes with a compute context on the GPU.
    """

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_UNKNOWN = 999
    NVML_GPU_UTILIZATION_SAMPLES = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_VALUE_TYPE_UNSIGNED_INT = 1

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, pids: tuple[int, ...] = (), samples: list[tuple[int, int]] | None = None) -> None:
        self.pids = pids
        self.samples = samples or []
        self.samples_error: int | None = None
        self.asked: list[int] = []
        """The ``timeStamp`` of every ``nvmlDeviceGetSamples`` call."""
        self.shut_down = False
        import pynvml  # the real library's ctypes struct, as nvmlDeviceGetSamples returns it (before the swap)

        self._sample_struct = pynvml.c_nvmlSample_t

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle{index}"

    def nvmlDeviceGetName(self, handle: str) -> str:
        return "Fake GPU"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return type("Utilization", (), {"gpu": 37, "memory": 5})()

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return type("Memory", (), {"used": 1 << 30, "total": 16 << 30})()

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return 40

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 70_000

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        return [type("Process", (), {"pid": pid, "usedGpuMemory": 1 << 20})() for pid in self.pids]

    def nvmlDeviceGetSamples(self, handle: str, kind: int, timestamp: int) -> tuple[int, list[Any]]:
        assert kind == self.NVML_GPU_UTILIZATION_SAMPLES
        self.asked.append(timestamp)
        if self.samples_error is not None:
            raise self.NVMLError(self.samples_error)
        out = []
        for stamp, value in self.samples:
            if stamp > timestamp:
                sample = self._sample_struct()
                sample.timeStamp = stamp
                sample.sampleValue.uiVal = value
                out.append(sample)
        if not out:
            raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)
        return self.NVML_VALUE_TYPE_UNSIGNED_INT, out


def verified_unless_slower(lines: list[dict], start: dict, settle: dict, count: int) -> None:
    """The change after a run started at a remembered count (``start``, the jump): a settle that says it verified
    that count; or else the count measured slower than remembered (its steady batches in ``lines``, a record),
    the only reason the tuner searches from there instead (a shared machine slower than on the first run)."""
    assert settle["change"] in ("settle", "jump", "step"), settle
    if settle["change"] == "settle" and str(settle["reason"]).startswith(f"verified: {count} workers at "):
        return
    found = re.search(r"\(([\d,.]+) samples/s\)$", str(start["reason"]))
    assert found is not None, start
    remembered = float(found.group(1).replace(",", ""))
    steady = [b for b in lines if "event" not in b and b["num_workers"] == count and b.get("step_ms") is not None]
    measured = sum(b["samples"] for b in steady) / sum((b["load_ms"] + b["step_ms"]) / 1000 for b in steady)
    assert measured < remembered, (measured, remembered, settle)
