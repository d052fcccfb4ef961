"""Any folder of images in class subfolders, read with torchvision's ImageFolder.

    loadertop --workload examples.image_folder:make_workload --data /path/to/train
    loadertop sweep --workload examples.image_folder:make_workload --data /path/to/train

``--data`` is a folder with one subfolder per class (``train/cat/001.jpg``, ``train/dog/002.png``,
...), the layout torchvision's ImageFolder reads. Images are resized and augmented to 64x64 and
train a ResNet-18 from torchvision (randomly initialised).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, models, transforms

from loadertop import Workload, WorkloadError

SIZE = 64


def make_workload(data_dir: str | None = None) -> Workload:
    if data_dir is None:
        raise WorkloadError("pass --data DIR: a folder with one subfolder of images per class")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise WorkloadError(f"--data {root}: no such folder")
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE, scale=(0.5, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.2, 0.2, 0.2),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    try:
        dataset = datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as exc:  # no class folders, or no images in them
        if "class folder" in str(exc):
            raise WorkloadError(f"--data {root}: no class subfolders (one folder of images per class)") from None
        raise WorkloadError(f"--data {root}: no image files (.jpg, .png, ...) in its class subfolders") from None
    model = models.resnet18(num_classes=len(dataset.classes))
    return Workload(
        dataset=dataset,
        model=model,
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        name=f"ImageFolder {root} ({len(dataset)} images, {len(dataset.classes)} classes), ResNet-18 at {SIZE}px",
    )
