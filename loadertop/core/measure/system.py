"""System sampling: every CPU core, memory, /dev/shm, the DataLoader worker processes and NVIDIA GPUs.

A ``SystemSampler`` runs in its own thread (once a second by default) and hands out
frozen ``SystemSnapshot`` objects. NVML is initialised once and shut down on ``stop``;
without a GPU or without the NVML library the snapshot says so in words.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psutil

from loadertop.core.measure.gpu_idle import GpuSamples, UtilSample, clock_offset_s, samples_from_nvml
from loadertop.core.measure.limits import current_limits
from loadertop.core.measure.memory import MemoryReader, ProcessMemory, TreeMemory, shared_reader, tree_memory

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process of the training tree.

    Attributes:
        pid: process id.
        role: ``"main"`` (the training process) or ``"worker"`` (a DataLoader worker).
        worker_id: the DataLoader worker id (0..k-1), None for the main process.
        cpu_percent: CPU use since the previous sample, in percent of one core.
        rss_bytes: resident memory (shared pages included).
        pss_bytes: proportional set size (``loadertop.core.measure.memory``); None: not read (an older recording).
        uss_bytes: unique set size: what only this process holds; None: not read.
        memory_exact: PSS and USS were read from ``smaps_rollup``; False: they are the RSS (an upper bound).
    """

    pid: int
    role: str
    worker_id: int | None
    cpu_percent: float
    rss_bytes: int
    pss_bytes: int | None = None
    uss_bytes: int | None = None
    memory_exact: bool = False


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One NVIDIA GPU as NVML reports it; a field NVML cannot read is None (``used_by_tree``: a process of the
    training tree holds a compute context on it)."""

    index: int
    name: str
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_w: float | None
    process_memory_bytes: int | None
    used_by_tree: bool = False


@dataclass(frozen=True, slots=True)
class SystemSnapshot:
    """The machine at one moment, as far as training cares.

    Attributes:
        time: UNIX time of the sample.
        cpu_percent_per_core: utilisation of every logical core since the previous sample.
        load_average: 1, 5 and 15 minute load averages.
        memory_total_bytes, memory_used_bytes, memory_available_bytes: system memory.
        processes: the main training process first, then the workers in worker-id order.
        tree_cpu_percent: CPU of the main process and all its descendants (100 = one core).
        tree_rss_bytes: summed resident memory of the main process and all its descendants (counts the
            pages a forked worker shares with its parent once per worker: ``memory`` has the real figure).
        shm_used_bytes, shm_total_bytes: ``/dev/shm``, None where it does not exist.
        gpus: one entry per NVIDIA GPU.
        gpu_status: ``"1 NVIDIA GPU"`` or ``"no NVIDIA GPU: <reason>"``.
        sampler_cpu_fraction: the sampler's own CPU seconds per wall second so far.
        memory: the tree's PSS and the workers' USS (None: not read, as in an older recording).
        gpu_samples: NVML's utilisation samples of the training process's GPU since the sample before
            (``NvmlReader.utilization_samples``; None: no GPU, or GPU sampling off).
    """

    time: float
    cpu_percent_per_core: tuple[float, ...]
    load_average: tuple[float, float, float]
    memory_total_bytes: int
    memory_used_bytes: int
    memory_available_bytes: int
    processes: tuple[ProcessSample, ...]
    tree_cpu_percent: float
    tree_rss_bytes: int
    shm_used_bytes: int | None
    shm_total_bytes: int | None
    gpus: tuple[GpuSample, ...]
    gpu_status: str
    sampler_cpu_fraction: float
    memory: TreeMemory | None = None
    gpu_samples: GpuSamples | None = None

    @property
    def workers(self) -> tuple[ProcessSample, ...]:
        """The DataLoader worker processes, in worker-id order."""
        return tuple(p for p in self.processes if p.role == "worker")


def usable_cores() -> int:
    """The cores this process may use, as a whole number for counts (a sweep's, a loop's bounds).

    min(CPU affinity, cgroup cpuset, cgroup CPU quota) rounded up: a quota of 1.5 CPUs is 2, a quota of
    0.5 is 1 (a fraction of a core still runs a worker; a count of 0 cores would mean none). Budgets and
    warnings use ``usable_cores_exact()``. ``measure.limits`` reads the limits and says where they came from.
    """
    return current_limits().core_count


def usable_cores_exact() -> float:
    """The cores this process may use, fractional under a fractional cgroup quota (1.5 CPUs is 1.5): for budgets."""
    return current_limits().cores


class NvmlReader:
    """Reads NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py); initialised once.

    ``status`` says in words why there is no GPU when there is none; nothing raises.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self.status = "no NVIDIA GPU"
        self._last_us: dict[int, int] = {}
        self._no_samples: dict[int, str] = {}
        self._offset_s: float | None = None
        try:
            import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no types
        except ImportError:
            self.status = "no NVIDIA GPU: the NVML library (nvidia-ml-py) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.status = f"no NVIDIA GPU: {_nvml_reason(exc)}"
            return
        except OSError as exc:  # a broken driver install can fail below NVML's own errors
            self.status = f"no NVIDIA GPU: NVML failed to load ({exc})"
            return
        self._nvml = pynvml
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            self.status = f"no NVIDIA GPU: {_nvml_reason(exc)}"
            self.close()
            return
        if not self._handles:
            self.status = "no NVIDIA GPU: NVML sees no devices"
            self.close()
            return
        self.status = f"{len(self._handles)} NVIDIA GPU" + ("s" if len(self._handles) > 1 else "")

    @property
    def available(self) -> bool:
        """True when at least one GPU can be read."""
        return self._nvml is not None and bool(self._handles)

    def read(self, pids: Collection[int] | None = None) -> tuple[GpuSample, ...]:
        """One sample per GPU; fields NVML cannot read (permissions, old drivers) are None.

        Args:
            pids: the processes whose GPU memory is "the process's" (default: this one).
        """
        if not self.available:
            return ()
        mine_pids = {os.getpid()} if pids is None else set(pids)
        return tuple(self._sample(index, handle, mine_pids) for index, handle in enumerate(self._handles))

    def _sample(self, index: int, handle: Any, mine_pids: set[int]) -> GpuSample:
        """GPU ``index``'s sample (``handle``: its NVML handle)."""
        nvml = self._nvml
        name = _try(lambda: nvml.nvmlDeviceGetName(handle)) or f"GPU {index}"
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        util = _try(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        memory = _try(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temp = _try(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
        power = _try(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        procs = _try(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        mine = [p.usedGpuMemory for p in procs or () if p.pid in mine_pids and p.usedGpuMemory is not None]
        used = any(p.pid in mine_pids for p in procs or ())
        return GpuSample(
            index=index,
            name=str(name),
            utilization_percent=util,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            temperature_c=temp,
            power_w=power,
            process_memory_bytes=int(sum(mine)) if mine else (0 if procs is not None else None),
            used_by_tree=used,
        )

    def gpu_of(self, pids: Collection[int]) -> int | None:
        """The lowest-index GPU on which one of ``pids`` holds a compute context (one NVML call a GPU); None: none."""
        if not self.available:
            return None
        wanted = set(pids)
        for index, handle in enumerate(self._handles):
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # noqa: BLE001 - a GPU that cannot say is not the one
                continue
            if any(p.pid in wanted for p in procs or ()):
                return index
        return None

    def utilization_samples(self, index: int) -> GpuSamples:
        """GPU ``index``'s utilisation samples since the last call (``nvmlDeviceGetSamples``), periods known.

        The first call reads the driver's whole buffer; later calls pass the newest timestamp seen. The first
        samples taken a moment ago anchor NVML's clock to UNIX time (``gpu_idle.clock_offset_s``): the buffer's
        newest may be minutes old (a driver keeps none while the GPU sits idle), so only a later read's new
        samples that fit no clock say so. ``NVMLError_NotFound`` is
        "no sample since then" (nothing new); ``NVMLError_NotSupported`` (an older GPU or driver, a vGPU) and
        ``NVMLError_FunctionNotFound`` (a driver without the function) are remembered and said in ``note``:
        ``nvmlDeviceGetUtilizationRates`` alone cannot be attributed.
        """
        if not self.available or not 0 <= index < len(self._handles):
            return GpuSamples(None, (), "no NVIDIA GPU")
        if index in self._no_samples:
            return GpuSamples(index, (), self._no_samples[index])
        nvml = self._nvml
        previous = self._last_us.get(index)
        try:
            value_type, raw = nvml.nvmlDeviceGetSamples(
                self._handles[index], nvml.NVML_GPU_UTILIZATION_SAMPLES, previous or 0
            )
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == getattr(nvml, "NVML_ERROR_NOT_FOUND", 6):
                return GpuSamples(index, (), None)
            if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
                self._no_samples[index] = f"GPU {index} keeps no utilisation samples (NVML: Not Supported)"
                return GpuSamples(index, (), self._no_samples[index])
            if code == getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13):  # a driver older than the function
                self._no_samples[index] = f"GPU {index}: this NVIDIA driver has no nvmlDeviceGetSamples"
                return GpuSamples(index, (), self._no_samples[index])
            return GpuSamples(index, (), f"GPU {index}'s utilisation samples could not be read: {_nvml_reason(exc)}")
        pairs = [(int(s.timeStamp), float(_sample_value(value_type, s))) for s in raw or ()]
        if not pairs:
            return GpuSamples(index, (), None)
        newest = max(stamp for stamp, _ in pairs)
        self._last_us[index] = max(newest, previous or 0)
        if self._offset_s is None:
            self._offset_s = clock_offset_s(newest, _clocks())
            if self._offset_s is None and previous is None:  # the buffer's newest may be old (idle): judge new ones
                return GpuSamples(index, (), None)
            if self._offset_s is None:
                return GpuSamples(index, (), f"GPU {index}'s sample times are on a clock loadertop does not know")
        # The first read has no sample before its oldest: that one only opens the next period.
        samples: tuple[UtilSample, ...] = samples_from_nvml(pairs, offset_s=self._offset_s, previous_us=previous)
        return GpuSamples(index, samples, None)

    def close(self) -> None:
        """Shut NVML down (once)."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001, S110 - shutting down must not fail the app
                pass
            self._nvml = None
            self._handles = []


def _nvml_reason(exc: Exception) -> str:
    text = str(exc)
    if "Library Not Found" in text:
        return "NVML library not found (no NVIDIA driver on this machine)"
    if "Driver Not Loaded" in text:
        return "the NVIDIA driver is not loaded"
    if "Insufficient Permissions" in text or "No permission" in text:
        return "no permission to read NVML"
    return f"NVML error: {text}"


_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
"""``c_nvmlValue_t``'s members by ``NVML_VALUE_TYPE_*`` (0 double, 1 unsigned int, ...): utilisation is unsigned int."""


def _sample_value(value_type: int, sample: Any) -> float:
    """A ``c_nvmlSample_t``'s value read as its ``value_type`` says (-1, dropped later, for a type not known)."""
    if not 0 <= value_type < len(_VALUE_FIELDS):
        return -1.0
    return float(getattr(sample.sampleValue, _VALUE_FIELDS[value_type]))


def _clocks() -> list[tuple[float, float]]:
    """The clocks NVML's timestamps may be on, each as (now on it, its offset to UNIX time)."""
    unix = time.time()
    clocks = [(unix, 0.0)]
    for name in ("CLOCK_BOOTTIME", "CLOCK_MONOTONIC"):
        clock = getattr(time, name, None)
        if clock is not None:
            now = time.clock_gettime(clock)
            clocks.append((now, unix - now))
    return clocks


def _try(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # noqa: BLE001 - one unreadable field must not hide the others
        return None


class SystemSampler:
    """Samples the machine in a background thread and keeps the latest snapshot.

    Args:
        interval_s: seconds between samples (default 1).
        worker_pids: returns the running loader's worker pids in worker-id order
            (e.g. ``Trainer.worker_pids``).
        on_sample: called in the sampler thread with each snapshot; keep it cheap.
        read_gpus: set False to skip NVML entirely.
        on_thread_start: called in the sampling thread before its first sample, with the thread's
            native id (e.g. to leave the sampler's own CPU out of what training costs).
        pid: the training process to follow, with its descendants (default: this one; a watched
            script's pid in a monitor of its own).
        memory: reads PSS and USS (default: this process's shared ``MemoryReader``, with its CPU budget).
    """

    def __init__(
        self,
        *,
        interval_s: float = 1.0,
        worker_pids: Callable[[], Sequence[int]] = tuple,
        on_sample: Callable[[SystemSnapshot], None] | None = None,
        read_gpus: bool = True,
        on_thread_start: Callable[[int], None] | None = None,
        pid: int | None = None,
        memory: MemoryReader | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"sampling interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._worker_pids = worker_pids
        self._on_sample = on_sample
        self._read_gpus = read_gpus
        self._on_thread_start = on_thread_start
        self._nvml: NvmlReader | None = None
        self._me = psutil.Process(pid)
        self.memory = memory or shared_reader()
        self._procs: dict[int, psutil.Process] = {}
        self._new: set[int] = set()
        self._latest: SystemSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cpu_s = 0.0
        self._t0 = time.monotonic()
        psutil.cpu_percent(percpu=True)  # prime: the first reading is measured from here
        self._me.cpu_percent()

    @property
    def gpu_status(self) -> str:
        """``"N NVIDIA GPU(s)"`` or ``"no NVIDIA GPU: <reason>"``."""
        return self._gpus().status

    def _gpus(self) -> NvmlReader:
        if self._nvml is None:
            self._nvml = NvmlReader() if self._read_gpus else _NoGpus()
        return self._nvml

    def start(self) -> None:
        """Start the sampling thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="loadertop-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and shut NVML down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            if self._nvml is not None:
                self._nvml.close()

    def latest(self) -> SystemSnapshot | None:
        """The most recent snapshot (None before the first)."""
        return self._latest

    def gpu_samples_now(self) -> GpuSamples | None:
        """The training GPU's utilisation samples since the last read, read now (at a run's end: its last batches'
        samples); None: no GPU found by the samples so far, or sampling stopped."""
        with self._lock:
            latest = self._latest
            read = latest.gpu_samples if latest is not None else None
            if read is None or read.gpu is None or self._nvml is None:
                return None
            return self._nvml.utilization_samples(read.gpu)

    def _run(self) -> None:
        if self._on_thread_start is not None:
            self._on_thread_start(threading.get_native_id())
        while not self._stop.is_set():
            try:
                snapshot = self.sample()
                if self._on_sample is not None:
                    self._on_sample(snapshot)
            except Exception:  # noqa: BLE001, S110 - a failed sample must not end sampling
                pass
            self._stop.wait(self.interval_s)

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is not None and proc.is_running():  # is_running also catches a reused pid
            return proc
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        self._procs[pid] = proc
        self._new.add(pid)
        return proc

    def _cpu_percent(self, proc: psutil.Process) -> float:
        """CPU% since the last sample; for a process seen for the first time, over its life so far.

        Workers are re-spawned at every restart (and every epoch without persistent
        workers): psutil's first reading would be 0, hiding exactly the processes that matter.
        """
        since_last = float(proc.cpu_percent())
        if proc.pid not in self._new:
            return since_last
        self._new.discard(proc.pid)
        times = proc.cpu_times()
        age = max(time.time() - proc.create_time(), 1e-3)
        return 100.0 * float(times.user + times.system) / age

    def sample(self) -> SystemSnapshot:
        """Take one snapshot now (also usable without the thread)."""
        with self._lock:
            t_cpu = time.thread_time()
            snapshot = self._sample()
            self._cpu_s += time.thread_time() - t_cpu
            wall = max(time.monotonic() - self._t0, 1e-9)
            snapshot = replace(snapshot, sampler_cpu_fraction=self._cpu_s / wall)
            self._latest = snapshot
            return snapshot

    def _sample(self) -> SystemSnapshot:
        per_core = tuple(float(x) for x in psutil.cpu_percent(percpu=True))
        try:
            load = tuple(float(x) for x in os.getloadavg())
        except OSError:
            load = (0.0, 0.0, 0.0)
        memory = psutil.virtual_memory()

        worker_pids = list(self._worker_pids())
        main_cpu = self._me.cpu_percent()
        followed: list[tuple[psutil.Process, str, int | None, float]] = [(self._me, "main", None, main_cpu)]
        live: set[int] = {self._me.pid}
        for worker_id, pid in enumerate(worker_pids):
            proc = self._process(pid)
            if proc is None:
                continue
            live.add(pid)
            try:
                followed.append((proc, "worker", worker_id, self._cpu_percent(proc)))
            except psutil.Error:
                continue
        # Other descendants (e.g. a pin-memory helper's children) count in the tree totals.
        others: list[tuple[psutil.Process, float]] = []
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            if child.pid in live:
                continue
            proc = self._process(child.pid)
            if proc is None:
                continue
            live.add(child.pid)
            try:
                others.append((proc, self._cpu_percent(proc)))
            except psutil.Error:
                continue
        for pid in list(self._procs):  # forget processes that are gone: no stale entries
            if pid not in live:
                del self._procs[pid]
                self._new.discard(pid)
        # The whole tree's memory at one moment: a process's PSS changes as others share its pages or stop.
        memories = self.memory.read_tree([proc for proc, *_ in followed] + [proc for proc, _ in others])
        self.memory.retain(live)
        held = {m.pid: m for m in memories}
        processes = []
        for proc, role, number, cpu in followed:
            if role == "worker" and proc.pid not in held:
                continue  # gone since its CPU was read
            processes.append(_process_sample(proc.pid, role, number, cpu, held.get(proc.pid)))
        tree_cpu = sum(p.cpu_percent for p in processes) + sum(cpu for proc, cpu in others if proc.pid in held)
        tree_rss = sum(m.rss_bytes for m in memories)
        found_workers = [p.pid for p in processes if p.role == "worker"]

        shm_used = shm_total = None
        if os.path.isdir("/dev/shm"):
            try:
                usage = shutil.disk_usage("/dev/shm")
                shm_used, shm_total = usage.used, usage.total
            except OSError:
                pass

        gpus = self._gpus()
        gpu_list = gpus.read(live)
        gpu_samples = None
        if gpu_list:
            training_gpu = next((g.index for g in gpu_list if g.used_by_tree), None)
            gpu_samples = (
                gpus.utilization_samples(training_gpu)
                if training_gpu is not None
                else GpuSamples(None, (), "the training process holds no context on a GPU NVML sees")
            )
        return SystemSnapshot(
            time=time.time(),
            cpu_percent_per_core=per_core,
            load_average=(load[0], load[1], load[2]),
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            memory_available_bytes=int(memory.available),
            processes=tuple(processes),
            tree_cpu_percent=tree_cpu,
            tree_rss_bytes=tree_rss,
            shm_used_bytes=shm_used,
            shm_total_bytes=shm_total,
            gpus=gpu_list,
            gpu_status=gpus.status,
            sampler_cpu_fraction=0.0,
            memory=tree_memory(memories, found_workers) if memories else None,
            gpu_samples=gpu_samples,
        )


class _NoGpus(NvmlReader):
    def __init__(self) -> None:
        self._nvml = None
        self._handles = []
        self._last_us = {}
        self._no_samples = {}
        self._offset_s = None
        self.status = "no NVIDIA GPU: GPU sampling is off"


def _process_sample(
    pid: int, role: str, worker_id: int | None, cpu_percent: float, memory: ProcessMemory | None
) -> ProcessSample:
    if memory is None:  # the main process's memory could not be read: shown as 0, as before
        return ProcessSample(pid, role, worker_id, cpu_percent, 0)
    return ProcessSample(
        pid, role, worker_id, cpu_percent, memory.rss_bytes, memory.pss_bytes, memory.uss_bytes, memory.exact
    )


def process_rss(proc: psutil.Process) -> int:
    """Resident memory of ``proc``; 0 when it is gone or cannot be read."""
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0
