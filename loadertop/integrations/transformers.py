"""The Hugging Face Trainer: a TrainerCallback that sends the Trainer's logged loss to loadertop.

Under ``loadertop run -- python train.py`` every ``transformers.Trainer`` gets it without an edit
(``inject``); a script may also add it itself::

    from loadertop.integrations.transformers import LoaderTopTrainerCallback
    trainer = Trainer(..., callbacks=[LoaderTopTrainerCallback()])

The loaders need nothing: the Trainer's DataLoader and the one accelerate wraps around it are
loadertop's drop-in (the launcher makes every DataLoader one), and the wrapping is recognised as
the same loader made anew. The loss is what the Trainer logs, every ``logging_steps``. Outside
``loadertop run`` it does nothing.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from transformers import TrainerCallback

from loadertop.core.probe import launched

LOGGED = ("loss", "learning_rate", "grad_norm")
"""What of the Trainer's logs goes to the loss panel and ``--record``."""


class LoaderTopTrainerCallback(TrainerCallback):
    """Reports the Trainer's logged training loss (and learning rate, gradient norm) to loadertop."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:  # evaluation and the final summary log other things
            return
        values = {key: float(logs[key]) for key in LOGGED if isinstance(logs.get(key), (int, float))}
        # accelerate fetches the next batch (or a whole accumulation window) before the step logs: the
        # loss belongs to the batch the Trainer has reached, epoch * batches per epoch, not the latest one.
        try:
            step = round(float(state.epoch) * len(kwargs["train_dataloader"]))
        except (KeyError, TypeError, ValueError):
            launched.log(**values)
            return
        launched.log_at(step, **values)


def inject(module: ModuleType) -> None:
    """Give every Trainer of ``transformers.trainer`` the callback (once, whatever the script passes)."""
    trainer = module.Trainer
    if getattr(trainer.__init__, "_loadertop", False):
        return
    original = trainer.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not any(isinstance(known, LoaderTopTrainerCallback) for known in self.callback_handler.callbacks):
            self.add_callback(LoaderTopTrainerCallback())

    __init__._loadertop = True  # type: ignore[attr-defined]
    trainer.__init__ = __init__
