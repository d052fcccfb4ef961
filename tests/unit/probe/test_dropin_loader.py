"""loadertop.DataLoader: the batches a stock DataLoader delivers, in order, across worker switches; no RNG drawn.

Each switch here runs both ways: overlapped (the default: new workers start while the old ones deliver)
and stopped-then-started (``overlap=False``); tests/unit/probe/test_overlap.py follows the overlap batch by batch.
"""

from __future__ import annotations

import inspect
import itertools
import random
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.utils.data import DistributedSampler, IterableDataset, Sampler, WeightedRandomSampler

import loadertop
from loadertop.core.probe.loader import DataLoader, LoaderBatch
from loadertop.core.train.calibrated import SleepDataset
from tests.helpers import no_children_left, wait_for

SIZE = 50


def run(
    make: Callable[..., torch.utils.data.DataLoader],
    switches: dict[int, int],
    *,
    epochs: int = 2,
    limit: int | None = None,
    overlap: bool = True,
) -> tuple[list[list[int]], torch.Tensor, list[int]]:
    """Iterate ``epochs`` epochs (or ``limit`` batches), switching after the batches named; what was seen.

    Returns the sample indices of every batch, three draws of torch's global RNG afterwards (the
    script's later randomness), and the worker count that delivered each batch.
    """
    torch.manual_seed(1234)
    loader = make()
    seen: list[list[int]] = []
    workers: list[int] = []
    if isinstance(loader, DataLoader):
        loader.overlap = overlap
        loader.add_observer(lambda batch: workers.append(batch.num_workers))
    for epoch in range(epochs):
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            seen.append(x.reshape(-1).long().tolist())
            if len(seen) in switches:
                loader.switch(switches[len(seen)])
            if limit is not None and len(seen) >= limit:
                break
    return seen, torch.rand(3), workers


# Each case: how to build the loader (stock torch or loadertop's class), and where its workers start.
def shuffled(cls: type, workers: int = 0, **extra) -> torch.utils.data.DataLoader:
    return cls(SleepDataset(SIZE, 0.0), batch_size=4, shuffle=True, num_workers=workers, **extra)


