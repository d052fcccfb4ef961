"""Stage timing in a loader's workers: each stage's cost measured as the pipeline spends it, in its order, the
slow one named with its kind; batches, sample order and random draws the same with it on or off; a timer that
fails turns itself off with a reason and the loader goes on as torch's; a raising transform is named."""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import v2

from loadertop import DataLoader
from loadertop.core.policy.stages import latency_bound_workers, verdict, waiting_share
from loadertop.core.probe import stages as stage_timing
from loadertop.core.protocol.stages import (
    COLLATE,
    DECODE,
    PIN,
    READ,
    REST,
    StageFigures,
    bucket_of,
    bucket_top_ms,
    describe_tails,
)
from tests.helpers import no_children_left

BUSY_S = 0.0015  # the CPU one transform computes per sample
SLEEP_S = 0.003  # what another waits per sample
REST_S = 0.002  # the CPU __getitem__ spends outside its transforms
COLLATE_S = 0.004  # the CPU a collate spends per batch
BATCH = 8


def compute(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (a pure-Python loop: it is CPU whatever the machine's load)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Waits:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return x


class Computes:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compute(BUSY_S)
        return x


class Raises:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if int(x[0]) == 13:
            raise ValueError("sample 13 is broken")
        return x


class Calibrated(torch.utils.data.Dataset[torch.Tensor]):
    """Samples whose stages cost known amounts: a transform that waits, one that computes, a cheap one."""

    def __init__(self, size: int = 96, transform: object = None) -> None:
        self.size = size
        self.transform = transform if transform is not None else v1.Compose([Waits(), Computes(), v1.Lambda(abs)])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        compute(REST_S)
        return self.transform(torch.full((4,), float(index)))


def heavy_collate(batch: list[torch.Tensor]) -> torch.Tensor:
    compute(COLLATE_S)
    return torch.stack(batch)


def known_cpu_ms(repeats: int = 20) -> tuple[float, float]:
    """The CPU milliseconds, calibrated here, of the rest of a sample (the busy part and making its tensor)
    and of one heavy collate (the busy part and the stack)."""
    start = time.thread_time()
    samples = []
    for i in range(repeats):
        compute(REST_S)
        samples.append(torch.full((4,), float(i)))
    rest = (time.thread_time() - start) / repeats
    start = time.thread_time()
    for _ in range(repeats):
        heavy_collate(samples[:BATCH])
    collate = (time.thread_time() - start) / repeats
    return 1000 * rest, 1000 * collate


def stage(figures: StageFigures, name: str):
    [found] = [s for s in figures.stages if s.name == name]
    return found


def run(loader: DataLoader, epochs: int = 1) -> list[torch.Tensor]:
    return [batch for _ in range(epochs) for batch in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_each_stage_is_measured_as_the_pipeline_spends_it_in_its_order(context: str) -> None:
    loader = DataLoader(
        Calibrated(size=960), batch_size=BATCH, num_workers=2, collate_fn=heavy_collate, multiprocessing_context=context
    )
    run(loader)
    [figures] = loader.stages()
    # 60 fetches a worker, about 7 of them reading the CPU clock: one slow fetch (a forked worker's first
    # copy-on-write faults land in its CPU time) weighs a seventh, not a third, of the figure.
    assert (figures.num_workers, figures.samples, figures.batches) == (2, 960, 120)
    assert [s.name for s in figures.stages] == ["Waits", "Computes", "Lambda", REST, COLLATE]
    # CPU: what the pipeline computes, within 10% (a thread's CPU clock: the machine's load does not move it).
    rest_ms, collate_ms = known_cpu_ms()
    assert figures.cpu_ms(stage(figures, "Computes")) == pytest.approx(1000 * BUSY_S, rel=0.1)
    assert figures.cpu_ms(stage(figures, REST)) == pytest.approx(rest_ms, rel=0.1)
    assert figures.cpu_ms(stage(figures, COLLATE)) == pytest.approx(collate_ms / BATCH, rel=0.1)
    # Waiting: the sleep's wall time is at least the sleep and almost none of it is CPU.
    waits = stage(figures, "Waits")
    assert figures.wall_ms(waits) >= 1000 * SLEEP_S
    assert figures.cpu_ms(waits) < 0.1 * figures.wall_ms(waits)
    assert figures.wall_ms(stage(figures, "Computes")) >= 1000 * BUSY_S
    assert stage(figures, COLLATE).calls == 120 and stage(figures, REST).calls == 960
    # The histograms count the calls whose CPU was read, each in the octave of its wall time.
    assert all(sum(s.hist) == s.cpu_calls > 0 for s in figures.stages)
    assert sum(stage(figures, "Waits").hist[: bucket_of(SLEEP_S)]) == 0  # a 3 ms sleep is never under 2 ms
    assert no_children_left()


def test_without_workers_the_sample_and_the_collate_are_timed_in_the_loop_process() -> None:
    # 60 fetches, about 7 of them reading the CPU clock: one slow one (a busy machine's page faults, a
    # collection) weighs a seventh of the figure (with 24 fetches, 3 read: 10% over once in a full-suite run).
    loader = DataLoader(Calibrated(size=480), batch_size=BATCH, num_workers=0, collate_fn=heavy_collate)
    run(loader)
    [figures] = loader.stages()
    assert (figures.num_workers, figures.samples, figures.batches) == (0, 480, 60)
    assert [s.name for s in figures.stages] == [REST, COLLATE]  # transforms there are the script's own objects
    rest_ms, _ = known_cpu_ms()
    assert figures.cpu_ms(stage(figures, REST)) == pytest.approx(rest_ms + 1000 * BUSY_S, rel=0.1)
    assert figures.wall_ms(stage(figures, REST)) >= 1000 * (REST_S + BUSY_S + SLEEP_S)
    # Each sample counted at its fetch's mean; each collate once.
    assert all(sum(s.hist) == s.cpu_calls > 0 for s in figures.stages)
    assert sum(stage(figures, REST).hist[: bucket_of(REST_S + BUSY_S + SLEEP_S)]) == 0


class Tiny(torch.utils.data.Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8000

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((4,), float(index))


def test_without_workers_short_fetches_read_the_cpu_clock_less_often_and_slow_ones_one_in_8() -> None:
    # Each read of the thread's CPU clock is a system call the loop pays: fetches of microseconds read it one
    # in up to 64 (about every 4 ms of fetching), set once after the loop's first 32 fetches.
    quick = DataLoader(Tiny(), batch_size=4, num_workers=0)
    run(quick)
    [figures] = quick.stages()
    collate = stage(figures, COLLATE)
    assert collate.calls == 2000 and sum(collate.hist) == collate.cpu_calls
    assert 32 // 15 <= collate.cpu_calls < 32 + (2000 - 32) // 12  # one in 8 for the first 32, then far fewer
    assert figures.cpu_ms(stage(figures, REST)) is not None
    slow = DataLoader(Calibrated(size=400), batch_size=1, num_workers=0)  # 400 fetches of ~6.5 ms: one in 8
    run(slow)
    assert 400 // 12 <= stage(slow.stages()[0], COLLATE).cpu_calls <= 400 // 5


def test_figures_are_per_worker_count_across_switches_and_persistent_epochs() -> None:
    loader = DataLoader(Calibrated(size=64), batch_size=BATCH, num_workers=2, persistent_workers=True)
    seen = 0
    for epoch in range(2):
        for _ in loader:
            seen += 1
            if epoch == 1 and seen == 10:
                loader.switch(1)
    by_count = {f.num_workers: f for f in loader.stages()}
    assert set(by_count) == {1, 2}
    assert by_count[1].samples + by_count[2].samples == 128
    assert by_count[1].batches + by_count[2].batches == 16
    del loader  # its persistent workers end with it
    assert no_children_left()


STALL_S = 0.045  # what one sample in 8 waits (a cold file, a lock)
QUICK_S = 0.001  # what the others wait


class Stalls:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(STALL_S if int(x[0]) % 8 == 0 else QUICK_S)
        return x


def test_a_stage_whose_calls_stall_now_and_then_shows_them_apart_from_its_mean() -> None:
    dataset = Calibrated(size=640, transform=v1.Compose([Stalls()]))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, multiprocessing_context="fork")
    run(loader)
    [figures] = loader.stages()
    stalls = stage(figures, "Stalls")
    assert sum(stalls.hist) == stalls.cpu_calls
    quick, stalled = bucket_of(QUICK_S), bucket_of(STALL_S)
    # No counted call under its sleep's octave; of about 80 counted, some stalls in theirs (or over) and most
    # calls in the quick ones' octave or the next (a busy machine wakes a sleeper late now and then).
    assert sum(stalls.hist[:quick]) == 0
    assert 0 < sum(stalls.hist[stalled:]) < sum(stalls.hist[quick : quick + 2])
    tails = describe_tails(figures)
    assert tails is not None and tails.startswith("slow calls: Stalls 1% of calls ")
    assert figures.at_most_ms(stalls, 0.5) in (bucket_top_ms(quick), bucket_top_ms(quick + 1))  # the mean's 6.5 ms
    assert no_children_left()


class Shuffled(torch.utils.data.Dataset[torch.Tensor]):
    """Random transforms drawn in the workers (from their seeds), a sample order from the loader's generator."""

    def __init__(self) -> None:
        self.transform = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomErasing(p=0.5, value=0)])

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8) + index
        return self.transform(image), torch.rand(2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_order_and_random_draws_are_the_same_with_stage_timing_on_and_off(num_workers: int) -> None:
    def epochs(timed: bool) -> tuple[list[torch.Tensor], torch.Tensor, list[StageFigures]]:
        torch.manual_seed(7)
        loader = DataLoader(
            Shuffled(), batch_size=4, shuffle=True, num_workers=num_workers, generator=torch.Generator().manual_seed(3)
        )
        loader.time_stages = timed
        batches = [torch.cat([images.flatten(), noise.flatten()]) for images, noise in run(loader, epochs=2)]
        return batches, torch.get_rng_state(), list(loader.stages())

    timed, timed_rng, figures = epochs(True)
    stock, stock_rng, no_figures = epochs(False)
    assert len(timed) == len(stock) == 20
    assert all(torch.equal(a, b) for a, b in zip(timed, stock, strict=True))
    assert torch.equal(timed_rng, stock_rng)
    assert figures and figures[0].samples == 80 and not no_figures


def test_a_timer_that_fails_turns_itself_off_with_a_reason_and_the_loader_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no clock here")

    monkeypatch.setattr(stage_timing, "install_in_worker", broken)  # a fork's workers inherit it
    loader = DataLoader(Calibrated(size=32), batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    batches = run(loader)
    assert torch.equal(torch.cat(batches)[:, 0], torch.arange(32.0))
    [figures] = loader.stages()
    assert figures.off == "RuntimeError: no clock here"
    assert figures.samples == 0
    assert verdict(figures, cores=2) == "stage timing is off: RuntimeError: no clock here"


def test_an_iterable_dataset_is_fetched_as_torch_does_with_timing_off_and_the_reason() -> None:
    class Stream(torch.utils.data.IterableDataset[int]):
        def __iter__(self):
            return iter(range(10))

    loader = DataLoader(Stream(), batch_size=5)
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    [figures] = loader.stages()
    assert figures.off == "RuntimeError: an IterableDataset's samples are not timed"


def test_a_raising_transform_is_named_with_its_stage() -> None:
    dataset = Calibrated(size=32, transform=v1.Compose([Computes(), Raises()]))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2)
    try:
        run(loader)
    except ValueError as exc:
        message = str(exc)
    else:
        pytest.fail("the broken sample did not raise")
    assert "sample 13 is broken" in message
    assert "loadertop: raised in the sample's Raises stage" in message  # in torch's worker traceback
    del loader
    gc.collect()  # the traceback's frames held the iterator in a cycle
    assert no_children_left()


def write_jpegs(folder: Path, count: int) -> list[Path]:
    paths = []
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (96, 128, 3), dtype=torch.uint8, generator=generator).numpy()
        path = folder / f"{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


