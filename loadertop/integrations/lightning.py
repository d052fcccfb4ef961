"""Lightning: a Callback that makes a Trainer's loaders loadertop's and tells it what trains and the loss.

Under ``loadertop run -- python fit.py`` every ``lightning.Trainer`` (and ``pytorch_lightning``'s)
gets it without an edit (``inject``); a script may also add it itself, and is then watched without
the launcher (``python fit.py``; ``loadertop attach`` from another terminal watches and switches it)::

    from loadertop.integrations.lightning import LoaderTopCallback
    trainer = L.Trainer(callbacks=[LoaderTopCallback()])

Under the launcher every DataLoader is loadertop's already. Without it, the callback starts the
run's publisher the launcher's way (``launched.watch_this_process``) and hands Lightning loadertop's
drop-in for each loader it asks for: the same loader made anew from the arguments Lightning recorded
when the hook made it (the script's loader is never iterated, no random number is drawn: the same
samples in the same order), named by that hook (``fit.py:52``, its ``def`` line).

Either way it marks the loaders ``trainer.train_dataloader`` holds as training (validation loaders
are created first, for the sanity check), and reports each training batch's loss and the scalars
the module logged for it (``self.log`` in ``training_step``): each the step's own value, on the
batch it belongs to (Lightning fetches a batch ahead when a loader has no length).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import dataloader as torch_dataloader

from loadertop.core.probe import launched
from loadertop.core.probe.publisher import say_on_stderr
from loadertop.core.protocol.environment import ENV


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


def _callback_class(base: type, framework: str) -> type:
    class LoaderTopCallback(base):  # type: ignore[misc, valid-type]
        """Makes the Trainer's loaders loadertop's, marks the training ones, reports each training step's loss."""

        def __init__(self) -> None:
            super().__init__()
            self._training: Any = None  # the training loader whose delivered batches are followed
            self._delivered: deque[int] = deque()  # steps of training batches delivered, not yet trained
            self._last_logged: dict[str, Any] = {}  # each logged key's latest value: logged anew when it differs
            self._converting: list[Any] = []  # the Trainer's data sources that hand out loadertop's loaders

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            standalone = ENV not in os.environ  # the script's own callback, no launcher
            run = launched.watch_this_process() if standalone else launched.current_run()
            if run is None:
                return
            if stage == "fit":
                run.framework_marks_training = True  # the sanity check's validation loader comes first
            if standalone:
                self._convert_loaders(trainer)

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            for source in self._converting:
                if isinstance(source.__dict__.get("dataloader"), _Converting):
                    del source.dataloader
            self._converting = []

        def _convert_loaders(self, trainer: Any) -> None:
            """Each loader a data hook returns reaches Lightning as loadertop's (see the module's docstring)."""
            try:
                loops = (
                    trainer.fit_loop,
                    trainer.fit_loop.epoch_loop.val_loop,
                    trainer.validate_loop,
                    trainer.test_loop,
                    trainer.predict_loop,
                )
                for source in (loop._data_source for loop in loops):
                    if not isinstance(source.__dict__.get("dataloader"), _Converting):
                        source.dataloader = _Converting(source, framework)
                        self._converting.append(source)
            except AttributeError as exc:
                version = getattr(sys.modules.get(framework.split(".")[0]), "__version__", "of unknown version")
                say_on_stderr(
                    f"cannot hand {framework} {version} loadertop's DataLoaders ({exc}): the run is published "
                    "but its loaders are not watched; `loadertop run -- python SCRIPT` watches them"
                )

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._follow(trainer, pl_module, first=True)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._follow(trainer, pl_module, first=False)  # reload_dataloaders_every_n_epochs: a new loader

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._delivered.clear()  # fetched but never trained (a limit, an epoch cut short)

        def _follow(self, trainer: Any, pl_module: Any, *, first: bool) -> None:
            """Mark the training loader and count the batches it delivers (to place each step's values)."""
            run = launched.current_run()
            if run is None:
                return
            loader = next((dl for dl in _loaders(trainer.train_dataloader) if hasattr(dl, "switch")), None)
            if loader is None or loader is self._training:  # none is loadertop's: made before torch was imported
                return
            run.mark_training(loader)
            self._training = loader
            self._delivered.clear()
            if "dataloader_iter" in inspect.signature(pl_module.training_step).parameters:
                return  # the step pulls its batches itself: its values go to the latest batch
            if first:  # an unsized loader: Lightning fetched its first batch before training started
                fetched = int(getattr(getattr(trainer.fit_loop, "_data_fetcher", None), "fetched", 0) or 0)
                steps = run.steps_of(loader)
                self._delivered.extend(range(steps - fetched + 1, steps + 1))

            def delivered(_batch: Any) -> None:  # after the run's own observer: its step is counted
                if self._training is loader:
                    self._delivered.append(run.steps_of(loader))

            loader.add_observer(delivered)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if launched.current_run() is None:
                return
            step = self._delivered.popleft() if self._delivered else None
            metrics = self._logged_for_this_batch(trainer)
            loss = _loss(outputs, metrics, trainer, pl_module)
            if loss is not None:
                metrics["loss"] = loss
            if not metrics:
                return
            if step is None:
                launched.log(**metrics)
            else:
                launched.log_at(step, **metrics)

        def _logged_for_this_batch(self, trainer: Any) -> dict[str, Any]:
            """What the module logged for this batch with ``self.log`` (``on_step``, Lightning's default in
            ``training_step``), by its name: each the step's own value (not an epoch's mean), exact.

            Lightning keeps a logged value's latest step in its result collection (``_forward_cache``, a
            new tensor each time it is logged); one logged at an earlier step only is not this batch's.
            A value logged with ``on_step=False`` is only accumulated there: not sent.
            """
            fresh: dict[str, Any] = {}
            results = getattr(trainer, "_results", None)
            if results is None:
                return fresh
            for key, metric in list(results.items()):
                meta = getattr(metric, "meta", None)
                value = getattr(metric, "_forward_cache", None)
                if meta is None or not meta.on_step or not isinstance(value, torch.Tensor) or value.numel() != 1:
                    continue
                if self._last_logged.get(key) is value:
                    continue
                self._last_logged[key] = value
                fresh[meta.name] = value
            return fresh

    return LoaderTopCallback


