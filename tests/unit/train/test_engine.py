"""The trainer with real DataLoader workers: timing, hot-restart continuity, commands, faults."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from loadertop import LoaderConfig, Trainer, TrainerState
from loadertop.core.protocol.records import BatchRecord
from loadertop.core.train.calibrated import batch_cost_s
from loadertop.core.train.resumable_sampler import epoch_permutation
from tests import workloads
from tests.helpers import no_children_left


def run_to_end(trainer: Trainer, timeout: float = 120.0) -> None:
    trainer.start()
    assert trainer.join(timeout), "the trainer did not finish in time"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_load_time_matches_a_known_sleep_per_sample(num_workers: int) -> None:
    sleep_s, batch = 0.002, 10
    batch_ms = batch_cost_s(sleep_s * 1000, batch) * 1000
    trainer = Trainer(
        workloads.make(size=600, sleep_s=sleep_s),
        LoaderConfig(num_workers=num_workers, batch_size=batch, persistent_workers=num_workers > 0),
        epochs=1,
        device="cpu",
    )
    run_to_end(trainer)
    assert trainer.state is TrainerState.FINISHED
    [summary] = trainer.store.summaries()
    assert summary.batches + summary.warmup_batches == 60
    assert summary.warmup_batches == max(1, num_workers)
    # Never less than the known cost allows: k workers each make a batch in at least batch_ms,
    # so the step waits at least for the rest of it. A busy machine only makes loading slower,
    # so this bound holds on any machine (benchmarks/accuracy.py measures the 5% target).
    least_ms = batch_ms if num_workers == 0 else batch_ms / num_workers - summary.compute_ms_mean
    assert summary.load_ms_mean > 0.8 * least_ms, f"load {summary.load_ms_mean:.2f} ms, at least {least_ms:.2f} ms"
    # Never more than was spent: a batch's load and step account for the wall time since the
    # previous batch's step ended, up to the loop's bookkeeping (no double counting).
    records = [r for r in trainer.store.snapshot().records if not r.warmup]
    gaps_s = sum(after.elapsed_s - before.elapsed_s for before, after in itertools.pairwise(records))
    spent_s = sum(r.load_s + r.compute_s for r in records[1:])
    assert 0.9 * gaps_s < spent_s <= gaps_s, f"load + step {spent_s:.4f} s of {gaps_s:.4f} s between batches"
    assert no_children_left()


@pytest.mark.parametrize("overlap", [False, True], ids=["stop-start", "overlapped"])
def test_hot_restarts_continue_the_epoch_without_skipping_or_repeating(overlap: bool) -> None:
    size, batch, seed = 100, 8, 3
    workload = workloads.make(size=size, sleep_s=0.0005)
    model = workload.model
    switch_at = {3: 2, 7: 1, 16: 0, 20: 2}  # step -> workers: mid-epoch 1 and mid-epoch 2
    trainer: Trainer

    def on_record(record: BatchRecord) -> None:
        if record.step in switch_at:
            trainer.restart(trainer.config.with_workers(switch_at[record.step]))

    trainer = Trainer(
        workload,
        LoaderConfig(num_workers=0, batch_size=batch),
        epochs=2,
        device="cpu",
        seed=seed,
        on_record=on_record,
        overlap=overlap,
    )
    run_to_end(trainer)
    assert trainer.state is TrainerState.FINISHED, trainer.error

    fed = [index for batch_indices in model.seen for index in batch_indices]
    assert len(fed) == 2 * size
    for epoch in range(2):
        got = fed[epoch * size : (epoch + 1) * size]
        assert got == epoch_permutation(size, seed, epoch), f"epoch {epoch + 1} order broken"
    assert sorted(fed[:size]) == list(range(size))

    restarts = [e for e in trainer.store.starts() if e.reason == "restart"]
    records = trainer.store.snapshot().records
    # Every batch is labelled with the workers that delivered it: the counts run in the order asked.
    ran = [r.num_workers for r in records]
    assert [n for i, n in enumerate(ran) if i == 0 or ran[i - 1] != n] == [0] + [e.config.num_workers for e in restarts]
    assert [r.step for r in records if r.num_workers != (ran[r.step - 2] if r.step > 1 else 0)] == [
        e.after_step + 1 for e in restarts
    ]
    if not overlap:  # each restart applies at the very next batch
        assert [(e.after_step, e.config.num_workers) for e in restarts] == [(3, 2), (7, 1), (16, 0), (20, 2)]
        # Epoch 1 has 13 batches (12 of 8, one of 4): steps 16 and 20 are batches 3 and 7 of epoch 2.
        assert [(e.epoch, e.position) for e in restarts] == [(1, 24), (1, 56), (2, 24), (2, 56)]
    else:  # the old workers deliver what they were given first: each hands over at or after its request
        assert all(e.after_step >= asked for e, asked in zip(restarts, [3, 7, 16, 20], strict=False))

    # The model and optimizer carried on: no re-initialisation at any restart.
    weights = model.weights_before_forward
    assert len(weights) == trainer.status().step == 26
    for before, after in itertools.pairwise(weights):
        assert not torch.equal(before, after), "a step left the weights unchanged"
    initial = weights[0]
    assert all(not torch.equal(initial, w) for w in weights[1:]), "weights went back to their initial values"
    optimizer = trainer._optimizer
    assert optimizer is not None
    state = optimizer.state[model.linear.weight]
    assert int(state["step"]) == 26  # one optimizer step per batch across every loader
    assert no_children_left()


def test_restarts_that_change_every_setting_keep_the_epoch_order_in_one_loader() -> None:
    # The built-in trainer is a client of the instrumented loader: a restart reconfigures it at
    # the next batch (batch size, persistence, prefetch, start method, timeout too), it is not rebuilt.
    size, seed = 90, 5
    workload = workloads.make(size=size, sleep_s=0.0005)
    configs = {
        2: LoaderConfig(num_workers=2, batch_size=6, persistent_workers=True, prefetch_factor=3),
        5: LoaderConfig(num_workers=1, batch_size=5, start_method="fork", timeout_s=20.0),
        9: LoaderConfig(num_workers=0, batch_size=9),
        14: LoaderConfig(num_workers=2, batch_size=4, persistent_workers=True),
    }
    built: list[object] = []
    trainer: Trainer

    def on_record(record: BatchRecord) -> None:
        if record.step in configs:
            trainer.restart(configs[record.step])

    trainer = Trainer(
        workload,
        LoaderConfig(num_workers=0, batch_size=8),
        epochs=2,
        device="cpu",
        seed=seed,
        on_record=on_record,
        overlap=False,
    )  # exact positions: each restart at the very next batch
    make = trainer._make_loader
    trainer._make_loader = lambda config: built.append(config) or make(config)  # type: ignore[method-assign]
    run_to_end(trainer)
    assert trainer.state is TrainerState.FINISHED, trainer.error
    assert len(built) == 1  # one loader for the whole run
    fed = [index for batch_indices in workload.model.seen for index in batch_indices]
    assert fed == epoch_permutation(size, seed, 0) + epoch_permutation(size, seed, 1)
    records = trainer.store.snapshot().records
    # Steps 1-2 at batch 8, 3-5 at 6, 6-9 at 5 (54 samples), then 9 per batch: 4 to the epoch's end, 1 in the next.
    assert [r.batch_size for r in records[:16]] == [8, 8, 6, 6, 6, 5, 5, 5, 5, 9, 9, 9, 9, 9, 4, 4]
    assert [r.samples for r in records[:16]] == [8, 8, 6, 6, 6, 5, 5, 5, 5, 9, 9, 9, 9, 9, 4, 4]
    assert [r.epoch for r in records[12:14]] == [1, 2]
    assert [(e.after_step, e.config.batch_size) for e in trainer.store.starts() if e.reason == "restart"] == [
        (2, 6),
        (5, 5),
        (9, 9),
        (14, 4),
    ]
    assert no_children_left()


def test_a_restart_at_the_very_end_of_an_epoch_still_counts_its_warm_up_and_start_up() -> None:
    # Asked with the epoch's last batch, the new loader has nothing left of it: its first
    # batches come from the next epoch and are still its warm-up, its start a restart.
    def on_record(record: BatchRecord) -> None:
        if record.step == 5:
            trainer.restart(trainer.config.with_workers(2))

    trainer = Trainer(
        workloads.make(size=20), LoaderConfig(num_workers=0, batch_size=4), epochs=3, device="cpu", on_record=on_record
    )
    run_to_end(trainer)
    records = trainer.store.snapshot().records
    assert [(r.num_workers, r.epoch, r.batch_in_epoch, r.warmup) for r in records[4:8]] == [
        (0, 1, 5, False),
        (2, 2, 1, True),
        (2, 2, 2, True),
        (2, 2, 3, False),
    ]
    assert [(e.reason, e.config.num_workers, e.epoch) for e in trainer.store.starts()][:2] == [
        ("start", 0, 1),
        ("restart", 2, 2),
    ]
    assert no_children_left()


def test_last_restart_request_wins_and_pause_resume_stop() -> None:
    trainer = Trainer(
        workloads.make(size=400, sleep_s=0.002), LoaderConfig(num_workers=0, batch_size=4), epochs=50, device="cpu"
    )
    trainer.start()
    deadline = time.monotonic() + 30
    while trainer.status().step < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    for workers in (1, 2, 3, 1):  # faster than any restart can happen
        trainer.restart(trainer.config.with_workers(workers))
    while trainer.config.num_workers != 1 or trainer.state is not TrainerState.RUNNING:
        assert time.monotonic() < deadline, trainer.status()
        time.sleep(0.01)
    assert [e.config.num_workers for e in trainer.store.starts() if e.reason == "restart"] == [1]
    assert len(trainer.worker_pids()) == 1

    trainer.pause()
    while trainer.state is not TrainerState.PAUSED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    step = trainer.status().step
    time.sleep(0.3)
    assert trainer.status().step == step, "batches ran while paused"
    trainer.resume()
    while trainer.status().step <= step:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert trainer.close(15)
    assert trainer.state is TrainerState.STOPPED
    assert no_children_left()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataset_error_names_the_sample_and_keeps_the_history(num_workers: int) -> None:
    size = 64
    trainer = Trainer(
        workloads.make(size=size, fail_at=29),
        LoaderConfig(num_workers=num_workers, batch_size=4),
        epochs=1,
        device="cpu",
        seed=1,
    )
    run_to_end(trainer)
    assert trainer.state is TrainerState.ERROR
    error = trainer.error
    assert error is not None
    assert error.kind == "dataset"
    assert error.sample_index == 29
    assert error.message == "ValueError: broken sample 29"
    # Every batch before the failing one was recorded.
    position = epoch_permutation(size, 1, 0).index(29)
    assert trainer.store.snapshot().total_batches == position // 4
    assert no_children_left()


def test_a_step_error_is_reported_as_such() -> None:
    workload = workloads.make(size=16)
    workload.loss_fn = lambda output, target: (_ for _ in ()).throw(ArithmeticError("loss exploded"))
    trainer = Trainer(workload, LoaderConfig(batch_size=4), epochs=1, device="cpu")
    run_to_end(trainer)
    assert trainer.error is not None and trainer.error.kind == "step"
    assert trainer.error.message == "ArithmeticError: loss exploded"


def test_start_up_is_kept_out_of_the_steady_state() -> None:
    trainer = Trainer(
        workloads.make(size=80, sleep_s=0.001), LoaderConfig(num_workers=2, batch_size=4), epochs=2, device="cpu"
    )
    run_to_end(trainer)
    records = trainer.store.snapshot().records
    assert [r.warmup for r in records[:3]] == [True, True, False]
    assert not any(r.warmup for r in records[20:])  # the epoch boundary is steady state
    starts = trainer.store.starts()
    assert [e.reason for e in starts] == ["start", "epoch"]
    [summary] = trainer.store.summaries()
    assert summary.starts == 1 and summary.startup_ms == pytest.approx(starts[0].startup_s * 1000)
    assert summary.batches == 38 and summary.warmup_batches == 2


def test_restart_after_the_run_finished_trains_as_many_epochs_again_with_the_model_kept() -> None:
    workload = workloads.make(size=16)
    trainer = Trainer(workload, LoaderConfig(batch_size=4), epochs=2, device="cpu", seed=3)
    run_to_end(trainer)
    assert trainer.state is TrainerState.FINISHED
    weight = workload.model.linear.weight.detach().clone()
    trainer.restart(LoaderConfig(num_workers=1, batch_size=4))
    assert trainer.join(60)
    assert trainer.state is TrainerState.FINISHED
    records = trainer.store.snapshot().records
    assert [r.step for r in records] == list(range(1, 17))  # steps go on, nothing repeated
    assert [r.epoch for r in records[8:]] == [3] * 4 + [4] * 4
    assert {r.num_workers for r in records[8:]} == {1}
    # The second run began from the weights the first one ended with.
    assert torch.equal(workload.model.weights_before_forward[8], weight)
    assert [e.reason for e in trainer.store.starts()] == ["start", "epoch", "restart", "epoch"]
    assert no_children_left()


def test_restart_after_an_error_retries_the_batch_that_failed() -> None:
    size = 64
    workload = workloads.make(size=size, fail_at=29)
    trainer = Trainer(workload, LoaderConfig(batch_size=4), epochs=1, device="cpu", seed=1)
    run_to_end(trainer)
    assert trainer.state is TrainerState.ERROR
    done = trainer.store.snapshot().total_batches
    workload.dataset.fail_at = None  # the user fixed the data
    trainer.restart(LoaderConfig(num_workers=2, batch_size=4))
    assert trainer.join(60)
    assert trainer.state is TrainerState.FINISHED and trainer.error is None
    seen = [i for batch in workload.model.seen for i in batch]
    assert sorted(seen) == list(range(size))  # the failed batch was trained once, nothing skipped
    assert trainer.store.snapshot().total_batches == size // 4 > done


def test_a_worker_slower_than_the_timeout_names_the_configuration_instead_of_freezing() -> None:
    workload = workloads.make(size=64)
    workload.dataset = workloads.HangDataset(64, hang_at=5, hang_s=8.0)
    config = LoaderConfig(num_workers=1, batch_size=4, timeout_s=1.0)
    trainer = Trainer(workload, config, epochs=1, device="cpu")
    started = time.monotonic()
    run_to_end(trainer, timeout=30)
    assert trainer.state is TrainerState.ERROR
    error = trainer.error
    assert error is not None and error.kind == "timeout"
    assert error.message == (
        "no batch within the 1 s timeout (1 worker, batch 4, timeout 1 s): a worker hangs "
        "or loads far slower than that (--timeout sets the limit)"
    )
    assert time.monotonic() - started < 15
    assert no_children_left(10)


def test_spawn_workers_train_end_to_end_and_a_step_fn_handles_dict_batches() -> None:
    workload = workloads.dict_batches()
    trainer = Trainer(workload, LoaderConfig(num_workers=2, batch_size=8, start_method="spawn"), epochs=2, device="cpu")
    run_to_end(trainer, timeout=120)
    assert trainer.state is TrainerState.FINISHED, trainer.error
    records = trainer.store.snapshot().records
    assert len(records) == 2 * 8 and all(r.samples == 8 for r in records)
    assert all(r.accuracy is not None and 0 <= r.accuracy <= 1 for r in records)
    assert no_children_left()


def test_a_dataset_that_cannot_be_pickled_for_spawn_is_refused_in_words() -> None:
    trainer = Trainer(
        workloads.unpicklable(), LoaderConfig(num_workers=1, batch_size=4, start_method="spawn"), epochs=1, device="cpu"
    )
    run_to_end(trainer)
    assert trainer.error is not None and trainer.error.kind == "setup"
    assert trainer.error.message.startswith(
        "the dataset cannot be sent to 'spawn' workers, which need a pickled copy: TypeError: cannot pickle"
    )