def with_generator(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    return shuffled(cls, workers, generator=torch.Generator().manual_seed(7))


def distributed(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    dataset = SleepDataset(SIZE, 0.0)
    return cls(
        dataset, batch_size=4, sampler=DistributedSampler(dataset, num_replicas=1, rank=0, seed=3), num_workers=workers
    )


def weighted(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    weights = [1.0 + (i % 5) for i in range(SIZE)]
    return cls(SleepDataset(SIZE, 0.0), batch_size=4, sampler=WeightedRandomSampler(weights, 40), num_workers=workers)


class Buckets(Sampler[list[int]]):
    """A custom batch_sampler: batches of 3, 5 and 7 indices in turn, shuffled from the global RNG."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size).tolist()
        sizes = [3, 5, 7]
        i = k = 0
        while i < self.size:
            yield order[i : i + sizes[k % 3]]
            i += sizes[k % 3]
            k += 1

    def __len__(self) -> int:
        return 9


def custom_batches(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    return cls(SleepDataset(SIZE, 0.0), batch_sampler=Buckets(SIZE), num_workers=workers)


class Forever(Sampler[int]):
    """An infinite sampler (step-based training): random indices forever."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield int(torch.randint(SIZE, ()).item())


def infinite(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    return cls(SleepDataset(SIZE, 0.0), batch_size=4, sampler=Forever(), num_workers=workers)


def unbatched(cls: type, workers: int = 0) -> torch.utils.data.DataLoader:
    return cls(SleepDataset(SIZE, 0.0), batch_size=None, shuffle=True, num_workers=workers)


def persistent(cls: type, workers: int = 2) -> torch.utils.data.DataLoader:
    return shuffled(cls, workers, persistent_workers=True, prefetch_factor=3)


CASES = {
    "RandomSampler from the global RNG": (shuffled, {3: 2, 9: 1, 14: 0, 20: 2}),
    "RandomSampler with its own generator": (with_generator, {2: 1, 7: 3}),
    "DistributedSampler": (distributed, {4: 2, 17: 1}),
    "WeightedRandomSampler": (weighted, {1: 2, 6: 0}),
    "a custom batch_sampler": (custom_batches, {2: 2, 5: 1, 12: 2}),
    "batch_size=None": (unbatched, {10: 2, 30: 1}),
    "persistent workers, prefetch 3": (persistent, {5: 1, 8: 3, 16: 0}),
}


def counts_in_turn(workers: list[int]) -> list[int]:
    """The worker counts that delivered, in turn (each run of equal counts once)."""
    return [count for count, _ in itertools.groupby(workers)]


@pytest.mark.parametrize("overlap", [False, True], ids=["stop-start", "overlapped"])
@pytest.mark.parametrize("case", list(CASES))
def test_switches_deliver_exactly_the_stock_batches_and_draw_no_random_numbers(case: str, overlap: bool) -> None:
    make, switches = CASES[case]
    stock, stock_rng, _ = run(lambda: make(torch.utils.data.DataLoader), {})
    ours, our_rng, workers = run(lambda: make(DataLoader), switches, overlap=overlap)
    assert ours == stock  # every batch, in order: none lost, none repeated
    assert torch.equal(our_rng, stock_rng)  # the script's later randomness is untouched
    if overlap:  # each switch hands over once the old workers have delivered a few more batches
        assert counts_in_turn(workers) == counts_in_turn([workers[0], *switches.values()]), workers
    else:  # the switches happened where asked: the batch after each one came from the new count
        for after, count in switches.items():
            assert workers[after] == count, (after, workers)
    assert no_children_left()


@pytest.mark.parametrize("overlap", [False, True], ids=["stop-start", "overlapped"])
def test_an_infinite_sampler_keeps_its_stream_across_switches(overlap: bool) -> None:
    stock, _, _ = run(lambda: infinite(torch.utils.data.DataLoader), {}, epochs=1, limit=30)
    ours, _, workers = run(lambda: infinite(DataLoader), {5: 2, 15: 1}, epochs=1, limit=30, overlap=overlap)
    # The same stream. (This sampler draws from the global RNG as it is pulled, and workers pull
    # ahead by prefetch_factor x num_workers: there the script's later draws depend on the worker
    # count in stock torch too, so they are not compared.)
    assert ours == stock
    if overlap:  # started at 0 workers nothing was measured: over sub-ms batches the overlap outlasts 30 of them
        assert counts_in_turn(workers)[0] == 0
    else:
        assert workers[5] == 2 and workers[15] == 1
    assert no_children_left()


def test_it_is_a_torch_dataloader_with_the_same_length_and_a_name() -> None:
    loader = DataLoader(SleepDataset(SIZE, 0.0), batch_size=4)
    line = inspect.currentframe().f_lineno - 1
    assert isinstance(loader, torch.utils.data.DataLoader) and loadertop.DataLoader is DataLoader
    assert len(loader) == len(torch.utils.data.DataLoader(SleepDataset(SIZE, 0.0), batch_size=4)) == 13
    assert loader.name == f"test_dropin_loader.py:{line}"  # the line that created it
    assert DataLoader(SleepDataset(4, 0.0), name="val").name == "val"
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        loader.switch(-1)


def test_a_switch_between_epochs_applies_at_the_next_iter() -> None:
    loader = DataLoader(SleepDataset(8, 0.0), batch_size=4, num_workers=0)
    list(loader)
    loader.switch(2)
    assert loader.num_workers == 2 and loader.status().pending is None
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    list(loader)
    assert [r.num_workers for r in records] == [2, 2] and [r.batch for r in records] == [1, 2]
    assert records[0].step_s is None and records[1].step_s is not None and records[1].load_s >= 0
    assert no_children_left()


class Stream(IterableDataset):
    """An IterableDataset: 0..n-1, split between workers by worker id."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        info = torch.utils.data.get_worker_info()
        start, step = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter(range(start, self.n, step))


def test_an_iterable_dataset_changes_workers_at_the_next_epoch_and_says_so() -> None:
    loader = DataLoader(Stream(12), batch_size=3, num_workers=0)
    first: list[list[int]] = []
    for batch in loader:
        first.append(batch.tolist())
        if len(first) == 1:
            loader.switch(2)
            assert loader.status().deferred and loader.status().pending == 2
    assert first == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]  # the stream was not cut mid-epoch
    second = [batch.tolist() for batch in loader]
    assert loader.num_workers == 2 and not loader.status().deferred
    assert sorted(i for batch in second for i in batch) == list(range(12))
    assert no_children_left()


@pytest.mark.parametrize("overlap", [False, True], ids=["stop-start", "overlapped"])
def test_python_and_global_rng_untouched_by_a_switch_with_workers(overlap: bool) -> None:
    random.seed(5)
    torch.manual_seed(5)
    loader = DataLoader(SleepDataset(40, 0.0), batch_size=4, shuffle=True, num_workers=1)
    it = iter(loader)
    next(it)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    loader.switch(3, overlap=overlap)
    next(it)
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    # Overlapped, the old worker still delivers while the three new ones start: the loader has four.
    wait_for(lambda it=it: len(it.worker_pids()) == (4 if overlap else 3))
    assert len(loader.status().starting_pids) == (3 if overlap else 0)
    del it
    loader.switch(0)
    assert no_children_left()


def test_load_step_and_switch_time_add_up_to_the_time_between_batches_exactly() -> None:
    # The loop's step, the switch (old workers down, new ones up) and the wait in next() are three
    # separate figures: between two batches handed to the loop, they add up to the whole gap.
    loader = DataLoader(SleepDataset(64, sleep_s=0.0005), batch_size=4, num_workers=0)
    loader.overlap = False  # tests/unit/probe/test_overlap.py times the overlapped switch
    seen: list[LoaderBatch] = []
    loader.add_observer(seen.append)
    for i, _batch in enumerate(loader):
        if i == 3:
            loader.switch(2)
    assert [b.num_workers for b in seen] == [0] * 4 + [2] * 12
    for before, after in itertools.pairwise(seen):
        gap = after.time - before.time
        assert after.step_s is not None
        assert abs(after.step_s + after.switch_s + after.load_s - gap) < 1e-5
    switched = seen[4]
    assert switched.switch_s > 0 and switched.step_s < switched.switch_s  # the workers' start is not the loop's step
    assert all(b.switch_s == 0 for i, b in enumerate(seen) if i != 4)
    assert no_children_left()


def test_a_batch_size_change_mid_epoch_keeps_the_sample_order_and_regroups_the_rest() -> None:
    stock, stock_rng, _ = run(lambda: shuffled(torch.utils.data.DataLoader), {})
    torch.manual_seed(1234)
    loader = shuffled(DataLoader, 2)
    seen: list[list[int]] = []
    for epoch in range(2):
        for batch in loader:
            seen.append(batch[0].reshape(-1).long().tolist())
            if epoch == 0 and len(seen) == 3:  # stopped and started: the old workers' batches are fetched again
                loader.reconfigure(batch_size=7, num_workers=1, overlap=False)
    rng = torch.rand(3)
    flat = [i for b in seen for i in b]
    assert flat == [i for b in stock for i in b]  # every sample once per epoch, in the stock order
    assert [len(b) for b in seen] == [4, 4, 4, 7, 7, 7, 7, 7, 3] + [7] * 7 + [1]  # 38 left: 5 x 7 + 3
    assert len(loader) == 8 and loader.batch_size == 7
    assert torch.equal(rng, stock_rng)
    assert no_children_left()


def test_every_setting_can_change_at_a_batch_boundary() -> None:
    loader = shuffled(DataLoader, 1)
    loader.overlap = False  # each change applies at the very next batch
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    seen = []
    settings = []
    for batch in loader:
        seen.append(batch[0])
        if len(seen) == 2:
            loader.reconfigure(
                num_workers=2,
                persistent_workers=True,
                prefetch_factor=3,
                timeout=30.0,
                multiprocessing_context="fork",
                pin_memory=False,
            )
        if len(seen) in (3, 6, 9):
            settings.append(
                (loader.timeout, loader.multiprocessing_context, loader.persistent_workers, loader.prefetch_factor)
            )
        if len(seen) == 5:
            loader.reconfigure(num_workers=0)
        if len(seen) == 8:
            loader.reconfigure(num_workers=1)
    assert [r.num_workers for r in records] == [1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1, 1, 1]
    fork = torch.multiprocessing.get_context("fork")
    # torch refuses a timeout and a start method at 0 workers: they wait there for the next workers.
    assert settings == [(30.0, fork, True, 3), (0, None, True, 3), (30.0, fork, True, 3)]
    assert sorted(int(i) for b in seen for i in b.reshape(-1)) == list(range(SIZE))
    assert loader.status().switches == 3
    del loader
    assert no_children_left()


def test_a_request_for_the_running_settings_changes_nothing() -> None:
    loader = shuffled(DataLoader, 0)
    it = iter(loader)
    next(it)
    loader.reconfigure(num_workers=0, batch_size=4)
    next(it)
    assert loader.status().switches == 0


def test_settings_that_cannot_change_are_refused_in_words() -> None:
    loader = custom_batches(DataLoader)
    with pytest.raises(ValueError, match="batch_sampler makes its batches: its batch size cannot change"):
        loader.reconfigure(batch_size=8)
    with pytest.raises(ValueError, match="cannot reconfigure 'shuffle'"):
        loader.reconfigure(shuffle=False)
    with pytest.raises(ValueError, match="prefetch_factor must be an integer >= 1"):
        loader.reconfigure(prefetch_factor=0)
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        loader.reconfigure(timeout=-1)
