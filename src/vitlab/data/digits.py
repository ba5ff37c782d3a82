"""scikit-learn's digits: 1,797 real 8x8 handwritten digits that ship inside scikit-learn (no download).

The split is fixed and seeded (``split_seed``), stratified by class: 70% train, 10% val, 20% test
(``data.val_fraction=0``: train on the 80%, validate on test, as cifar does).
Images are upsampled to ``img_size`` (default 32) with bilinear interpolation and repeated to 3
channels so that every model, and every checkpoint pretrained on RGB data, takes them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.data.base import VisionDataModule, check_val_fraction
from vitlab.data.memory import TensorImageDataset

#: scikit-learn's digits are 8x8 counts of set pixels in a 4x4 block: 0 ... 16
DIGITS_MAX_VALUE = 16


def load_digits_uint8(img_size: int) -> tuple[torch.Tensor, np.ndarray]:
    # lazy: scikit-learn's import is ~0.5 s of every data=digits command's start-up, a refused one included
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / DIGITS_MAX_VALUE).unsqueeze(1)
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, d.target.astype(np.int64)


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
        from sklearn.model_selection import train_test_split  # lazy: as load_digits

        x, y = load_digits_uint8(self.img_size)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=self.test_fraction, stratify=y, random_state=self.split_seed)
        make = lambda ii: TensorImageDataset(x[np.sort(ii)], y[np.sort(ii)])  # noqa: E731
        if self.val_fraction == 0.0:  # no dev split: train on all of train + val, validate on test (as cifar)
            return make(rest), make(test), make(test)
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=self.split_seed)
        return make(train), make(val), make(test)