class JpegFolder(torch.utils.data.Dataset[torch.Tensor]):
    """Real JPEG files read and decoded by PIL, then a torchvision pipeline, as ``ImageFolder`` does."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.transform = v1.Compose([v1.RandomResizedCrop(64), v1.ColorJitter(0.4, 0.4, 0.4), v1.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with open(self.paths[index], "rb") as file:
            image = Image.open(file).convert("RGB")
        return self.transform(image)


def test_a_real_jpeg_pipeline_shows_decode_and_each_transform_by_name(tmp_path: Path) -> None:
    loader = DataLoader(JpegFolder(write_jpegs(tmp_path, 48)), batch_size=BATCH, num_workers=2)
    run(loader)
    [figures] = loader.stages()
    names = [s.name for s in figures.stages]
    assert names == [DECODE, "RandomResizedCrop", "ColorJitter", "ToTensor", REST, COLLATE]
    assert READ not in names  # PIL reads through the file it is given: its reads are part of its decode
    decode = stage(figures, DECODE)
    assert decode.calls >= 2 * 48  # Image.open reads the header, load() decodes (later loads return at once)
    assert all(figures.wall_ms(s) > 0 for s in figures.stages)
    assert figures.samples == 48 and stage(figures, "ColorJitter").calls == 48


def figures_of(*stages: tuple[str, float, float], samples: int = 100) -> StageFigures:
    """Figures with each stage's (name, wall ms per sample, CPU share), CPU read on every call."""
    from loadertop.core.protocol.stages import StageTime

    return StageFigures(
        2,
        samples,
        samples // 10,
        tuple(
            StageTime(
                name, samples, wall * samples / 1000, samples, wall * samples / 1000, share * wall * samples / 1000
            )
            for name, wall, share in stages
        ),
    )


