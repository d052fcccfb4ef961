"""Lightning: a Callback that tells loadertop which loader trains and what the loss is.

Under ``loadertop run -- python fit.py`` every ``lightning.Trainer`` (and ``pytorch_lightning``'s)
gets it without an edit (``inject``); a script may also add it itself::

    from loadertop.integrations.lightning import LoaderTopCallback
    trainer = L.Trainer(callbacks=[LoaderTopCallback()])

Its loaders are loadertop's anyway (the launcher makes every DataLoader its drop-in): the
callback marks the ones ``trainer.train_dataloader`` holds as training (validation loaders are
created first, for the sanity check), and reports what ``training_step`` returned as the loss.
Outside ``loadertop run`` it does nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import torch

from loadertop.core.probe import launched


def _loaders(value: Any) -> Iterator[Any]:
    """The DataLoaders inside ``trainer.train_dataloader`` (one, or a list, tuple or dict of them)."""
    if isinstance(value, torch.utils.data.DataLoader):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _loaders(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _loaders(item)


def _callback_class(base: type) -> type:
    class LoaderTopCallback(base):  # type: ignore[misc, valid-type]
        """Marks the training loaders for loadertop and reports each training step's loss."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            run = launched.current_run()
            if run is not None and stage == "fit":
                run.framework_marks_training = True  # the sanity check's validation loader comes first

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            run = launched.current_run()
            if run is None:
                return
            for loader in _loaders(trainer.train_dataloader):
                if hasattr(loader, "switch"):  # loadertop's: a loader made before torch was imported is not
                    run.mark_training(loader)
                    break

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, torch.Tensor):
                launched.log(loss=loss)

    return LoaderTopCallback


@functools.cache
def callback_for(framework: str) -> type:
    """The callback class for ``lightning.pytorch`` or ``pytorch_lightning`` (each has its own Callback)."""
    import importlib

    return _callback_class(importlib.import_module(framework).Callback)


def _default_framework() -> str:
    """The framework the script uses: the one it imported (never import the other), else the one installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        if name in sys.modules:
            return name
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return "pytorch_lightning"
    return "lightning.pytorch"


def __getattr__(name: str) -> Any:
    """``LoaderTopCallback``: made on first use, for the framework the script imported."""
    if name == "LoaderTopCallback":
        return callback_for(_default_framework())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def inject(module: ModuleType) -> None:
    """Give every Trainer of ``module`` (``lightning.pytorch`` or ``pytorch_lightning``) the callback."""
    trainer = module.Trainer
    if getattr(trainer.__init__, "_loadertop", False):
        return
    callback = callback_for(module.__name__)
    original = trainer.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not any(isinstance(known, callback) for known in self.callbacks):
            self.callbacks.append(callback())

    __init__._loadertop = True  # type: ignore[attr-defined]
    trainer.__init__ = __init__
