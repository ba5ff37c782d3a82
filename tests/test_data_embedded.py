"""The embedded datasets: digits (real, from scikit-learn) and procedural shapes."""

import numpy as np
import pytest
import torch

from vitlab.data.base import balanced_subset_indices
from vitlab.data.digits import DigitsDataModule, load_digits_uint8, stratified_split
from vitlab.data.shapes import CLASSES, ShapesDataModule, render
from vitlab.errors import DataConfigError


def test_digits_split_is_fixed_seeded_and_stratified():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup(), b.setup()
    sizes = (len(a.train_set), len(a.val_set), len(a.test_set))
    assert sum(sizes) == 1797 and sizes == (1257, 180, 360)
    assert torch.equal(a.test_set.base.images, b.test_set.base.images)
    assert np.bincount(a.test_set.targets).min() >= 35  # every class well represented in test
    c = DigitsDataModule(split_seed=1)
    c.setup()
    assert not torch.equal(a.test_set.base.images, c.test_set.base.images)


def test_digits_are_scikit_learns_digits_read_without_importing_it():
    from sklearn.datasets import load_digits  # the reference: scikit-learn's own reader of the same file

    ref = load_digits()
    x, y = load_digits_uint8(8)  # 8 px: the stored counts, scaled 0..16 -> 0..255
    assert np.array_equal(y, ref.target)
    assert torch.equal(x[:, 0], torch.from_numpy(np.round(ref.images / 16 * 255)).to(torch.uint8))


def test_stratified_split_holds_out_each_class_in_proportion():
    labels = np.repeat(np.arange(3), [60, 30, 10])
    idx = np.arange(100, 200)
    rest, out = stratified_split(idx, labels, 0.25, seed=0)
    assert len(out) == 25 and len(rest) == 75 and not set(rest) & set(out) and set(rest) | set(out) == set(idx)
    assert np.bincount(labels[out - 100]).tolist() == [15, 8, 2]  # 15, 7.5, 2.5: the largest remainder first
    assert np.array_equal(out, stratified_split(idx, labels, 0.25, seed=0)[1])
    assert not np.array_equal(out, stratified_split(idx, labels, 0.25, seed=1)[1])


def test_digits_images_are_32px_rgb_normalised():
    dm = DigitsDataModule(batch_size=16)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 32, 32)
    assert x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0 and x.min() < -0.9
    assert y.dtype == torch.int64


def test_train_size_subset_is_class_balanced_and_seeded():
    targets = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 50, 5])
    idx = balanced_subset_indices(targets, 100, seed=0)
    counts = np.bincount(targets[idx], minlength=10)
    assert len(idx) == 100 and counts[9] == 5 and counts[:9].min() >= 10  # short class gives its share away
    assert np.array_equal(idx, balanced_subset_indices(targets, 100, seed=0))
    assert not np.array_equal(idx, balanced_subset_indices(targets, 100, seed=1))
    assert len(balanced_subset_indices(targets, 0.5, seed=0)) == round(0.5 * len(targets))
    with pytest.raises(DataConfigError, match="train_size"):  # refused where the DataModule is built
        DigitsDataModule(train_size=0)


def test_digits_train_size_knob():
    dm = DigitsDataModule(train_size=100)
    dm.setup()
    assert len(dm.train_set) == 100 and dm.stats()["data/train_size"] == 100
    assert np.bincount(dm.train_set.targets).tolist() == [10] * 10


def test_shapes_are_deterministic_and_have_ten_classes():
    assert len(CLASSES) >= 10
    a, la = render(0, "train", 123)
    b, lb = render(0, "train", 123)
    c, _ = render(1, "train", 123)
    assert np.array_equal(a, b) and la == lb and not np.array_equal(a, c)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert not np.array_equal(render(0, "train", 5)[0], render(0, "test", 5)[0])  # splits don't overlap


def test_shapes_size_is_train_size_and_nested():
    small, big = ShapesDataModule(train_size=1000), ShapesDataModule(train_size=5000)
    small.setup(), big.setup()
    assert len(small.train_set) == 1000 and len(big.train_set) == 5000
    assert torch.equal(small.train_set.base[999][0], big.train_set.base[999][0])
    assert np.bincount(small.train_set.targets).tolist() == [100] * 10
    with pytest.raises(DataConfigError, match="train_size"):
        ShapesDataModule(train_size=0.5)


def test_shapes_classes_are_not_trivially_separable_by_colour():
    # mean colour carries no label information: a nearest-class-mean on mean RGB stays near chance
    imgs = np.stack([render(0, "train", i)[0] for i in range(1000)]).reshape(1000, -1, 3).mean(1)
    labels = np.arange(1000) % 10
    means = np.stack([imgs[labels == k].mean(0) for k in range(10)])
    pred = np.argmin(((imgs[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == labels).mean() < 0.3