def test_the_verdict_names_the_dominant_stage_and_whether_it_waits_or_computes() -> None:
    decode_bound = figures_of((DECODE, 9.1, 1.0), ("RandomResizedCrop", 2.0, 1.0), (REST, 0.5, 1.0), (COLLATE, 0.4, 1))
    assert verdict(decode_bound, cores=8) == (
        "decode 9.10 of 12.00 ms per sample, all CPU: more workers help up to the 8 usable cores; past that, "
        "make decode cheaper"
    )
    storage_bound = figures_of((READ, 9.0, 0.05), (DECODE, 2.0, 1.0), (REST, 1.0, 1.0))
    assert waiting_share(storage_bound) == pytest.approx(1 - (0.45 + 2 + 1) / 12)
    assert latency_bound_workers(storage_bound, cores=2) == 7  # 2 cores x 12 ms wall / 3.45 ms CPU, rounded up
    assert verdict(storage_bound, cores=2) == (
        "71% of each sample is waiting, most in read: latency-bound: workers beyond the 2 usable cores still help "
        "(about 7 workers)"
    )
    # With the bytes read: 456 KB a sample from storage in 12 ms of a sample is 38 MB/s a worker.
    read_from_storage = dataclasses.replace(storage_bound, io_samples=100, storage_bytes=45_600_000)
    assert verdict(read_from_storage, cores=2) == (
        "71% of each sample is waiting (storage: 38 MB/s a worker), most in read: latency-bound: workers beyond the "
        "2 usable cores still help (about 7 workers)"
    )
    collate_bound = figures_of((REST, 1.0, 1.0), (COLLATE, 0.8, 1.0))
    assert verdict(collate_bound, cores=2).startswith("collate 44% of each sample's time (0.80 of 1.80 ms)")


