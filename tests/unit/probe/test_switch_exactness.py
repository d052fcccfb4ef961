"""After any switch, a script's randomness is what the loader it configured would have made (issue 21, part 4).

A script-like loop (shuffled training data, a model with dropout, SGD, optionally a validation
loader iterated between epochs) runs 3 epochs with torch's DataLoader as the script configured
it, and with loadertop's switched through a pattern of worker counts: every epoch's sample order,
the validation order, the final weights (bit for bit) and the global RNG's later draws must be
the stock run's. A DataLoader's ``iter()`` draws its workers' base seed from ``generator=`` (else
the global RNG), except a persistent one after its first: a 0-worker iterator made each epoch under
a persistent setting, or workers started anew, must not draw where the configured loader would not.

The matrix: each pattern of counts (the first is the configured one) x persistent or not x
``generator=`` or the global RNG x a validation loader or none x where the switches fall (mid-epoch,
at an epoch's last batch, between epochs) x overlapped or stopped-and-started. A persistent loader
cannot be configured with 0 workers (torch refuses it): patterns from 0 are persistent only as
``num_workers="auto"`` (which starts at 0 workers, its held settings in force once it has workers;
its switches here are driven by the test, not a tuner). Workers are forked (Linux's default).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from loadertop.core.probe.loader import CreationHook, DataLoader
from tests.helpers import no_children_left

SIZE, BATCH, EPOCHS = 40, 4, 3  # 10 training batches an epoch
VALIDATION_SIZE = 16


class Numbers(Dataset):
    """Sample i: ([i, i/SIZE, 1 - i/SIZE], i % 3): deterministic, so only the loop's RNG use can differ."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index), index / SIZE, 1.0 - index / SIZE]), index % 3


@dataclass(frozen=True)
class Script:
    """How the script configured its training loader."""

    workers: int | str  # "auto": loadertop's; its stock reference has the workers its settings need
    persistent: bool
    generator: bool
    validation: bool

    def reference_workers(self) -> int:
        """The worker count of a stock loader that draws as this one (any count >= 1 draws alike)."""
        if self.workers == "auto":
            return 1 if self.persistent else 0
        return int(self.workers)


@dataclass
class Seen:
    train: list[list[int]]  # each epoch's sample order
    validation: list[list[int]]
    weights: list[torch.Tensor]
    later_draws: torch.Tensor
    delivered_by: list[int]  # the worker count that delivered each training batch (loadertop's only)


def make_loader(cls: type, script: Script, workers: int | str) -> torch.utils.data.DataLoader:
    extra = {"persistent_workers": True} if script.persistent else {}
    if script.generator:
        extra["generator"] = torch.Generator().manual_seed(7)
    return cls(Numbers(SIZE), batch_size=BATCH, shuffle=True, num_workers=workers, **extra)


def train(cls: type, script: Script, switches: dict[int, int], where: str, overlap: bool) -> Seen:
    """The script's loop with ``cls``'s loaders; ``switches`` maps a step (batches so far) to a count.

    ``where="between"``: each switch is asked after its step's epoch has ended (before validation).
    """
    torch.manual_seed(0)
    loader = make_loader(cls, script, script.workers if cls is DataLoader else script.reference_workers())
    validation = cls(Numbers(VALIDATION_SIZE), batch_size=8) if script.validation else None
    delivered_by: list[int] = []
    if isinstance(loader, DataLoader):
        loader.overlap = overlap
        loader.add_observer(lambda batch: delivered_by.append(batch.num_workers))
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = Seen([], [], [], torch.empty(0), delivered_by)
    step = 0
    for _ in range(EPOCHS):
        model.train()
        order: list[int] = []
        for x, y in loader:
            order += x[:, 0].long().tolist()
            loss = nn.functional.cross_entropy(model(x[:, 1:]), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if where != "between" and step in switches:
                loader.switch(switches[step])
        seen.train.append(order)
        if where == "between" and step in switches:
            loader.switch(switches[step])
        if validation is not None:
            model.eval()
            with torch.no_grad():
                for x, _ in validation:
                    seen.validation.append(x[:, 0].long().tolist())
    seen.weights = [p.detach().clone() for p in model.parameters()]
    seen.later_draws = torch.rand(3)
    return seen


@functools.cache
def stock(script: Script) -> Seen:
    return train(torch.utils.data.DataLoader, script, {}, "mid", True)


PATTERNS = {"0to2": (0, 2), "1to0": (1, 0), "1to2": (1, 2), "0to1to0": (0, 1, 0), "2to0to1": (2, 0, 1)}
# Where each pattern's switches fall (steps: batches so far), and whether they overlap: mid-epoch both ways;
# at an epoch's last batch (asked in the loop) or between epochs (after it) nothing is left to overlap.
TIMINGS = {
    "mid-overlap": ((4, 15), "mid", True),
    "mid-stopstart": ((4, 15), "mid", False),
    "lastbatch": ((10, 20), "last batch", True),
    "between": ((10, 20), "between", True),
}


def cases() -> Iterator[object]:
    """Every pattern x (persistent, "auto") x generator x validation; the timings in turn (a Latin square:
    each configuration meets every timing and every timing every generator/validation pair)."""
    configurations = [
        (name, counts, auto, persistent)
        for name, counts in PATTERNS.items()
        for auto, persistent in itertools.product((False, True), (False, True))
        # "auto" starts at 0; a persistent loader configured with 0 workers does not exist
        if not (auto and counts[0] != 0) and not (not auto and persistent and counts[0] == 0)
    ]
    for c, (name, counts, auto, persistent) in enumerate(configurations):
        for g, (generator, validation) in enumerate(itertools.product((False, True), (False, True))):
            timing = list(TIMINGS)[(c + g) % len(TIMINGS)]
            script = Script("auto" if auto else counts[0], persistent, generator, validation)
            label = "-".join(
                (
                    name,
                    "auto" if auto else "count",
                    "persistent" if persistent else "fresh",
                    "generator" if generator else "global",
                    "val" if validation else "noval",
                    timing,
                )
            )
            yield pytest.param(script, counts, timing, id=label)


@pytest.fixture
def no_tuner(monkeypatch: pytest.MonkeyPatch) -> None:
    """A creation hook that does nothing: an "auto" loader is then left to the test's switches."""
    monkeypatch.setattr(DataLoader, "creation_hook", CreationHook())


@pytest.mark.parametrize(("script", "counts", "timing"), list(cases()))
def test_any_switch_leaves_the_scripts_batches_weights_and_randomness_as_the_configured_loader_makes_them(
    no_tuner: None, script: Script, counts: tuple[int, ...], timing: str
) -> None:
    steps, where, overlap = TIMINGS[timing]
    switches = dict(zip(steps, counts[1:], strict=False))  # a pattern of two counts uses only the first step
    expected = stock(script)
    seen = train(DataLoader, script, switches, where, overlap)
    for epoch in range(EPOCHS):
        assert seen.train[epoch] == expected.train[epoch], f"epoch {epoch + 1}'s sample order"
    assert seen.validation == expected.validation
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(seen.weights, expected.weights, strict=True))
    assert torch.equal(seen.later_draws, expected.later_draws)
    # The switches did happen: the counts that delivered, in turn, are the pattern's.
    assert [count for count, _ in itertools.groupby(seen.delivered_by)] == list(counts)
    assert no_children_left()
