"""torch_compat is the one place loadertop touches torch's private API: what it lists exists on the running torch, a
torch without one is refused in one line naming it and the version, and no other module reads one (from the source).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.utils.data.dataloader as torch_dataloader

from loadertop.core.probe import torch_compat
from loadertop.core.probe.loader import DataLoader
from loadertop.core.probe.torch_compat import _USES, ON_CLASS, ON_INSTANCE, OVERRIDDEN, IncompatibleTorch
from tests.conftest import ROOT

PACKAGE = ROOT / "loadertop"
COMPAT = PACKAGE / "core" / "probe" / "torch_compat.py"

OWN_OVERRIDES = {
    # loadertop.DataLoader is a torch DataLoader: torch's __init__ and iterators call these on it.
    ("loadertop/core/probe/loader.py", "DataLoader", "_index_sampler"): "wraps torch's to follow the indices issued",
    ("loadertop/core/probe/loader.py", "DataLoader", "check_worker_number_rationality"): "counts a cgroup's cores",
    # The loop's iterator stands for torch's: shutting it down the way one shuts torch's down ends both generations.
    (
        "loadertop/core/probe/epoch_iterator.py",
        "SwitchingIterator",
        "_shutdown_workers",
    ): "torch_compat.shutdown_workers",
}
"""Definitions in a class body named as a ``_USES`` entry, each deliberate (the reason beside it)."""

ACCESSORS = ("getattr", "hasattr", "setattr", "delattr")

COMMON_NAMES = {
    "pin_memory": "also the DataLoader's public argument and a Tensor method: its module, _utils, is the private part",
}
"""``_USES`` names also public elsewhere, left to their owner's private part (checked as any other)."""


def private_names() -> set[str]:
    """The names a module outside torch_compat must not reach: those ``_USES`` lists, and its owners' private parts."""
    names = {use.name for use in _USES} - set(COMMON_NAMES)
    names |= {part for use in _USES for part in use.owner.split(".") if part.startswith("_")}
    return names


def private_uses(root: Path) -> list[str]:
    """``file:line name`` of each reach of a ``_USES`` name under ``root`` (a package directory), torch_compat and
    ``OWN_OVERRIDES`` left out: ``x.name`` read, set or called, ``getattr(x, "name")`` and its kin, an import of it,
    a method of that name (a class's attribute that could be taken for torch's)."""
    names = private_names()
    found: list[tuple[str, int, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        relative = f"loadertop/{path.relative_to(root).as_posix()}"
        if relative == "loadertop/core/probe/torch_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            reached: list[tuple[ast.AST, str]] = []
            if isinstance(node, ast.Attribute):
                reached.append((node, node.attr))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ACCESSORS
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                reached.append((node, str(node.args[1].value)))
            elif isinstance(node, ast.ClassDef):
                reached += [
                    (item, item.name)
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and (relative, node.name, item.name) not in OWN_OVERRIDES
                ]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                parts = [
                    *(module.split(".") if module else ()),
                    *(part for alias in node.names for part in alias.name.split(".")),
                ]
                reached += [(node, part) for part in parts]
            found += [(relative, where.lineno, where.col_offset, name) for where, name in reached if name in names]
    return [f"{relative}:{line} {name}" for relative, line, _, name in sorted(found)]


def test_no_module_but_torch_compat_reaches_torch_private_api() -> None:
    assert private_uses(PACKAGE) == []


def test_the_source_check_finds_a_private_read(tmp_path: Path) -> None:
    package = tmp_path / "loadertop"
    package.mkdir()
    (package / "engine.py").write_text(
        "class Trainer:\n"
        "    def _shutdown_workers(self, it):\n"
        "        it._shutdown_workers()\n"
        "        return getattr(it, '_workers', ()), self.loader._iterator\n"
        "from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL\n"
    )
    assert private_uses(package) == [
        "loadertop/engine.py:2 _shutdown_workers",
        "loadertop/engine.py:3 _shutdown_workers",
        "loadertop/engine.py:4 _workers",
        "loadertop/engine.py:4 _iterator",
        "loadertop/engine.py:5 MP_STATUS_CHECK_INTERVAL",
        "loadertop/engine.py:5 _utils",
    ]


def test_each_private_name_is_listed_once_with_a_reason() -> None:
    assert len({use.path for use in _USES}) == len(_USES)
    assert len({use.name for use in _USES}) == len(_USES)  # torch_compat reads them by name
    assert all(use.kind in (ON_CLASS, ON_INSTANCE, OVERRIDDEN) and use.why for use in _USES)


def test_the_running_torch_has_every_name_on_its_classes() -> None:
    assert torch_compat.missing() == []
    for use in _USES:
        if use.kind != ON_INSTANCE:
            assert hasattr(torch_compat._resolve(use.owner), use.name), use.path


def test_the_running_torch_sets_every_name_on_its_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1)
    single = iter(torch.utils.data.DataLoader(list(range(8)), batch_size=2))
    multi = iter(loader)
    # A pinning iterator (what torch sets only where it pins): torch is told an accelerator is there (none is).
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.accelerator, "set_device_index", lambda index: None)
    pinning = iter(torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1, pin_memory=True))
    try:
        assert torch_compat.pins(pinning) and torch_compat.pin_thread(pinning) is not None
        assert not torch_compat.pins(multi) and torch_compat.pin_thread(multi) is None
        instances = {
            torch_compat._DATALOADER: [loader],
            torch_compat._BASE_ITER: [single, multi],
            torch_compat._MULTI_ITER: [multi],
            torch_compat._SINGLE_ITER: [single],
            torch_compat._FETCHER: [single._dataset_fetcher],
        }
        for use in _USES:
            if use.kind == ON_INSTANCE:
                owners = {**instances, torch_compat._MULTI_ITER: [multi, pinning]}
                if use.name == "_pin_memory_thread":  # set only where the iterator pins
                    owners[use.owner] = [pinning]
                assert all(hasattr(instance, use.name) for instance in owners[use.owner]), use.path
        assert isinstance(torch_compat.base_seed(multi), int)
        assert [p.pid for p in torch_compat.worker_processes(multi)] == [w.pid for w in multi._workers]
        assert torch_compat.worker_processes(single) == ()
        assert torch_compat.persistent_iterator(loader) is None  # kept only with persistent_workers
    finally:
        torch_compat.shutdown_workers(multi)
        torch_compat.shutdown_workers(pinning)


