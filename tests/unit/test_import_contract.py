"""The import contract, read from the source: ``core`` never imports textual or rich; ``protocol`` and ``tui`` never
import torch, neither themselves nor through a loadertop module they import at module level; the layers of
``core`` (``LAYERS``, bottom first) and the front-ends above them only ever import down or within their layer,
and no two modules import each other, by any chain (imports at any depth count for both).

Every module of the package is parsed with ``ast``: ``import``/``from`` statements at any depth (in functions,
under ``if TYPE_CHECKING``) and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
A module's *direct* imports are all of them; its *load-time* imports, the edges followed transitively, are the
ones that run when it is imported: at module level (class bodies included), not in a function, not under
``TYPE_CHECKING``, plus the parent packages that importing any module runs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH = ("torch", "torchvision", "torchaudio")
UI = ("textual", "rich")
LAYERS = ("protocol", "measure", "policy", "probe", "train", "drive", "sessions")
"""The layers of ``loadertop.core``, bottom first (docs/architecture.md)."""
ABOVE_CORE = {"integrations": "probe", "tui": None, "cli": None, "report": None}
"""The packages beside ``core``: the integrations are the probe's plugins (found by name, imported by nothing in
core), the TUI, the CLI and the report the front-ends, above every layer."""


@dataclass(frozen=True)
class Import:
    """One imported name, as written in the source."""

    target: str
    line: int
    at_load: bool  # runs when the importing module is imported (module level, not under TYPE_CHECKING)


@dataclass
class Module:
    """One module of the package and what it imports."""

    name: str
    path: Path
    imports: list[Import] = field(default_factory=list)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_import_call(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("x")``, ``import_module("x")`` or ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []
        self._depth = 0  # functions entered
        self._type_checking = 0

    @property
    def _at_load(self) -> bool:
        return self._depth == 0 and self._type_checking == 0

    def _resolve(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join([*base, module] if module else base)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [Import(alias.name, node.lineno, self._at_load) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.module, node.level)
        self.found.append(Import(base, node.lineno, self._at_load))
        if base.split(".")[0] == self.package.split(".")[0]:  # ``from pkg import name``: name may be a submodule
            self.found += [
                Import(f"{base}.{alias.name}", node.lineno, self._at_load) for alias in node.names if alias.name != "*"
            ]

    def visit_Call(self, node: ast.Call) -> None:
        target = _literal_import_call(node)
        if target is not None:
            level = len(target) - len(target.lstrip("."))
            self.found.append(Import(self._resolve(target[level:] or None, level), node.lineno, self._at_load))
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def graph(root: Path, package: str = "loadertop") -> dict[str, Module]:
    """Every module under ``root / package`` with its imports (of the package's own, only names that are modules:
    ``from pkg.mod import function`` counts as an import of ``pkg.mod``)."""
    modules: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        collector = _Collector(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        modules[name] = Module(name, path, collector.found)
    for module in modules.values():
        module.imports = [i for i in module.imports if _kept(i.target, modules, package)]
    return modules


def _kept(target: str, modules: dict[str, Module], package: str) -> bool:
    if target.split(".")[0] != package:
        return True  # third-party: its top-level name is what the rules look at
    return target in modules


def _parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def load_time_edges(module: Module, modules: dict[str, Module]) -> list[tuple[str, int]]:
    """The modules that importing ``module`` imports right away, with the line (0: a parent package)."""
    edges = [(parent, 0) for parent in _parents(module.name) if parent in modules]
    for imported in module.imports:
        if imported.at_load:
            edges += [(parent, imported.line) for parent in _parents(imported.target) if parent in modules]
            edges.append((imported.target, imported.line))
    return edges


def _is(target: str, roots: Iterable[str]) -> bool:
    return target.split(".")[0] in roots


def violations(modules: dict[str, Module], prefixes: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Each module under ``prefixes`` that imports a ``forbidden`` top-level module, directly (at any depth) or
    through a chain of load-time imports of the package, with the chain that brings it in."""
    prefixes, forbidden = tuple(prefixes), tuple(forbidden)
    found: list[str] = []
    for name, module in sorted(modules.items()):
        if not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for imported in module.imports:
            if _is(imported.target, forbidden):
                found.append(f"{name} imports {imported.target} ({_where(module, imported.line)})")
        chain = _chain_to(name, modules, forbidden)
        if chain is not None and len(chain) > 2:  # two links: a direct import, said above
            hops = [f"{m} ({_where(modules[m], line)})" for m, line in chain[:-1]]
            found.append(f"{name} imports {chain[-1][0].split('.')[0]} through " + " -> ".join([*hops, chain[-1][0]]))
    return found


