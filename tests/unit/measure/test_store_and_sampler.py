"""The resumable sampler, the metrics store and loader configs, without any training."""

from __future__ import annotations

import math
import threading

import pytest

from loadertop import ConfigError, LoaderConfig, MetricsStore
from loadertop.core.measure.store import percentile
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.core.train.resumable_sampler import ResumableSampler, epoch_permutation


def test_the_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    order = epoch_permutation(50, seed=7, epoch=0)
    assert sorted(order) == list(range(50))
    assert order == epoch_permutation(50, seed=7, epoch=0)
    assert order != epoch_permutation(50, seed=7, epoch=1)
    assert order != epoch_permutation(50, seed=8, epoch=0)


def test_the_sampler_resumes_at_a_position_and_moves_to_the_next_epoch() -> None:
    sampler = ResumableSampler(20, seed=1)
    full = list(sampler)
    sampler.set_position(0, 13)
    assert list(sampler) == full[13:] and len(sampler) == 7
    sampler.set_position(1, 0)
    assert list(sampler) == epoch_permutation(20, 1, 1)
    with pytest.raises(ValueError):
        sampler.set_position(1, 21)


def record(step: int, load: float, compute: float, *, warmup: bool = False, key: str = "w0 b4") -> BatchRecord:
    return BatchRecord(step, 1, step, key, 0, 4, 4, load, compute, 1.0, 0.5, 0.0, 0.0, warmup)


def test_summaries_exclude_warmup_and_compute_means_percentiles_and_throughput() -> None:
    store = MetricsStore()
    config = LoaderConfig(batch_size=4)
    store.add_start(StartEvent("start", config, 0, 1, 0, 0.25, 0.3))
    store.add(record(1, 0.5, 0.5, warmup=True), config)
    for i in range(1, 101):
        store.add(record(i + 1, i / 1000, 0.010), config)
    store.add_start(StartEvent("epoch", config, 101, 2, 0, 9.0, 9.0))  # epoch boundaries: not start-up
    [s] = store.summaries()
    assert s.batches == 100 and s.warmup_batches == 1 and s.samples == 400
    assert s.load_ms_mean == pytest.approx(50.5)
    assert s.load_ms_p95 == pytest.approx(95.05)
    assert s.compute_ms_mean == pytest.approx(10.0)
    assert s.iter_ms_mean == pytest.approx(60.5)
    assert s.samples_per_s == pytest.approx(400 / (sum(i / 1000 for i in range(1, 101)) + 1.0))
    assert s.startup_ms == pytest.approx(250.0) and s.starts == 1
    assert s.load_share == pytest.approx(50.5 / 60.5)


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 95))
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


def test_snapshots_are_consistent_while_another_thread_writes() -> None:
    store = MetricsStore(max_recent=50)
    config = LoaderConfig()
    done = threading.Event()

    def writer() -> None:
        for i in range(5000):
            store.add(record(i + 1, 0.001, 0.001, key=config.key), config)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        snap = store.snapshot()
        assert len(snap.records) <= 50
        if snap.records:
            assert snap.records[-1].step == snap.total_batches  # records and totals from one moment
    thread.join()
    snap = store.snapshot(last=10)
    assert [r.step for r in snap.records] == list(range(4991, 5001))
    assert snap.summaries[0].batches == 5000


def test_config_keys_and_validation() -> None:
    persistent = LoaderConfig(num_workers=2, batch_size=64, persistent_workers=True, prefetch_factor=4)
    assert persistent.key == "w2 b64 persist pf4"
    assert LoaderConfig(num_workers=0, persistent_workers=True).key == "w0 b32"  # no workers, nothing to persist
    assert LoaderConfig(num_workers=1).describe() == "1 worker, batch 32"
    no_workers = LoaderConfig(num_workers=0, prefetch_factor=4, persistent_workers=True)
    kwargs = no_workers.loader_kwargs(pin_memory_allowed=False)
    assert kwargs == {"num_workers": 0, "batch_size": 32, "pin_memory": False}
    with pytest.raises(ConfigError, match="num_workers must be >= 0"):
        LoaderConfig(num_workers=-1).validate()
    with pytest.raises(ConfigError, match="batch size must be >= 1"):
        LoaderConfig(batch_size=0).validate()
    with pytest.raises(ConfigError, match="--prefetch-factor needs --workers"):
        LoaderConfig(prefetch_factor=2).validate_strict()


def test_a_loss_reported_after_its_batch_reaches_that_batchs_record() -> None:
    # The Hugging Face Trainer logs a step's loss after accelerate fetched the next batch.
    store = MetricsStore()
    config = LoaderConfig(batch_size=4)
    for step in range(1, 6):
        store.add(record(step, 0.001, 0.002), config)
    version = store.version
    assert store.set_loss(3, 0.25) and store.version == version + 1
    assert [r.loss for r in store.snapshot().records] == [1.0, 1.0, 0.25, 1.0, 1.0]
    assert not store.set_loss(9, 0.5) and not store.set_loss(1, 0.5, within=2)  # not kept, or too far back
    assert [r.step for r in store.snapshot().records] == [1, 2, 3, 4, 5]
