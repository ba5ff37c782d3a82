"""scikit-learn's digits: 1,797 real 8x8 handwritten digits that ship inside scikit-learn (no download).

The split is fixed and seeded (``split_seed``), stratified by class: 70% train, 10% val, 20% test
(``data.val_fraction=0``: train on the 80%, validate on test, as cifar does).
The images are read from scikit-learn's own data file (``sklearn/datasets/data/digits.csv.gz``, parsed as its
``load_digits`` parses it) without importing scikit-learn: that import was 0.35 s of every digits run's start-up.
Images are upsampled to ``img_size`` (default 32) with bilinear interpolation and repeated to 3
channels so that every model, and every checkpoint pretrained on RGB data, takes them unchanged.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.data.base import VisionDataModule, check_val_fraction
from vitlab.data.memory import TensorImageDataset
from vitlab.errors import DatasetNotFoundError

#: scikit-learn's digits are 8x8 counts of set pixels in a 4x4 block: 0 ... 16
DIGITS_MAX_VALUE = 16


def digits_file() -> Path:
    """scikit-learn's digits data file, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise DatasetNotFoundError(f"data=digits reads scikit-learn's digits.csv.gz, not found ({path or 'no sklearn'}): "
                                   "install the project's dependencies (make install)")
    return path


def load_digits_uint8(img_size: int) -> tuple[torch.Tensor, np.ndarray]:
    data = np.loadtxt(digits_file(), delimiter=",")  # 1797 rows: 64 pixel counts, then the label
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    x = torch.from_numpy(images.astype(np.float32) / DIGITS_MAX_VALUE).unsqueeze(1)
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, target


def stratified_split(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` -> (rest, held out): ``ceil(fraction * n)`` held out, shared among the classes in proportion to
    their counts (largest remainders first), each class's picks drawn with ``seed`` (scikit-learn's sizes)."""
    n_out = math.ceil(fraction * len(idx))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_out / len(idx)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[: n_out - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    out = np.concatenate([rng.permutation(idx[labels == c])[:k] for c, k in zip(classes, take, strict=True)])
    return np.setdiff1d(idx, out), np.sort(out)


class DigitsDataModule(VisionDataModule):
    name = "digits"
    num_classes = 10
    default_train_pipeline = "translate"  # flips would turn a 2 into a 5

    def __init__(self, split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2, **kwargs) -> None:
        kwargs.setdefault("img_size", 32)
        kwargs.setdefault("eval_pipeline", "none")
        super().__init__(**kwargs)
        self.split_seed, self.val_fraction, self.test_fraction = split_seed, check_val_fraction(val_fraction), test_fraction

    def build_splits(self):
        x, y = load_digits_uint8(self.img_size)
        idx = np.arange(len(y))
        rest, test = stratified_split(idx, y, self.test_fraction, self.split_seed)
        make = lambda ii: TensorImageDataset(x[ii], y[ii])  # noqa: E731
        if self.val_fraction == 0.0:  # no dev split: train on all of train + val, validate on test (as cifar)
            return make(rest), make(test), make(test)
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = stratified_split(rest, y[rest], val_share, self.split_seed)
        return make(train), make(val), make(test)