class LabelledBreaks(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """A training dataset whose transform raises at sample 13."""

    def __init__(self) -> None:
        self.transform = v1.Compose([v1.Lambda(abs), Raises()])

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.full((1,), float(index))), index % 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_built_in_trainer_names_the_stage_and_the_sample_that_raised(num_workers: int) -> None:
    from loadertop import LoaderConfig, Trainer, TrainerState, Workload

    workload = Workload(
        dataset=LabelledBreaks(),
        model=torch.nn.Linear(1, 2),
        loss_fn=torch.nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    trainer = Trainer(workload, LoaderConfig(num_workers=num_workers, batch_size=4), epochs=1, device="cpu", seed=0)
    trainer.start()
    assert trainer.join(60)
    error = trainer.error
    assert trainer.state is TrainerState.ERROR and error is not None
    assert (error.kind, error.sample_index, error.message) == ("dataset", 13, "ValueError: sample 13 is broken")
    # In the workers the transforms are timed and named; at 0 workers they are the script's own objects.
    assert error.stage == ("Raises" if num_workers else None)
    assert no_children_left()


def test_a_timed_compose_is_still_its_class_to_isinstance_copy_and_pickle() -> None:
    compose = v1.Compose([v1.Lambda(abs)])
    compose.__class__ = stage_timing._timed_compose_class(type(compose), 2)
    assert isinstance(compose, v1.Compose) and type(compose).__name__ == "Compose"
    assert type(pickle.loads(pickle.dumps(compose))) is v1.Compose  # pickled as the class it was
    assert type(compose) is not v1.Compose  # and still timed
    assert torch.equal(copy.deepcopy(compose)(torch.tensor([-1.0])), torch.tensor([1.0]))


def test_epochs_of_new_workers_add_up_in_one_sheet_a_count() -> None:
    loader = DataLoader(Calibrated(size=16, transform=v1.Compose([v1.Lambda(abs)])), batch_size=BATCH, num_workers=2)
    for _ in range(5):  # not persistent: new workers, and a new sheet, every epoch
        run(loader)
    [figures] = loader.stages()
    assert (figures.samples, figures.batches) == (80, 10)
    assert all(sum(s.hist) == s.cpu_calls for s in figures.stages)  # the frozen epochs' histograms added up too
    # The finished epochs' in one; the one before the latest may still be handing over, the latest runs.
    assert len(loader._stages.sheets) == 3
    assert no_children_left()


def test_transforms_changed_between_epochs_give_one_count_the_stages_of_both() -> None:
    dataset = Calibrated(size=16, transform=v1.Compose([Computes()]))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2)
    run(loader)
    dataset.transform = v1.Compose([v1.Lambda(abs), Computes()])  # a new pipeline from the next epoch on
    run(loader)
    [figures] = loader.stages()
    assert [s.name for s in figures.stages] == ["Computes", "Lambda", REST, COLLATE]
    assert (figures.samples, stage(figures, "Computes").calls, stage(figures, "Lambda").calls) == (32, 32, 16)
    assert no_children_left()


