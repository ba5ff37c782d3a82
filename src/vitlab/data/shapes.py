"""Procedural shapes & textures: an embedded dataset of any size (1k to 1M) for data-scaling studies.

Ten classes — five shapes (disk, square, triangle, ring, plus) and five textures (horizontal stripes,
vertical stripes, checkerboard, diagonal stripes, dots) — drawn at a random position, scale,
rotation and colour over a shaded background with a distractor blob and pixel noise, 32x32 RGB by
default.  Each image is a pure function of ``(seed, split, index)``, so any size is deterministic and a
larger train set contains every image of a smaller one.  Calibrated so that the data-scaling study
(``make sweep``: 1,000 steps of batch 64) separates the sizes: 500 images give vit_micro 27% and
bit_micro 45% test accuracy, 8,000 give 60% and 85%, at lr 3e-4 (at 1e-3 vit_micro stays near chance:
14.8% val after 1,500 steps of batch 32).  An earlier, harder version (smaller shapes, finer textures,
lower contrast) left vit_micro at 11% val after 5 epochs of 10,000 images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vitlab.data.base import VisionDataModule
from vitlab.errors import DataConfigError

CLASSES = (
    "disk", "square", "triangle", "ring", "plus",
    "hstripes", "vstripes", "checker", "dstripes", "dots",
)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MAX_CACHED = 200_000  # 3 KB per 32 px image: cache up to ~600 MB, render on the fly above


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft mask in [0, 1] of class ``label`` in shape-local coordinates (unit radius)."""
    r = np.sqrt(u * u + v * v)
    edge = lambda d: np.clip(0.5 - d * 6.0, 0.0, 1.0)  # noqa: E731  (d < 0 inside)
    name = CLASSES[label]
    if name == "disk":
        return edge(r - 1.0)
    if name == "square":
        return edge(np.maximum(np.abs(u), np.abs(v)) - 0.85)
    if name == "triangle":
        d = np.maximum.reduce([v - 0.6, -0.866 * u - 0.5 * v - 0.6, 0.866 * u - 0.5 * v - 0.6])
        return edge(d)
    if name == "ring":
        return edge(np.abs(r - 0.75) - 0.22)
    if name == "plus":
        return edge(np.minimum(np.maximum(np.abs(u) - 0.25, np.abs(v) - 1.0), np.maximum(np.abs(v) - 0.25, np.abs(u) - 1.0)))
    # textures fill a rounded square patch
    region = edge(np.maximum(np.abs(u), np.abs(v)) - 1.0)
    freq = rng.uniform(1.5, 2.5)
    phase = rng.uniform(0, 2 * np.pi)
    if name == "hstripes":
        tex = np.sin(freq * np.pi * v + phase) > 0
    elif name == "vstripes":
        tex = np.sin(freq * np.pi * u + phase) > 0
    elif name == "checker":
        tex = (np.sin(freq * np.pi * u + phase) > 0) ^ (np.sin(freq * np.pi * v + phase) > 0)
    elif name == "dstripes":
        tex = np.sin(freq * np.pi * (u + v) / np.sqrt(2) * 1.4 + phase) > 0
    else:  # dots
        tex = (np.sin(freq * np.pi * u + phase) * np.sin(freq * np.pi * v + phase)) > 0.5
    return region * tex


def render(seed: int, split: str, index: int, img_size: int = 32) -> tuple[np.ndarray, int]:
    """One (H, W, 3) uint8 image and its label; a pure function of its arguments."""
    label = index % len(CLASSES)
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    g = (np.arange(img_size) + 0.5) / img_size * 2.0 - 1.0
    y, x = np.meshgrid(g, g, indexing="ij")
    scale = rng.uniform(0.4, 0.75)
    cx, cy = rng.uniform(-1 + scale, 1 - scale, size=2)
    theta = rng.uniform(0, 2 * np.pi) if CLASSES[label] not in ("hstripes", "vstripes", "dstripes") else rng.uniform(-0.25, 0.25)
    c, s = np.cos(theta), np.sin(theta)
    u = (c * (x - cx) + s * (y - cy)) / scale
    v = (-s * (x - cx) + c * (y - cy)) / scale
    mask = _shape_mask(label, u, v, rng)[..., None]
    # shaded background + a distractor blob, then foreground at a random contrast, then pixel noise
    bg = rng.uniform(0, 1, size=3)
    grad = rng.normal(0, 0.25, size=3)[None, None, :] * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y)[..., None]
    img = bg + grad
    bx, by = rng.uniform(-1, 1, size=2)
    blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))[..., None]
    img = img + blob * rng.normal(0, 0.3, size=3)
    contrast = rng.uniform(0.45, 0.9)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-8
    fg = np.clip(bg + contrast * direction * np.sqrt(3), 0, 1)
    img = img * (1 - mask) + fg * mask
    img = img + rng.normal(0, rng.uniform(0.02, 0.08), size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


class ShapesDataset(Dataset):
    def __init__(self, size: int, seed: int, split: str, img_size: int = 32, cache: bool | None = None) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"split={split!r} is not one of {list(SPLIT_CODES)}")
        self.size, self.seed, self.split, self.img_size = int(size), int(seed), split, int(img_size)
        self.targets = [i % len(CLASSES) for i in range(self.size)]
        self._cache = None
        if cache if cache is not None else self.size <= MAX_CACHED:
            self._cache = torch.zeros(self.size, 3, self.img_size, self.img_size, dtype=torch.uint8)
            self._filled = np.zeros(self.size, dtype=bool)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if self._cache is not None and self._filled[i]:
            return self._cache[i], self.targets[i]
        img, label = render(self.seed, self.split, i, self.img_size)
        t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        if self._cache is not None:
            self._cache[i] = t
            self._filled[i] = True
        return t, label


class ShapesDataModule(VisionDataModule):
    name = "shapes"
    num_classes = len(CLASSES)
    default_train_pipeline = "translate"

    def __init__(self, seed: int = 0, val_size: int = 1000, test_size: int = 2000, **kwargs) -> None:
        kwargs.setdefault("img_size", 32)
        kwargs.setdefault("eval_pipeline", "none")
        kwargs.setdefault("train_size", 10_000)
        super().__init__(**kwargs)
        ts = self.train_size
        if isinstance(ts, float) and ts <= 1.0:
            raise DataConfigError("data.train_size for shapes is a count of images (1k to 1M), not a fraction")
        if not 1 <= int(ts) <= 10_000_000:
            raise DataConfigError(f"data.train_size={ts} must be between 1 and 10,000,000 for shapes")
        self.seed, self.val_size, self.test_size = seed, int(val_size), int(test_size)

    def subset_train(self, train):
        return train  # the generator makes exactly train_size images

    def build_splits(self):
        mk = lambda n, split: ShapesDataset(n, self.seed, split, self.img_size)  # noqa: E731
        return mk(int(self.train_size), "train"), mk(self.val_size, "val"), mk(self.test_size, "test")
