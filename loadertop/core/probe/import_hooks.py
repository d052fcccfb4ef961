"""Running code once a module is imported, without changing how it is found or loaded.

``after_import("torch", then)`` is how a launched script's DataLoaders become loadertop's only once the
script imports torch (nothing is imported before), and how a framework's trainer gets loadertop's callback
once the framework is imported (``frameworks``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Run ``then(module)`` once module ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once module ``name`` has been imported, without changing how it is found."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then
        self._finding = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """A module loader that calls ``then(module)`` after the module ran; everything else is the original's."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._then(module)
        except Exception as exc:  # noqa: BLE001 - the script must run even when loadertop cannot watch it
            print(
                f"loadertop: cannot instrument DataLoaders ({type(exc).__name__}: {exc}); the script runs unwatched",
                file=sys.stderr,
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
