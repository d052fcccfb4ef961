"""The overlapped switch: new workers start while the old ones deliver; the handover loses and repeats nothing.

Most tests fix R (the batches the old workers deliver beyond those in flight) so that where the
handover falls is known batch by batch: a generation of N workers with prefetch factor P has
N x P batches in flight, one with none has none. benchmarks/switch_stall.py measures the stall.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable

import psutil
import pytest
import torch
from torch.utils.data import DistributedSampler

from loadertop.core.probe import loader as loader_module
from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader import DataLoader, LoaderBatch, overlap_batches
from loadertop.core.train.calibrated import SleepDataset
from tests.helpers import no_children_left, wait_for

SIZE = 100  # 25 batches of 4 an epoch


@pytest.fixture
def fixed_overlap(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Fix R for every switch to more than 0 workers (to 0 it stays 0: nothing to start)."""

    def fix(batches: int) -> None:
        monkeypatch.setattr(
            DataLoader,
            "_overlap_batches",
            lambda self, num_workers, in_flight, interval_s: batches if num_workers else 0,
        )

    return fix


def indices(batch: object) -> list[int]:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return x.reshape(-1).long().tolist()


def run(
    make: Callable[[type], torch.utils.data.DataLoader],
    requests: dict[int, dict],
    *,
    epochs: int = 2,
    on_error: Callable[[Exception], None] | None = None,
) -> tuple[list[list[int]], torch.Tensor, list[LoaderBatch]]:
    """Iterate, calling ``reconfigure(**requests[n])`` after the n-th batch (counted over the epochs).

    Returns each batch's indices (None for a batch that raised, when ``on_error`` is given), three
    draws of torch's global RNG afterwards, and the loader's record of each batch.
    """
    torch.manual_seed(1234)
    loader = make(DataLoader if requests is not None else torch.utils.data.DataLoader)
    records: list[LoaderBatch] = []
    if isinstance(loader, DataLoader):
        loader.add_observer(records.append)
    seen: list[list[int] | None] = []
    for epoch in range(epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except ValueError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                seen.append(None)
            else:
                seen.append(indices(batch))
            if requests and len(seen) in requests:
                loader.reconfigure(**requests[len(seen)])
    del it
    return seen, torch.rand(3), records


def stock(make: Callable[[type], torch.utils.data.DataLoader], **kwargs) -> tuple[list[list[int]], torch.Tensor]:
    seen, rng, _ = run(make, None, **kwargs)  # type: ignore[arg-type]
    return seen, rng


def shuffled(workers: int, **extra) -> Callable[[type], torch.utils.data.DataLoader]:
    return lambda cls: cls(
        SleepDataset(SIZE, 0.0),
        batch_size=4,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(7),
        **extra,
    )


def test_overlapped_switches_0_2_1_0_deliver_the_stock_batches_and_hand_over_where_counted(fixed_overlap) -> None:
    fixed_overlap(2)
    make = shuffled(0)
    expected, expected_rng = stock(make)
    seen, rng, records = run(make, {2: {"num_workers": 2}, 8: {"num_workers": 1}, 16: {"num_workers": 0}})
    assert seen == expected  # every batch, in order: none lost, none repeated
    assert torch.equal(rng, expected_rng)  # no random number drawn from the script's generators
    # After 2: 0 in flight + 2 more from 0 workers (3, 4). After 8: 2 x 2 in flight + 2 (9-14). After 16:
    # the 1 x 2 in flight (17, 18), no more: there is nothing to start for 0 workers.
    assert [r.num_workers for r in records] == [0] * 4 + [2] * 10 + [1] * 4 + [0] * 7 + [0] * 25
    assert [r.generation for r in records] == [0] * 4 + [1] * 10 + [2] * 4 + [3] * 7 + [3] * 25
    assert [(r.epoch, r.batch) for r in records] == [(e, b) for e in (1, 2) for b in range(1, 26)]
    assert no_children_left()


def test_a_batch_size_change_keeps_the_old_size_for_the_old_workers_batches(fixed_overlap) -> None:
    fixed_overlap(2)
    make = shuffled(2)
    expected, expected_rng = stock(make)
    seen, rng, records = run(make, {3: {"batch_size": 7, "num_workers": 1}})

    def flat(batches: list[list[int]]) -> list[int]:
        return [i for b in batches for i in b]

    assert flat(seen) == flat(expected) and torch.equal(rng, expected_rng)
    # 4 in flight + 2 of 4 from the old workers (4-9): 64 samples left, regrouped by 7 (9 x 7 + 1).
    assert [len(b) for b in seen] == [4] * 9 + [7] * 9 + [1] + [7] * 14 + [2]
    assert [r.num_workers for r in records[:10]] == [2] * 9 + [1]
    assert no_children_left()


def test_persistent_workers_hand_over_within_and_across_epochs(fixed_overlap) -> None:
    fixed_overlap(2)
    make = shuffled(2, persistent_workers=True, prefetch_factor=3)
    expected, expected_rng = stock(make)
    requests = {5: {"num_workers": 1}, 12: {"num_workers": 3}, 30: {"num_workers": 0}}
    seen, rng, records = run(make, requests)
    assert seen == expected and torch.equal(rng, expected_rng)
    # After 5: 6 in flight + 2 (6-13). Asked after 12, mid-overlap: waits for the handover (14), then
    # 3 in flight + 2 (15-19). The 3 persistent workers go on into epoch 2; after 30: the 9 in flight (31-39).
    assert [r.num_workers for r in records] == [2] * 13 + [1] * 6 + [3] * 6 + [3] * 14 + [0] * 11
    assert no_children_left()


def test_a_distributed_sampler_keeps_each_ranks_share_in_order(fixed_overlap) -> None:
    fixed_overlap(3)

    def make(cls: type) -> torch.utils.data.DataLoader:
        dataset = SleepDataset(SIZE, 0.0)
        sampler = DistributedSampler(dataset, num_replicas=2, rank=1, seed=3)
        return cls(dataset, batch_size=4, sampler=sampler, num_workers=1)

    expected, expected_rng = stock(make, epochs=3)
    seen, rng, records = run(make, {3: {"num_workers": 2}, 9: {"num_workers": 0}, 16: {"num_workers": 2}}, epochs=3)
    assert seen == expected and torch.equal(rng, expected_rng)
    # 13 batches an epoch. After 3: 2 in flight + 3 (4-8). After 9 the epoch's rest (10-13) is all in flight:
    # stopped and started, fetched again. After 16 (epoch 2's third): 0 in flight + 3 (17-19).
    assert [r.num_workers for r in records[:26]] == [1] * 8 + [2] + [0] * 4 + [0] * 6 + [2] * 7
    assert no_children_left()


@pytest.mark.parametrize(
    ("after", "first_epoch"),
    [
        (20, [2] * 24 + [1]),  # 4 in flight, 1 batch left: the old workers deliver theirs, the new one the last
        (22, [2] * 22 + [1] * 3),  # the rest is all in flight: nothing for an overlap, stop and start as without
        (25, [2] * 25),  # asked with the epoch's last batch: the next epoch starts with the new count
    ],
)
def test_a_switch_in_an_epochs_last_batches(fixed_overlap, after: int, first_epoch: list[int]) -> None:
    fixed_overlap(5)
    make = shuffled(2)
    expected, expected_rng = stock(make)
    seen, rng, records = run(make, {after: {"num_workers": 1}})
    assert seen == expected and torch.equal(rng, expected_rng)
    assert [r.num_workers for r in records] == first_epoch + [1] * 25
    assert no_children_left()


def test_a_dataset_error_from_the_old_workers_during_the_overlap_reaches_the_loop(fixed_overlap) -> None:
    fixed_overlap(3)

    def make(cls: type) -> torch.utils.data.DataLoader:
        return cls(SleepDataset(SIZE, 0.0, fail_at=17), batch_size=4, num_workers=2)  # batch 5: 16-19

    errors: list[str] = []
    expected, _ = stock(make, epochs=1, on_error=lambda exc: None)
    seen, _, records = run(make, {2: {"num_workers": 1}}, epochs=1, on_error=lambda exc: errors.append(str(exc)))
    assert seen == expected and seen[4] is None and len(seen) == 25
    assert len(errors) == 1 and "broken sample 17" in errors[0]
    # The batch that raised counts as delivered: the old workers still deliver 3-9 (4 in flight + 3), no more.
    assert [r.num_workers for r in records] == [2] * 8 + [1] * 16  # 24 records: the failed batch has none
    assert no_children_left()


def test_a_loop_that_dies_of_the_error_mid_overlap_leaves_no_worker_behind(fixed_overlap) -> None:
    fixed_overlap(3)
    loader = DataLoader(SleepDataset(SIZE, 0.0, fail_at=17), batch_size=4, num_workers=2)
    with pytest.raises(ValueError, match="broken sample 17"):
        for i, _batch in enumerate(loader, 1):
            if i == 2:
                loader.switch(1)
                assert loader.status().pending == 1
    # As with torch's own iterator, the exception's traceback holds the iterator in a reference cycle
    # (torch's reraise keeps the exception in its frame) until the garbage collector breaks it.
    gc.collect()
    assert no_children_left()  # both generations' workers, the starting one's too


def test_status_is_truthful_during_the_overlap_and_the_hooks_run_at_the_handover(fixed_overlap) -> None:
    fixed_overlap(3)
    loader = DataLoader(SleepDataset(SIZE, 0.0), batch_size=4, num_workers=1)
    records: list[LoaderBatch] = []
    events: list[tuple[str, int, tuple[int, ...]]] = []
    loader.add_observer(records.append)

    def retiring(_loader: DataLoader, pids: tuple[int, ...]) -> None:
        alive = all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
        events.append(("retire", len(records), pids if alive else ()))

    loader.add_retire_hook(retiring)
    loader.add_boundary_hook(lambda _loader: events.append(("boundary", len(records), ())), at_handover=True)
    it = iter(loader)
    next(it)
    old = loader.status()
    assert (old.num_workers, old.pending, old.switches, len(old.worker_pids), old.starting_pids) == (1, None, 0, 1, ())
    loader.switch(2)
    next(it)  # batch 2: the old worker's; the two new ones are starting (in a thread: the loop does not wait)
    wait_for(lambda: len(loader.status().starting_pids) == 2)
    during = loader.status()
    assert (during.num_workers, during.pending, during.switches) == (1, 2, 0)
    assert during.worker_pids[:1] == old.worker_pids and len(during.starting_pids) == 2
    assert during.worker_pids[1:] == during.starting_pids and it.worker_pids() == during.worker_pids
    for _ in range(4):  # batches 3-6: 2 in flight + 3, delivered by the old worker
        next(it)
        assert loader.status() == during
    next(it)  # batch 7: the handover
    after = loader.status()
    assert (after.num_workers, after.pending, after.switches, after.starting_pids) == (2, None, 1, ())
    assert after.worker_pids == during.starting_pids

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_for(lambda: not any(running(pid) for pid in old.worker_pids))  # shut down and reaped, in a thread
    # The first boundary is the loader's start; the switch retires the old worker (still alive) and then
    # splits the configurations, both in the next() that returns the new workers' first batch.
    assert events == [("boundary", 0, ()), ("retire", 6, old.worker_pids), ("boundary", 6, ())]
    assert [(r.num_workers, r.generation) for r in records] == [(1, 0)] * 6 + [(2, 1)]
    del it
    assert no_children_left()


def test_load_step_and_switch_time_still_add_up_and_the_switch_is_timed_twice(fixed_overlap) -> None:
    fixed_overlap(2)
    loader = DataLoader(SleepDataset(64, sleep_s=0.0005), batch_size=4, num_workers=0)
    seen: list[LoaderBatch] = []
    loader.add_observer(seen.append)
    for i, _batch in enumerate(loader):
        if i == 3:
            loader.switch(2)
    assert [b.num_workers for b in seen] == [0] * 6 + [2] * 10
    for before, after in itertools.pairwise(seen):
        assert after.step_s is not None
        assert abs(after.step_s + after.switch_s + after.load_s - (after.time - before.time)) < 1e-5
    # The request's batch (the new workers start) and the handover's (the old generation is retired).
    assert seen[4].switch_s > 0 and seen[6].switch_s > 0
    assert all(b.switch_s == 0 for i, b in enumerate(seen) if i not in (4, 6))
    assert no_children_left()


def test_a_switch_to_no_workers_hands_over_once_the_fetched_batches_are_delivered() -> None:
    loader = shuffled(2)(DataLoader)
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    for i, _batch in enumerate(loader, 1):
        if i == 3:
            loader.switch(0)
    assert [r.num_workers for r in records] == [2] * 7 + [0] * 18  # 4 in flight (4-7), nothing more to hide
    assert no_children_left()


@pytest.mark.parametrize("keep", [True, False], ids=["iterator kept", "iterator dropped"])
def test_a_loop_left_mid_overlap_hands_over_at_its_next_iter(fixed_overlap, keep: bool) -> None:
    fixed_overlap(4)

    def partial_then_whole(cls: type, switch: bool) -> list[list[int]]:
        torch.manual_seed(1)
        loader = shuffled(1)(cls)
        boundaries: list[int] = []
        seen: list[list[int]] = []
        if switch:
            loader.add_boundary_hook(lambda _loader: boundaries.append(len(seen)), at_handover=True)
        it = iter(loader)
        for _ in range(5):  # asked after 3: 2 in flight + 4 from the old worker; left after 5, mid-overlap
            seen.append(indices(next(it)))
            if switch and len(seen) == 3:
                loader.switch(2)
        if switch:
            assert loader.status().pending == 2 and boundaries == [0]
        if not keep:
            del it  # torch shuts both generations down; the configurations still split at the next iter()
        seen.extend(indices(batch) for batch in loader)
        if switch:
            assert boundaries == [0, 5] and loader.status().num_workers == 2
        return seen

    assert partial_then_whole(DataLoader, True) == partial_then_whole(torch.utils.data.DataLoader, False)
    assert no_children_left()


def test_shutting_an_iterator_down_mid_overlap_ends_both_generations(fixed_overlap) -> None:
    fixed_overlap(4)
    loader = DataLoader(SleepDataset(SIZE, 0.0), batch_size=4, num_workers=1)
    it = iter(loader)
    next(it)
    loader.switch(2)
    next(it)
    wait_for(lambda: len(loader.status().worker_pids) == 3)
    torch_compat.shutdown_workers(it)  # what a trainer does when it stops
    assert no_children_left()


def test_overlap_off_switches_at_the_next_batch() -> None:
    loader = shuffled(2)(DataLoader)
    loader.overlap = False
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    for i, _batch in enumerate(loader, 1):
        if i == 3:
            loader.switch(1)
        if i == 10:
            loader.switch(2, overlap=True)  # the request's own choice wins
    assert [r.num_workers for r in records[:4]] == [2, 2, 2, 1]
    assert records[10].num_workers == 1 and records[-1].num_workers == 2
    assert no_children_left()


def test_r_covers_the_measured_start_up_at_the_measured_batch_interval() -> None:
    assert overlap_batches(1.0, 0.01, 4) == 125 - 4  # 1.25 x the start-up, less what is in flight
    assert overlap_batches(0.05, 0.01, 8) == 0  # the batches in flight outlast the start-up already
    assert overlap_batches(1.0, 0.0, 0) == 4  # no interval measured yet: a few batches
    assert overlap_batches(100.0, 0.001, 0) == loader_module.MAX_OVERLAP_BATCHES


def sleepy_start(worker_id: int) -> None:
    time.sleep(0.2)


def test_the_loader_measures_its_own_workers_start_up() -> None:
    loader = DataLoader(SleepDataset(16, 0.0), batch_size=4, num_workers=1, worker_init_fn=sleepy_start)
    assert loader.expected_startup_s(1) == loader_module.DEFAULT_STARTUP_S  # nothing measured yet
    list(loader)
    assert loader.expected_startup_s(1) >= 0.2  # from iter() to the first batch: the worker slept 0.2 s
    assert loader.expected_startup_s(3) == loader.expected_startup_s(1)  # the nearest count measured
    assert loader.expected_startup_s(0) == 0.0
    assert no_children_left()


def test_a_boundary_hook_written_for_switches_at_the_next_batch_keeps_them_there() -> None:
    # A client that bills every batch after its reconfigure() to the new settings (added its hook the old way).
    loader = shuffled(2)(DataLoader)
    boundaries: list[int] = []
    records: list[LoaderBatch] = []
    loader.add_observer(records.append)
    loader.add_boundary_hook(lambda _loader: boundaries.append(len(records)))
    for i, _batch in enumerate(loader, 1):
        if i == 3:
            loader.reconfigure(num_workers=1, overlap=True)  # even asked for: the hook's contract wins
    assert [r.num_workers for r in records[:4]] == [2, 2, 2, 1] and boundaries == [0, 3]
    assert no_children_left()