FILE_BYTES = 150_001  # not a whole number of pages
PAGE_ROUND = 64 * 1024  # a file system reads whole blocks: the most it can add to a cold file's bytes


class ReadsFiles(torch.utils.data.Dataset[torch.Tensor]):
    """Each sample reads one file of ``FILE_BYTES`` bytes whole; ``cold``: its pages dropped from the page cache
    first, so the read comes from storage."""

    def __init__(self, paths: list[Path], *, cold: bool) -> None:
        self.paths = paths
        self.cold = cold

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        fd = os.open(self.paths[index], os.O_RDONLY)
        try:
            if self.cold:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            data = os.read(fd, 2 * FILE_BYTES)
        finally:
            os.close(fd)
        return torch.tensor(len(data))


def write_files(directory: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = directory / f"{i}.bin"
        with open(path, "wb") as file:
            file.write(os.urandom(FILE_BYTES))
            file.flush()
            os.fsync(file.fileno())  # written to storage: dropping its pages then makes the next read a real one
        paths.append(path)
    return paths


needs_proc_io = pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/io") or not hasattr(os, "posix_fadvise"), reason="needs Linux's /proc io"
)


@needs_proc_io
def test_without_workers_the_bytes_a_sample_reads_are_counted_exactly(tmp_path: Path) -> None:
    paths = write_files(tmp_path, 64)
    warm = DataLoader(ReadsFiles(paths, cold=False), batch_size=4, num_workers=0)
    assert all(int(x) == FILE_BYTES for batch in warm for x in batch)
    [figures] = warm.stages()
    # Fetches whose CPU was read (one in 8), 50 ms apart or more, count their thread's reads: exactly the files' bytes.
    assert 0 < figures.io_samples < 64 and figures.io_samples % 4 == 0
    assert figures.read_bytes == FILE_BYTES * figures.io_samples
    assert figures.storage_bytes == 0  # just written: every page in the cache
    assert figures.read_kb_per_sample == pytest.approx(FILE_BYTES / 1000)
    cold = DataLoader(ReadsFiles(paths, cold=True), batch_size=4, num_workers=0)
    run(cold, epochs=2)
    [figures] = cold.stages()
    assert figures.read_bytes == FILE_BYTES * figures.io_samples
    per_sample = figures.storage_bytes / figures.io_samples
    assert FILE_BYTES <= per_sample <= FILE_BYTES + PAGE_ROUND