def test_the_overridden_names_are_overridden() -> None:
    for use in _USES:
        if use.kind == OVERRIDDEN:
            assert use.name in vars(DataLoader), use.path


@pytest.fixture
def fresh_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() runs its check again, under a torch of a made-up version."""
    monkeypatch.setattr(torch_compat, "_installed", False)
    monkeypatch.setattr(torch, "__version__", "2.99.0")


def test_a_torch_without_a_listed_method_is_refused_in_one_line(fresh_install, monkeypatch) -> None:
    monkeypatch.delattr(torch_dataloader._MultiProcessingDataLoaderIter, "_shutdown_workers")
    with pytest.raises(IncompatibleTorch) as raised:
        torch_compat.install()
    assert str(raised.value) == (
        "loadertop needs torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers, "
        "which torch 2.99.0 does not have: use torch>=2.4,<2.15"
    )
    assert torch_compat._installed is False


def test_a_torch_without_two_is_refused_naming_both(fresh_install, monkeypatch) -> None:
    monkeypatch.delattr(torch_dataloader.DataLoader, "_get_iterator")
    monkeypatch.delattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL")
    with pytest.raises(IncompatibleTorch) as raised:
        DataLoader(list(range(8)))  # a loadertop loader checks at its start
    assert str(raised.value) == (
        "loadertop needs torch.utils.data.dataloader.DataLoader._get_iterator, "
        "torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL, which torch 2.99.0 does not have: use torch>=2.4,<2.15"
    )


def test_a_torch_without_a_listed_class_is_refused(fresh_install, monkeypatch) -> None:
    monkeypatch.delattr(torch_dataloader, "_MultiProcessingDataLoaderIter")
    assert torch_compat.missing() == [
        "torch.utils.data.dataloader._MultiProcessingDataLoaderIter",
        "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers",
        "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._try_get_data",
    ]


class _SeedlessIterator(torch_dataloader._SingleProcessDataLoaderIter):
    """A torch iterator as a torch that no longer sets ``_base_seed`` would make it."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        super().__init__(loader)
        del self._base_seed


def test_an_iterator_without_a_base_seed_is_refused_not_given_a_default(fresh_install) -> None:
    iterator = _SeedlessIterator(torch.utils.data.DataLoader(list(range(8))))
    with pytest.raises(IncompatibleTorch) as raised:
        torch_compat.base_seed(iterator)
    assert str(raised.value) == (
        "loadertop needs torch.utils.data.dataloader._BaseDataLoaderIter._base_seed, "
        "which torch 2.99.0 does not have: use torch>=2.4,<2.15"
    )


def test_a_loader_whose_iterators_have_no_base_seed_stops_at_its_first_iter(fresh_install, monkeypatch) -> None:
    loader = DataLoader(list(range(8)), batch_size=2)
    monkeypatch.setattr(DataLoader, "_get_iterator", lambda self: _SeedlessIterator(self))
    with pytest.raises(IncompatibleTorch, match=r"^loadertop needs .*_BaseDataLoaderIter\._base_seed, which torch "):
        iter(loader)


def test_a_worker_iterator_without_its_workers_is_refused(fresh_install) -> None:
    multi = iter(torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1))
    workers = multi._workers
    try:
        del multi._workers
        with pytest.raises(IncompatibleTorch) as raised:
            torch_compat.worker_processes(multi)
        assert str(raised.value) == (
            "loadertop needs torch.utils.data.dataloader._MultiProcessingDataLoaderIter."
            "_workers, which torch 2.99.0 does not have: use torch>=2.4,<2.15"
        )
    finally:
        multi._workers = workers
        torch_compat.shutdown_workers(multi)


def test_a_loader_without_a_persistent_iterator_slot_is_refused(fresh_install) -> None:
    loader = torch.utils.data.DataLoader(list(range(8)))
    del loader._iterator
    with pytest.raises(IncompatibleTorch, match=r"DataLoader\._iterator, which torch 2\.99\.0 does not have"):
        torch_compat.persistent_iterator(loader)
    with pytest.raises(IncompatibleTorch, match=r"DataLoader\._iterator, which torch 2\.99\.0 does not have"):
        torch_compat.set_persistent_iterator(loader, None)
