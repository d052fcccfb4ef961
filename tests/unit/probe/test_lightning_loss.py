"""Which value the Lightning callback sends as a batch's loss (the e2e tests run the real thing)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from loadertop.integrations.lightning import _loss  # imports no Lightning: the choice is tested without it


def trainer(accumulate: int = 1) -> SimpleNamespace:
    return SimpleNamespace(accumulate_grad_batches=accumulate)


AUTOMATIC, MANUAL = SimpleNamespace(automatic_optimization=True), SimpleNamespace(automatic_optimization=False)


def test_what_training_step_returns_is_the_loss_and_a_logged_loss_stands_in_when_it_returns_nothing() -> None:
    returned, logged = torch.tensor(0.5), torch.tensor(0.75)
    assert _loss({"loss": returned}, {"train_loss": logged}, trainer(), AUTOMATIC) is returned
    assert _loss(returned, {}, trainer(), MANUAL) is returned  # manual optimization hands it on as it is
    assert _loss({}, {"acc": torch.tensor(1.0), "train_loss": logged}, trainer(), MANUAL) is logged
    assert _loss({"loss": None}, {"val/loss": torch.tensor(2.0), "loss": logged}, trainer(), AUTOMATIC) is logged
    assert _loss({"loss": None}, {"loss_a": torch.tensor(2.0), "train_loss": logged}, trainer(), AUTOMATIC) is logged
    assert _loss(None, {"acc": torch.tensor(1.0)}, trainer(), AUTOMATIC) is None


def test_under_gradient_accumulation_the_divided_loss_lightning_hands_on_is_not_taken_as_it_is() -> None:
    # Lightning divides the returned loss by accumulate_grad_batches before callbacks see it.
    divided, logged = torch.tensor(0.25), torch.tensor(1.0)
    assert _loss({"loss": divided}, {"train_loss": logged}, trainer(4), AUTOMATIC) is logged  # exact
    assert _loss({"loss": divided}, {}, trainer(4), AUTOMATIC).item() == 1.0  # multiplied back
    assert _loss({"loss": divided}, {}, trainer(4), MANUAL) is divided  # manual: not divided by Lightning