@needs_proc_io
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_each_worker_counts_the_bytes_its_samples_read(tmp_path: Path, context: str) -> None:
    paths = write_files(tmp_path, 48)
    loader = DataLoader(ReadsFiles(paths, cold=True), batch_size=4, num_workers=2, multiprocessing_context=context)
    run(loader)
    [figures] = loader.stages()
    assert figures.io_samples == 48  # a worker counts every sample: its process does nothing else
    # In all: the files, and the worker's reads of its index queue (a pipe: a few hundred bytes a batch).
    assert FILE_BYTES * 48 <= figures.read_bytes <= FILE_BYTES * 48 + 1024 * figures.batches
    assert FILE_BYTES * 48 <= figures.storage_bytes <= (FILE_BYTES + PAGE_ROUND) * 48
    rate = figures.mb_per_s(figures.read_kb_per_sample)
    assert rate is not None and rate == pytest.approx(figures.read_bytes / 48 / 1000 / figures.sample_ms)
    assert no_children_left()


def test_bytes_read_are_described_with_the_page_cache_and_the_rate() -> None:
    from loadertop.core.protocol.stages import StageTime, describe_io

    timed = StageFigures(2, 100, 10, (StageTime(REST, 100, 1.0, 12, 0.12, 0.01),), None, 100, 0, 15_000_000)
    assert describe_io(timed) == (
        "reads 150 KB a sample, 0 B from storage (the rest: the page cache); 15 MB/s a worker while fetching"
    )
    cold = StageFigures(0, 100, 10, timed.stages, None, 16, 16 * 4096, 16 * 700)
    assert describe_io(cold) == (
        "reads 700 B a sample (sampled fetches), 4.1 KB from storage; 0.07 MB/s a worker while fetching"
    )
    assert describe_io(StageFigures(2, 100, 10, timed.stages)) is None  # not read: nothing said
    assert StageFigures.from_wire(timed.to_wire()) == timed
    older = {k: v for k, v in timed.to_wire().items() if k not in ("io_samples", "storage_bytes", "read_bytes")}
    assert StageFigures.from_wire(older).io_samples == 0


PIN_S = 0.003  # the CPU pinning a batch costs here


@pytest.fixture
def fake_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accelerator torch's loader believes in, whose pinning computes ``PIN_S`` of CPU (no GPU here: torch
    pins only where one is present). torch's own loader code runs: its pin-memory thread, its ``pin_memory``."""

    class Accelerator:
        type = "cuda"

    def pin(tensor: torch.Tensor) -> torch.Tensor:
        compute(PIN_S)
        return tensor

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: Accelerator())
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.accelerator, "set_device_index", lambda index: None)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)


@pytest.mark.usefixtures("fake_accelerator")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pinning_is_a_stage_once_a_batch_in_the_pin_thread_or_the_loop(num_workers: int) -> None:
    loader = DataLoader(Calibrated(size=96), batch_size=BATCH, num_workers=num_workers, pin_memory=True)
    run(loader)
    [figures] = loader.stages()
    assert [s.name for s in figures.stages][-2:] == [COLLATE, PIN]
    pinned = stage(figures, PIN)
    assert pinned.calls == pinned.cpu_calls == sum(pinned.hist) == 12  # once a batch, every call's CPU read
    # At least what the pinning computes (its busy loop runs on the thread's own CPU clock), and not much more:
    # what torch's pin_memory adds around it (0.28 ms a call once, on a busy VM, beside the whole suite).
    assert 1000 * PIN_S / BATCH <= figures.cpu_ms(pinned) <= 1.15 * 1000 * PIN_S / BATCH
    # The rest of __getitem__ is what it was: pinning is outside the samples.
    rest_ms, _ = known_cpu_ms()
    extra = 1000 * BUSY_S if num_workers == 0 else 0.0  # at 0 workers the transforms are part of the rest
    assert figures.cpu_ms(stage(figures, REST)) == pytest.approx(rest_ms + extra, rel=0.1)
    # Pinning for no loader (the script's own, in a thread no loader pins for now) is not counted.
    torch.utils.data._utils.pin_memory.pin_memory(torch.zeros(4))
    assert stage(loader.stages()[0], PIN).calls == 12
    unpinned = DataLoader(Calibrated(size=16), batch_size=BATCH, num_workers=num_workers)
    run(unpinned)
    assert PIN not in [s.name for s in unpinned.stages()[0].stages]
    del loader
    assert no_children_left()