def _loss(outputs: Any, logged: dict[str, Any], trainer: Any, pl_module: Any) -> Any:
    """The batch's loss: what ``training_step`` returned, else what the module logged as a loss.

    Under gradient accumulation Lightning hands callbacks the returned loss divided by
    ``accumulate_grad_batches``: a logged loss is then taken first (exact), the returned one
    multiplied back otherwise.
    """
    returned = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(returned, torch.Tensor):
        returned = None
    accumulating = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    divided = returned is not None and accumulating > 1 and getattr(pl_module, "automatic_optimization", True)
    if returned is not None and not divided:
        return returned
    named = [name for name in logged if name.lower().endswith("loss")]
    if named:
        best = min(named, key=lambda name: (name != "loss", "train" not in name.lower()))
        return logged[best]
    return returned * accumulating if returned is not None else None


class _Converting:
    """A Trainer data source's ``dataloader``: the hook's loaders, handed to Lightning as loadertop's.

    Called where Lightning asks for them (inside its recording of DataLoader arguments, so that it can
    re-create loadertop's in turn, with a DistributedSampler, under DDP).
    """

    def __init__(self, source: Any, framework: str) -> None:
        self._original = source.dataloader
        self._source = source
        self._framework = framework

    def __call__(self) -> Any:
        return _as_loadertop(self._original(), _hook_site(self._source), self._framework)


def _hook_site(source: Any) -> str | None:
    """``file:line`` of the data hook (``def train_dataloader``) that makes a source's loaders; None for loaders
    passed to ``fit`` directly (loadertop names them by the line that called it)."""
    if not source.is_module():
        return None
    hook = getattr(source.instance, source.name, None)
    code = getattr(getattr(hook, "__func__", hook), "__code__", None)
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code is not None else None


def _as_loadertop(value: Any, name: str | None, framework: str) -> Any:
    """``value`` (a loader, a list, tuple or dict of them, a CombinedLoader) with each torch DataLoader made
    anew as loadertop's; loaders of other classes (a subclass of the script's) stay as they are."""
    if type(value) is torch_dataloader.DataLoader:
        return _remade(value, name, framework)
    if isinstance(value, Mapping):
        return type(value)({key: _as_loadertop(item, name, framework) for key, item in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_loadertop(item, name, framework) for item in value)
    if hasattr(value, "flattened") and type(value).__name__ == "CombinedLoader":
        value.flattened = [_as_loadertop(item, name, framework) for item in value.flattened]
    return value


def _remade(loader: Any, name: str | None, framework: str) -> Any:
    """loadertop's DataLoader with the script's loader's arguments (as Lightning recorded them when the hook
    made it, else read from the loader, as Lightning reads them to add a DistributedSampler)."""
    from loadertop.core.probe.loader import DataLoader

    if hasattr(loader, "__pl_saved_args"):
        args, kwargs = tuple(getattr(loader, "__pl_saved_args")), dict(getattr(loader, "__pl_saved_kwargs"))
    else:
        data = importlib.import_module(f"{framework}.utilities.data")
        args, kwargs = data._get_dataloader_init_args_and_kwargs(loader, loader.sampler)
    made = DataLoader(*args, name=name, **kwargs)
    for arguments, setter in getattr(loader, "__pl_attrs_record", ()):  # attributes the hook set after making it
        setter(made, *arguments)
    return made


@functools.cache
def callback_for(framework: str) -> type:
    """The callback class for ``lightning.pytorch`` or ``pytorch_lightning`` (each has its own Callback)."""
    return _callback_class(importlib.import_module(framework).Callback, framework)


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
    """Give every Trainer of ``module`` (``lightning.pytorch``'s or ``pytorch_lightning``'s trainer module, or the
    package) the callback, made when the first Trainer is (the package may be still importing now)."""
    trainer = module.Trainer
    if getattr(trainer.__init__, "_loadertop", False):
        return
    framework = module.__name__.removesuffix(".trainer.trainer")
    original = trainer.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        callback = callback_for(framework)
        if not any(isinstance(known, callback) for known in self.callbacks):
            self.callbacks.append(callback())

    __init__._loadertop = True  # type: ignore[attr-defined]
    trainer.__init__ = __init__