def _where(module: Module, line: int) -> str:
    return f"{module.path.name}:{line}" if line else "its package"


def _chain_to(start: str, modules: dict[str, Module], forbidden: tuple[str, ...]) -> list[tuple[str, int]] | None:
    """The shortest chain of load-time imports from ``start`` to a forbidden module (breadth first): each module
    with the line that imports the next (0: the next is its package, run first), ending with the forbidden one."""
    came_from: dict[str, tuple[str, int] | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for target, line in load_time_edges(modules[current], modules):
            if _is(target, forbidden):
                chain: list[tuple[str, int]] = [(target, 0), (current, line)]
                step = came_from[current]
                while step is not None:
                    chain.append(step)
                    step = came_from[step[0]]
                return chain[::-1]
            if target in modules and target not in came_from:
                came_from[target] = (current, line)
                queue.append(target)
    return None


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return graph(ROOT)


def test_the_graph_sees_the_whole_package(modules: dict[str, Module]) -> None:
    assert {"loadertop", "loadertop.core.protocol.codec", "loadertop.tui.app", "loadertop.cli"} <= set(modules)
    assert len(modules) == sum(1 for _ in (ROOT / "loadertop").rglob("*.py"))
    engine = {i.target for i in modules["loadertop.core.train.engine"].imports if i.at_load}
    assert "torch" in engine and "loadertop.core.protocol.config" in engine  # the reader does read imports


def test_core_never_imports_textual_or_rich(modules: dict[str, Module]) -> None:
    found = violations(modules, ["loadertop.core"], UI)
    assert not found, "core must not import textual or rich:\n  " + "\n  ".join(found)


def test_protocol_and_tui_never_import_torch(modules: dict[str, Module]) -> None:
    found = violations(modules, ["loadertop.core.protocol", "loadertop.tui"], TORCH)
    assert not found, "protocol and tui must not import torch:\n  " + "\n  ".join(found)


def test_importing_the_protocol_and_the_app_loads_no_torch() -> None:
    # A finder first on sys.meta_path notes where torch is first asked for: the lines of loadertop that import it.
    code = (
        "import sys, traceback\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print(' -> '.join(f'{f.filename}:{f.lineno}' for f in traceback.extract_stack()\n"
        f"                             if f.filename.startswith({str(ROOT / 'loadertop')!r})))\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import loadertop.core.protocol, loadertop.tui.app\n"
        "print('torch' if 'torch' in sys.modules else '')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert done.stdout.strip() == "", f"importing the protocol and the app loaded torch, from:\n{done.stdout}"


def test_the_contract_fails_on_an_upward_import(tmp_path: Path) -> None:
    """A made-up package where the protocol reaches torch through a module it imports, and the core imports rich
    inside a function: both are found, with the chain."""
    files = {
        "pkg/__init__.py": "",
        "pkg/core/__init__.py": "",
        "pkg/core/protocol/__init__.py": "from . import codec\n",
        "pkg/core/protocol/codec.py": "from pkg.core import heavy\n",
        "pkg/core/heavy.py": "import json\nimport torch.nn\n",
        "pkg/core/lazy.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
            "def show():\n    import importlib\n    importlib.import_module('rich.text')\n"
        ),
        "pkg/tui/__init__.py": "",
        "pkg/tui/app.py": "from ..core import lazy\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    fake = graph(tmp_path, "pkg")
    assert violations(fake, ["pkg.core.protocol", "pkg.tui"], TORCH) == [
        "pkg.core.protocol imports torch through pkg.core.protocol (__init__.py:1) -> pkg.core.protocol.codec "
        "(codec.py:1) -> pkg.core.heavy (heavy.py:2) -> torch.nn",
        "pkg.core.protocol.codec imports torch through pkg.core.protocol.codec (codec.py:1) -> pkg.core.heavy "
        "(heavy.py:2) -> torch.nn",
    ]  # the tui's import of lazy brings no torch: lazy's is only for the type checker (yet it is a direct import)
    assert violations(fake, ["pkg.core"], UI) == ["pkg.core.lazy imports rich.text (lazy.py:6)"]
    assert violations(fake, ["pkg.core.lazy"], TORCH) == ["pkg.core.lazy imports torch (lazy.py:3)"]


def layer_of(name: str, package: str = "loadertop") -> float | None:
    """Where module ``name`` stands: its layer's place in ``LAYERS`` (a plugin of the probe just above it, the
    front-ends above them all); None for the package facade (``loadertop``, ``loadertop.core``, ``__main__``)."""
    parts = name.split(".")[1:]
    if parts[:1] == ["core"] and len(parts) > 1:
        return float(LAYERS.index(parts[1])) if parts[1] in LAYERS else None
    if parts and parts[0] in ABOVE_CORE:
        below = ABOVE_CORE[parts[0]]
        return LAYERS.index(below) + 0.5 if below else float(len(LAYERS))
    return None


def upward_imports(modules: dict[str, Module]) -> list[str]:
    """Each import (at any depth) of a module of a higher layer than the importing one's."""
    found = []
    for name, module in sorted(modules.items()):
        mine = layer_of(name)
        if mine is None:
            continue
        for imported in module.imports:
            theirs = layer_of(imported.target) if imported.target in modules else None
            named = any(
                other.line == imported.line and other.target.startswith(imported.target + ".")
                for other in module.imports
            )  # ``from package import module``: said of the module
            if theirs is not None and theirs > mine and not named:
                found.append(f"{name} ({_where(module, imported.line)}) imports {imported.target}, a layer above")
    return found


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The groups of the package's modules that import each other by some chain (imports at any depth; a
    package's own ``__init__`` importing its modules does not count: importing a module runs its package)."""
    edges = {
        name: sorted(
            {
                i.target
                for i in module.imports
                if i.target in modules
                and i.target != name
                and not name.startswith(i.target + ".")
                and not i.target.startswith(name + ".")
            }
        )
        for name, module in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return sorted(groups)


def test_every_core_module_is_in_a_layer(modules: dict[str, Module]) -> None:
    loose = [name for name in modules if name.startswith("loadertop.core.") and layer_of(name) is None]
    assert not loose, f"modules of core outside the layers {LAYERS}: {loose}"


def test_imports_only_go_down_the_layers(modules: dict[str, Module]) -> None:
    found = upward_imports(modules)
    assert not found, "an import runs up the layers:\n  " + "\n  ".join(found)


def test_no_modules_import_each_other(modules: dict[str, Module]) -> None:
    assert cycles(modules) == []


def test_the_contract_fails_on_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    files = {
        "loadertop/__init__.py": "",
        "loadertop/core/__init__.py": "",
        "loadertop/core/measure/__init__.py": "",
        "loadertop/core/measure/store.py": "def f():\n    from loadertop.core.policy import model\n",
        "loadertop/core/policy/__init__.py": "",
        "loadertop/core/policy/model.py": "from loadertop.core.policy import advice\n",
        "loadertop/core/policy/advice.py": "import importlib\nimportlib.import_module('loadertop.core.policy.model')\n",
        "loadertop/integrations/__init__.py": "",
        "loadertop/integrations/plugin.py": "from loadertop.core.measure import store\n",
        "loadertop/core/probe/__init__.py": "",
        "loadertop/core/probe/hook.py": "from loadertop.integrations import plugin\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    fake = graph(tmp_path)
    assert upward_imports(fake) == [
        "loadertop.core.measure.store (store.py:2) imports loadertop.core.policy.model, a layer above",
        "loadertop.core.probe.hook (hook.py:1) imports loadertop.integrations.plugin, a layer above",
    ]
    assert cycles(fake) == [["loadertop.core.policy.advice", "loadertop.core.policy.model"]]
