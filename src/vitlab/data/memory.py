"""In-memory image datasets (embedded data; also the benchmark's data path)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from vitlab.data.base import VisionDataModule
from vitlab.errors import DataConfigError


class TensorImageDataset(Dataset):
    """uint8 (N, C, H, W) images + int labels held in memory."""

    def __init__(self, images: torch.Tensor, targets) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def random_images(n: int, size: int, num_classes: int, generator: torch.Generator) -> TensorImageDataset:
    """``n`` seeded random uint8 images (3 x size x size) with random labels."""
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return TensorImageDataset(x, torch.randint(0, num_classes, (n,), generator=generator).tolist())


class BenchDataModule(VisionDataModule):
    """Seeded random uint8 images held in memory, read through vitlab's DataModule base (pipelines, loaders):
    ``vitlab.bench`` measures the model and the loop, not the disk (``conf/data/bench.yaml``)."""

    name = "bench"
    default_train_pipeline = "none"

    def __init__(self, train_images: int = 1024, val_images: int = 1024, seed: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("eval_pipeline", "none")
        super().__init__(**kwargs)
        if int(train_images) < 1 or int(val_images) < 1:
            raise DataConfigError(f"data.train_images={train_images} and data.val_images={val_images} must be >= 1")
        self.n_train, self.n_val, self.seed = int(train_images), int(val_images), int(seed)

    def build_splits(self):
        g = torch.Generator().manual_seed(self.seed)
        s, k = self.img_size, self.num_classes
        return (random_images(self.n_train, s, k, g), random_images(self.n_val, s, k, g),
                random_images(self.eval_batch_size, s, k, g))
