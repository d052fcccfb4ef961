"""``--switch`` as the launched run reads it: which key a batch matches first, and the switches that name nothing."""

from __future__ import annotations

from loadertop.core.probe.switches import switch_due, unmet_switches
from loadertop.core.protocol.environment import Rank


def rank(number: int, world_size: int = 2) -> Rank:
    return Rank(rank=number, local_rank=number, world_size=world_size, local_world_size=world_size)


def test_a_loaders_named_switch_comes_before_the_training_loaders_by_step_and_a_ranks_own_before_both() -> None:
    switches = {"5": 2, "train.py:9@5": 3, "rank1:5": 4, "val.py:3@5": 1}
    assert switch_due(switches, "train.py:9", 5, training=True, rank=None) == 3
    assert switch_due(switches, "train.py:9", 5, training=True, rank=rank(0)) == 3
    assert switch_due(switches, "train.py:9", 5, training=True, rank=rank(1)) == 4
    assert switch_due(switches, "other.py:1", 5, training=True, rank=None) == 2
    assert switch_due(switches, "val.py:3", 5, training=False, rank=None) == 1
    assert switch_due(switches, "other.py:1", 5, training=False, rank=None) is None  # STEP alone: training only
    assert switch_due(switches, "train.py:9", 6, training=True, rank=rank(1)) is None


def test_switches_that_name_a_rank_or_a_loader_the_run_lacks_are_each_said_in_one_line() -> None:
    switches = {"3": 2, "rank5:3": 2, "rank1:nope.py:1@2": 1, "train.py:9@4": 0, "gone.py:2@4": 1}
    names = {"train.py:9", "val.py:3"}
    assert unmet_switches(switches, names, None) == [
        "--switch rank5:3:2: names rank 5 of a torchrun job, but this script runs as one process (not under torchrun)",
        "--switch rank1:nope.py:1@2:1: names rank 1 of a torchrun job, but this script runs as one process (not "
        "under torchrun)",
        "--switch gone.py:2@4:1: the script created no DataLoader named 'gone.py:2' (its loaders: train.py:9, "
        "val.py:3)",
    ]
    assert unmet_switches(switches, names, rank(0)) == [  # rank 0 says what the job lacks
        "--switch rank5:3:2: the job has no rank 5 (its ranks: 0 to 1)",
        "--switch gone.py:2@4:1: the script created no DataLoader named 'gone.py:2' (its loaders: train.py:9, "
        "val.py:3)",
    ]
    assert unmet_switches(switches, names, rank(1)) == [  # each rank what it lacks of its own
        "--switch rank1:nope.py:1@2:1: the script created no DataLoader named 'nope.py:1' (its loaders: train.py:9, "
        "val.py:3)",
        "--switch gone.py:2@4:1: the script created no DataLoader named 'gone.py:2' (its loaders: train.py:9, "
        "val.py:3)",
    ]
    assert unmet_switches({"3": 2}, set(), None) == []
