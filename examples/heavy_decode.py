"""CPU work per sample: decoding 256x256 JPEGs and augmenting them, as an ImageNet-style pipeline does.

    loadertop --workload examples.heavy_decode:make_workload
    loadertop sweep --workload examples.heavy_decode:make_workload --workers 0,1,2,4,8

The dataset holds 512 JPEG files in memory (encoded once, from random shapes on noise), so
every sample costs what a real one does after the read: JPEG decode, a random resized crop,
colour jitter, blur, tensor conversion. The model is small, so loading dominates: this is
the workload where ``num_workers`` matters most.
"""

from __future__ import annotations

import io
import random

import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

from loadertop import Workload

CLASSES = 8
SOURCE = 256
CROP = 128


def _jpeg(rng: random.Random, label: int) -> bytes:
    image = Image.effect_noise((SOURCE, SOURCE), 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    colour = f"hsv({label * 360 // CLASSES},80%,85%)"
    for _ in range(6):
        x, y = rng.randrange(SOURCE), rng.randrange(SOURCE)
        r = rng.randrange(20, 60)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class JpegDataset(Dataset):
    """Encoded JPEG bytes in memory, decoded and augmented on every access."""

    def __init__(self, count: int = 512, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.labels = [i % CLASSES for i in range(count)]
        self.images = [_jpeg(rng, label) for label in self.labels]
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(CROP, scale=(0.3, 1.0), antialias=True),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.3, 0.3, 0.3, 0.05),
                transforms.GaussianBlur(5),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(io.BytesIO(self.images[index])) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def make_workload(count: int = 512) -> Workload:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )
    return Workload(
        dataset=JpegDataset(count),
        model=model,
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        name=f"in-memory JPEGs {SOURCE}px -> {CROP}px crops, heavy augmentation, small CNN",
        num_threads=1,
    )
