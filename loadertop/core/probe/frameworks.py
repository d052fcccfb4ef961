"""The frameworks whose trainers a launched run gives loadertop's callback, and how it is given.

Each framework's plugin is a module of ``loadertop.integrations`` found by name (``FRAMEWORKS``) and imported
only once the framework itself is (``import_hooks.after_import``), never by the probe's own modules.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from loadertop.core.probe.publisher import say_on_stderr

FRAMEWORKS = {
    "lightning.pytorch.trainer.trainer": "lightning",
    "pytorch_lightning.trainer.trainer": "lightning",
    "transformers.trainer": "transformers",
    "lightning.pytorch": None,
    "pytorch_lightning": None,
}
"""The modules of the trainers the launcher gives its callback, each with its plugin: the module of
``loadertop.integrations`` found by that name, imported only once the framework is, never by this module
itself. A trainer's module rather than its package, which may be still importing when torch is
(``pytorch_lightning`` imports torch first); the Lightning packages themselves (no plugin) only to say,
once imported, when they have no Trainer to hook into."""


def framework_imported(module: ModuleType) -> None:
    """A framework's trainer module is loaded: every trainer it makes gets loadertop's callback.

    A version loadertop cannot hook into is said in one line; its loaders are still watched.
    """
    try:
        plugin = FRAMEWORKS[module.__name__]
        if plugin is None:
            module.Trainer  # noqa: B018 - a version without one: said below, in one line
        else:
            importlib.import_module(f"loadertop.integrations.{plugin}").inject(module)
    except Exception as exc:  # noqa: BLE001 - the script must run whatever the framework's version
        package = module.__name__.split(".")[0]
        version = getattr(sys.modules.get(package), "__version__", "of unknown version")
        say_on_stderr(
            f"cannot add loadertop's callback to {package} {version} ({type(exc).__name__}: {exc}): its "
            "DataLoaders are still watched and switched, but not told apart nor given its loss"
        )
