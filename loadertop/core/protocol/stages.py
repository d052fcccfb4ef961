"""Where a sample's time goes: the stage figures a loader's workers measure (``loadertop.core.probe.stages``).

No torch here: the monitor, the headless lines and the recorded sessions use these types as they are.

A loader's samples go through stages, in this order:

- ``read``: file reads the dataset makes through ``torchvision.io.read_file`` (in workers);
- ``decode``: image decoding (PIL's ``Image.open`` and ``ImageFile.load``, ``torchvision.io``'s ``decode_*``),
  in workers;
- one stage per transform of a torchvision ``Compose`` (v1 or v2) in the dataset's ``transform``, named by its
  class (``RandomResizedCrop``...; a second of the same class ``ColorJitter#2``), in workers;
- ``__getitem__ (rest)``: the rest of the dataset's ``__getitem__`` (``__getitems__``): its time less the stages
  above measured inside it;
- ``collate``: the loader's ``collate_fn``, once a batch;
- ``pin memory``: pinning the batch in the loop's process (the pin-memory thread with workers, the loop's
  thread at 0 workers), once a batch, where the loader pins (``pin_memory=True`` and an accelerator);
- ``to device``: the built-in trainer's copy of the batch to the GPU, once a batch, timed on the GPU (CUDA
  events around the copy, read after the step's synchronise: no extra wait), its CPU the loop thread's.

Each stage has its wall time on every call (a batch's samples together: one pair of clock reads a
fetch) and the thread's CPU time on one fetch in ``CPU_EVERY`` (every stage of its samples, and its collate; at
0 workers fewer where fetches are short, one in about 4 ms of fetching): a stage's CPU per sample is the mean CPU
of its sampled calls times its calls per sample; **waiting** (storage, sleep, locks, a queue for a core) is wall
less CPU.

And the bytes read, from Linux's per-process counters (``/proc/PID/io``): **from storage** (``read_bytes``: what
came from the block device, so a file in the page cache adds nothing) and **in all** (``rchar``: every ``read``,
the cache's included). In a worker, everything it read since it started fetching (the script's
``worker_init_fn`` included); at 0 workers, the fetching thread's reads during the fetches that read the CPU
clock, 50 ms apart or more (two ``pread`` of ``/proc`` a time). The rate is a worker's while it fetches: its
bytes over its samples' wall time.

And how the calls' wall times spread (``StageTime.hist``): the calls whose CPU was read counted by octave of
their wall time, so that a stage whose mean is small but one call in a hundred stalls (a cold file, a lock) shows
it (``StageFigures.at_most_ms``: the time that a share of the calls took at most, to an octave).
"""

from __future__ import annotations

from dataclasses import dataclass

READ = "read"
DECODE = "decode"
REST = "__getitem__ (rest)"
COLLATE = "collate"
PIN = "pin memory"
TO_DEVICE = "to device"
BATCH_STAGES = (PIN, TO_DEVICE)
"""The stages once a batch in the loop's process, after the collate (every call's wall and CPU read)."""

CPU_EVERY = 8
"""One fetch (a batch's samples) in this many reads the thread's CPU clock at each of its stages (collates
always do)."""

