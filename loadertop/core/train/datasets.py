"""torchvision datasets already on disk, chosen by name (``--dataset cifar10 --data DIR``).

Nothing is downloaded (``download=False``): when a dataset is missing, the message says
where it was looked for and how to get it there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loadertop.core.train.builtin import SmallCNN
from loadertop.core.train.workload import Workload, WorkloadError

DEFAULT_ROOT = "data"


@dataclass(frozen=True)
class _Known:
    cls_name: str
    folder: str  # what torchvision's download=True creates under the root
    channels: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: int


KNOWN: dict[str, _Known] = {
    "cifar10": _Known("CIFAR10", "cifar-10-batches-py", 3, 10, (0.491, 0.482, 0.447), (0.247, 0.243, 0.261), 32),
    "cifar100": _Known("CIFAR100", "cifar-100-python", 3, 100, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), 32),
    "mnist": _Known("MNIST", "MNIST/raw", 1, 10, (0.1307,), (0.3081,), 28),
    "fashionmnist": _Known("FashionMNIST", "FashionMNIST/raw", 1, 10, (0.286,), (0.353,), 28),
}


def make_dataset_workload(name: str, root: str | Path | None = None, *, seed: int = 0) -> Workload:
    """A workload training a small CNN on the torchvision dataset ``name`` found under ``root``.

    Raises:
        WorkloadError: an unknown name, or the dataset is not where it was looked for.
    """
    from torchvision import datasets, transforms

    key = name.lower().replace("-", "").replace("_", "")
    known = KNOWN.get(key)
    if known is None:
        raise WorkloadError(f"unknown --dataset {name!r}: choose one of {', '.join(KNOWN)}")
    root_path = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    augment: list[Callable[[Any], Any]] = [transforms.RandomCrop(known.crop, padding=known.crop // 8)]
    if known.channels == 3:
        augment.append(transforms.RandomHorizontalFlip())
    transform = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(known.mean, known.std)])
    try:
        dataset = getattr(datasets, known.cls_name)(str(root_path), train=True, download=False, transform=transform)
    except RuntimeError as exc:
        raise WorkloadError(
            f"{known.cls_name} not found under {root_path} (looked for {root_path / known.folder}): "
            f"download it once with torchvision.datasets.{known.cls_name}({str(root_path)!r}, download=True), "
            f"or point --data at the folder that holds {known.folder.split('/')[0]} ({exc})"
        ) from None
    torch.manual_seed(seed)
    return Workload(
        dataset=dataset,
        model=SmallCNN(num_classes=known.classes, in_channels=known.channels),
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        name=f"{known.cls_name} ({len(dataset)} images) from {root_path}, small CNN",
        num_threads=1,
    )
