"""In-memory image datasets (embedded data; also the benchmark's data path)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


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