HIST_BUCKETS = 24
"""Octaves of a stage's histogram (``StageTime.hist``): bucket 0 holds calls under 1 us, bucket k calls of
2^(k-1) to 2^k us, the last every call from 2^22 us (4.2 s) on."""


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a call of ``seconds`` (``HIST_BUCKETS``)."""
    return min(HIST_BUCKETS - 1, int(max(0.0, seconds) * 1e6).bit_length())


def reached_bucket(hist: tuple[int, ...], share: float) -> int | None:
    """The first bucket of ``hist`` through which ``share`` of its calls are counted (None: no call counted)."""
    total = sum(hist)
    if total <= 0:
        return None
    reached = 0
    for bucket, count in enumerate(hist):
        reached += count
        if reached >= share * total:
            return bucket
    return len(hist) - 1


def bucket_top_ms(bucket: int) -> float:
    """The wall time every call of ``bucket`` took less than (ms; the last bucket's has no top: infinity)."""
    return float("inf") if bucket >= HIST_BUCKETS - 1 else (2**bucket) / 1000.0


TURNED_OFF = "turned off (--no-stages, or the loader's time_stages = False)"
"""``StageFigures.off`` where the user turned stage timing off (the loader then has no figures to say so)."""


@dataclass(frozen=True, slots=True)
class StageTime:
    """One stage's totals over the samples of one configuration.

    Attributes:
        name: the stage (``READ``, ``DECODE``, a transform's class name, ``REST``, ``COLLATE``).
        calls: times it ran.
        wall_s: seconds it ran, all calls.
        cpu_calls: calls whose CPU was read.
        cpu_wall_s: seconds of the calls whose CPU was read.
        cpu_s: the thread's CPU seconds over those calls.
        hist: those calls by their wall time, per octave (``HIST_BUCKETS``; () where none was counted, as in a
            recording older than the histograms). The samples' stage (a fetch's samples timed together) counts
            each sample at its fetch's mean.
    """

    name: str
    calls: int
    wall_s: float
    cpu_calls: int
    cpu_wall_s: float
    cpu_s: float
    hist: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StageFigures:
    """A configuration's stages: where its samples' time went, per sample.

    Attributes:
        num_workers: the configuration's workers (0: the stages ran in the loop's process).
        samples: samples fetched.
        batches: batches collated.
        stages: each stage, in the order of a sample's path (stages that never ran left out).
        off: why stage timing is off for this loader (one line), or None.
        io_samples: the samples the bytes read cover (0: not read, e.g. no ``/proc``).
        storage_bytes: bytes those samples read from storage (``read_bytes``).
        read_bytes: bytes they read in all, page cache included (``rchar``).
    """

    num_workers: int
    samples: int
    batches: int
    stages: tuple[StageTime, ...]
    off: str | None = None
    io_samples: int = 0
    storage_bytes: int = 0
    read_bytes: int = 0

    @property
    def storage_kb_per_sample(self) -> float | None:
        """KB (1000 bytes) a sample read from storage; None where the bytes were not read."""
        return self.storage_bytes / self.io_samples / 1000.0 if self.io_samples else None

    @property
    def read_kb_per_sample(self) -> float | None:
        """KB (1000 bytes) a sample read in all, page cache included; None where the bytes were not read."""
        return self.read_bytes / self.io_samples / 1000.0 if self.io_samples else None

    def mb_per_s(self, kb_per_sample: float | None) -> float | None:
        """A worker's rate while it fetches (MB/s, 10^6 bytes): ``kb_per_sample`` over a sample's wall time."""
        if kb_per_sample is None or self.sample_ms <= 0:
            return None
        return kb_per_sample / self.sample_ms

    def wall_ms(self, stage: StageTime) -> float:
        """The stage's wall milliseconds per sample."""
        return 1000.0 * stage.wall_s / self.samples if self.samples else 0.0

    def cpu_ms(self, stage: StageTime) -> float | None:
        """The stage's CPU milliseconds per sample: its sampled calls' mean CPU times its calls per sample (at
        most its wall per sample)."""
        if stage.cpu_calls <= 0 or not self.samples:
            return None
        per_call = 1000.0 * stage.cpu_s / stage.cpu_calls
        return min(self.wall_ms(stage), per_call * stage.calls / self.samples)

    def wait_ms(self, stage: StageTime) -> float | None:
        """The stage's waiting (wall less CPU) milliseconds per sample."""
        cpu = self.cpu_ms(stage)
        return None if cpu is None else self.wall_ms(stage) - cpu

    def at_most_ms(self, stage: StageTime, share: float) -> float | None:
        """The wall time ``share`` (0.99: 99%) of the stage's counted calls took at most, to an octave (the top
        of the bucket the share reaches: a bound, not an estimate; infinity in the last); None where none was
        counted."""
        bucket = reached_bucket(stage.hist, share)
        return None if bucket is None else bucket_top_ms(bucket)

    @property
    def sample_ms(self) -> float:
        """Wall milliseconds per sample, all stages."""
        return sum(self.wall_ms(stage) for stage in self.stages)

    @property
    def sample_cpu_ms(self) -> float | None:
        """CPU milliseconds per sample, all stages (None where a stage's CPU was never read)."""
        cpus = [self.cpu_ms(stage) for stage in self.stages]
        return None if any(cpu is None for cpu in cpus) else sum(cpu for cpu in cpus if cpu is not None)

    def slowest_first(self) -> tuple[StageTime, ...]:
        """The stages, the most wall time per sample first."""
        return tuple(sorted(self.stages, key=lambda stage: -stage.wall_s))

    def share(self, stage: StageTime) -> float:
        """The stage's share of a sample's wall time."""
        total = self.sample_ms
        return self.wall_ms(stage) / total if total > 0 else 0.0

    def to_wire(self) -> dict[str, object]:
        """As JSON: the figures per sample (ms) and the totals they come from."""
        return {
            "num_workers": self.num_workers,
            "samples": self.samples,
            "batches": self.batches,
            "off": self.off,
            "io_samples": self.io_samples,
            "storage_bytes": self.storage_bytes,
            "read_bytes": self.read_bytes,
            "stages": [
                {
                    "name": s.name,
                    "calls": s.calls,
                    "wall_s": s.wall_s,
                    "cpu_calls": s.cpu_calls,
                    "cpu_wall_s": s.cpu_wall_s,
                    "cpu_s": s.cpu_s,
                    "hist": list(s.hist),
                    "wall_ms_per_sample": round(self.wall_ms(s), 4),
                    "cpu_ms_per_sample": None if (cpu := self.cpu_ms(s)) is None else round(cpu, 4),
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_wire(cls, wire: dict[str, object]) -> StageFigures:
        """Back from ``to_wire``'s JSON (``ValueError`` on a malformed one)."""
        try:
            stages = tuple(
                StageTime(
                    str(s["name"]),
                    int(s["calls"]),
                    float(s["wall_s"]),
                    int(s["cpu_calls"]),
                    float(s["cpu_wall_s"]),
                    float(s["cpu_s"]),
                    tuple(int(count) for count in s.get("hist", ())),  # absent in an older recording
                )
                for s in wire["stages"]  # type: ignore[attr-defined]
            )
            off = wire.get("off")
            return cls(
                int(wire["num_workers"]),  # type: ignore[call-overload]
                int(wire["samples"]),  # type: ignore[call-overload]
                int(wire["batches"]),  # type: ignore[call-overload]
                stages,
                None if off is None else str(off),
                int(wire.get("io_samples", 0)),  # type: ignore[call-overload]  # absent in an older recording
                int(wire.get("storage_bytes", 0)),  # type: ignore[call-overload]
                int(wire.get("read_bytes", 0)),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed stage figures: {exc}") from None


def ms(value: float) -> str:
    """Milliseconds as the figures are read: two decimals, three significant digits below 0.1 ms."""
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"


def describe(figures: StageFigures, *, top: int = 4) -> str:
    """One line: the slowest stages per sample, wall and CPU, e.g. ``decode 9.1 ms (CPU 9.0), collate 0.4 ms``."""
    if figures.off:
        return f"stage timing off: {figures.off}"
    if not figures.samples:
        return "no samples timed yet"
    parts = []
    for stage in figures.slowest_first()[:top]:
        cpu = figures.cpu_ms(stage)
        cpu_text = "" if cpu is None else f" (CPU {ms(cpu)})"
        parts.append(f"{stage.name} {ms(figures.wall_ms(stage))} ms{cpu_text}")
    return f"per sample {ms(figures.sample_ms)} ms: " + ", ".join(parts)


def kb(value: float) -> str:
    """Kilobytes (1000 bytes) as a figure is read: bytes below 1 KB, MB from 1000 KB."""
    if value < 1:
        return f"{value * 1000:.0f} B"
    return f"{value / 1000:.3g} MB" if value >= 1000 else f"{value:.3g} KB"


def describe_io(figures: StageFigures) -> str | None:
    """One line on the bytes a sample read, e.g. ``reads 110 KB a sample, 0 B from storage (the rest: the page
    cache); 8.2 MB/s a worker while fetching``; None where they were not read."""
    read, storage = figures.read_kb_per_sample, figures.storage_kb_per_sample
    if read is None or storage is None or figures.off:
        return None
    rate = figures.mb_per_s(read)
    cached = " (the rest: the page cache)" if storage < 0.9 * read else ""
    rate_text = "" if rate is None else f"; {rate:.3g} MB/s a worker while fetching"
    where = "a sample" if figures.num_workers else "a sample (sampled fetches)"
    return f"reads {kb(read)} {where}, {kb(storage)} from storage{cached}{rate_text}"


def describe_tails(figures: StageFigures, *, share: float = 0.99, over: float = 4.0) -> str | None:
    """One line on the stages whose slow calls stand out: more than ``1 - share`` of the counted calls took over
    ``over`` times the stage's mean call and as long as a whole sample's mean or longer, to an octave, e.g.
    ``slow calls: read 1% of calls 32.8 ms or more (mean 0.61 ms)``; None where no stage's do (or nothing was
    counted). A call that waited a few ms for a core (a worker descheduled on a busy machine) is not named where
    that is less than a sample's time. The samples' stage where stages ran inside it is left out (its histogram is
    the whole ``__getitem__``'s, its figures the rest's)."""
    if figures.off:
        return None
    parts = []
    for stage in figures.slowest_first():
        bucket = reached_bucket(stage.hist, share)
        if not bucket or stage.calls <= 0 or (stage.name == REST and _has_inner(figures)):
            continue
        mean = 1000.0 * stage.wall_s / stage.calls
        floor = bucket_top_ms(bucket - 1)  # more than 1 - share of the calls took this long or longer
        if floor > over * mean and floor >= figures.sample_ms:
            parts.append(f"{stage.name} {100 * (1 - share):.0f}% of calls {floor:.3g} ms or more (mean {ms(mean)} ms)")
    return "slow calls: " + ", ".join(parts) if parts else None


def _has_inner(figures: StageFigures) -> bool:
    """Whether stages ran inside the samples (then the samples' histogram is ``__getitem__``'s as a whole, not
    its rest's)."""
    return any(stage.name not in (REST, COLLATE, *BATCH_STAGES) and stage.calls for stage in figures.stages)
