"""The built-in workload: 1000 small RGB images on disk, decoded and augmented by torchvision, and a small CNN.

The images are PNG files in class folders (``class_0`` .. ``class_9``), generated once,
deterministically from the seed, into a cache folder (or ``--data DIR``), and read back
through ``torchvision.datasets.ImageFolder``. Each class is a shape whose colour leans
towards a class hue, drawn at a random place and size over a noisy background, so the
classes are learnable but not trivial. The per-sample augmentation (random resized crop,
flip, colour jitter, blur, elastic distortion) costs about 2 ms of CPU, so the number
of DataLoader workers matters even on a 2-core machine.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision import datasets
from torchvision import transforms as T

from loadertop.core.train.workload import Workload

NUM_CLASSES = 10
NUM_IMAGES = 1000
IMAGE_SIZE = 32
# Bump when the generated images change, so old caches are not reused.
DATA_VERSION = 1
MARKER = ".loadertop-builtin"

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def default_data_dir(seed: int) -> Path:
    """Where the built-in images live: ``$LOADERTOP_CACHE`` or ``~/.cache/loadertop``."""
    base = os.environ.get("LOADERTOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loadertop"
    )
    return Path(base) / f"builtin-v{DATA_VERSION}-seed{seed}-n{NUM_IMAGES}"


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: int, box: tuple[float, float, float, float], color: tuple[int, ...]
) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = x1 - x0
    t = max(2.0, w / 5)
    if shape == 0:  # disc
        draw.ellipse(box, fill=color)
    elif shape == 1:  # square
        draw.rectangle(box, fill=color)
    elif shape == 2:  # triangle
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == 3:  # plus
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1), fill=color)
        draw.rectangle((x0, cy - t / 2, x1, cy + t / 2), fill=color)
    elif shape == 4:  # X
        draw.line((x0, y0, x1, y1), fill=color, width=int(t))
        draw.line((x0, y1, x1, y0), fill=color, width=int(t))
    elif shape == 5:  # horizontal bars
        for k in range(3):
            yy = y0 + k * (y1 - y0) / 2.5
            draw.rectangle((x0, yy, x1, yy + t * 0.8), fill=color)
    elif shape == 6:  # vertical bars
        for k in range(3):
            xx = x0 + k * (x1 - x0) / 2.5
            draw.rectangle((xx, y0, xx + t * 0.8, y1), fill=color)
    elif shape == 7:  # ring
        draw.ellipse(box, outline=color, width=int(t))
    elif shape == 8:  # diamond
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    else:  # two dots
        r = w / 4
        draw.ellipse((x0, y0, x0 + 2 * r, y0 + 2 * r), fill=color)
        draw.ellipse((x1 - 2 * r, y1 - 2 * r, x1, y1), fill=color)


def render_image(label: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``label``: its shape, in a colour near its hue, over noise."""
    background = rng.uniform(0.2, 0.6) + rng.normal(0.0, 0.05, size=3)
    noise = rng.normal(0.0, 0.1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(background + noise, 0.0, 1.0)
    image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
    hue = (label / NUM_CLASSES + rng.normal(0.0, 0.03)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    size = rng.uniform(14, 24)
    x0 = rng.uniform(2, IMAGE_SIZE - size - 2)
    y0 = rng.uniform(2, IMAGE_SIZE - size - 2)
    color = (int(r * 255), int(g * 255), int(b * 255))
    _draw_shape(ImageDraw.Draw(image), label, (x0, y0, x0 + size, y0 + size), color)
    return image


def ensure_images(data_dir: Path, *, seed: int, num_images: int = NUM_IMAGES) -> Path:
    """Generate the images into ``data_dir`` unless a complete set is already there.

    Generation writes into a temporary folder beside it and renames it into place,
    so an interrupted run or two runs at once never leave a half-written set.

    Raises:
        ValueError: when ``data_dir`` exists, is not empty and holds no built-in set.
    """
    marker = data_dir / MARKER
    if marker.exists():
        return data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(
            f"--data {data_dir}: the folder is not empty and holds no loadertop images; give an empty or new folder"
        )
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=data_dir.parent))
    try:
        rng = np.random.default_rng(seed)
        labels = np.arange(num_images) % NUM_CLASSES
        rng.shuffle(labels)
        for label in range(NUM_CLASSES):
            (tmp / f"class_{label}").mkdir()
        for index, label in enumerate(labels):
            render_image(int(label), rng).save(tmp / f"class_{label}" / f"{index:05d}.png")
        (tmp / MARKER).write_text(f"loadertop built-in images v{DATA_VERSION}, seed {seed}, {num_images} images\n")
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        try:
            tmp.rename(data_dir)
        except OSError:
            if not marker.exists():  # a concurrent run finished first: use its set
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data_dir


def train_transform() -> T.Compose:
    """The per-sample augmentation: about 2 ms of CPU per 32x32 image (most of it the elastic distortion)."""
    return T.Compose(
        [
            T.RandomResizedCrop(IMAGE_SIZE, scale=(0.75, 1.0), ratio=(0.9, 1.1)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            T.GaussianBlur(5, sigma=(0.1, 1.0)),
            T.ToTensor(),
            T.ElasticTransform(alpha=15.0, sigma=4.0),
            T.Normalize(MEAN, STD),
        ]
    )


class ImageFolderWithLatency(datasets.ImageFolder):
    """``ImageFolder`` with an optional simulated storage latency per sample (as on a network file system)."""

    def __init__(self, root: str | Path, *, io_latency_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(str(root), **kwargs)
        self.io_latency_s = io_latency_s

    def __getitem__(self, index: int) -> Any:
        if self.io_latency_s > 0:
            time.sleep(self.io_latency_s)
        return super().__getitem__(index)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: about 5 ms per batch of 32 on two CPU cores."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def make_workload(
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    io_latency_ms: float = 0.0,
    num_images: int = NUM_IMAGES,
) -> Workload:
    """The built-in workload (also a valid ``--workload loadertop.core.train.builtin:make_workload``).

    Args:
        seed: seeds the generated images and the model's initial weights.
        data_dir: where the images are (generated there when missing).
        io_latency_ms: simulated storage latency per sample; 0 for none.
        num_images: how many images to generate.
    """
    if io_latency_ms < 0:
        raise ValueError(f"io latency must be >= 0 ms, got {io_latency_ms}")
    root = Path(data_dir) if data_dir is not None else default_data_dir(seed)
    if data_dir is None and num_images != NUM_IMAGES:
        root = root.with_name(root.name.replace(f"-n{NUM_IMAGES}", f"-n{num_images}"))
    ensure_images(root, seed=seed, num_images=num_images)
    dataset = ImageFolderWithLatency(root, io_latency_s=io_latency_ms / 1000.0, transform=train_transform())
    torch.manual_seed(seed)
    model = SmallCNN()
    notes: tuple[str, ...] = ()
    if io_latency_ms > 0:
        notes = (f"simulated I/O latency {io_latency_ms:g} ms/sample",)
    return Workload(
        dataset=dataset,
        model=model,
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        name="built-in: 1000 PNG images 32x32, 10 classes, small CNN",
        notes=notes,
        # A CNN this small gains little from a second intra-op thread, which would
        # spin against the workers for the same cores: leave the cores to loading.
        num_threads=1,
    )
