"""One DataModule base shared by every dataset.

A dataset module only says how to read its files (``build_splits``); the base owns what every
dataset needs the same way: the seeded class-balanced ``train_size`` subset, the per-stage input
pipelines, batch size and workers, and the dataset statistics the loggers report.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import collate as collate_with
from torch.utils.data._utils.collate import collate_tensor_fn, default_collate_fn_map

from vitlab import CONF_DIR
from vitlab import metrics as M
from vitlab.checks import MAX_CLASSES, check_count
from vitlab.data.sampler import ResumableSampler, seeded_rng
from vitlab.data.transforms import EVAL_RESIZE, build_transform, check_crop_scale, normalize_batch
from vitlab.errors import DataConfigError


def _constructor_defaults() -> dict[str, Any]:
    """The base's keyword defaults, from their one source: conf/data/base/common.yaml, and for the keys only
    datasets read from files list (crop_pct, subset_seed, persistent_workers) conf/data/base/files.yaml.
    A linked value (``eval_img_size: ${.img_size}``) is the constructor's None: "the same as the training value"."""
    base = Path(CONF_DIR) / "data" / "base"
    common = OmegaConf.to_container(OmegaConf.load(base / "common.yaml"), resolve=False)
    files = OmegaConf.to_container(OmegaConf.load(base / "files.yaml"), resolve=False)
    merged = {**{k: v for k, v in files.items() if k not in common and k != "defaults"}, **common}
    return {k: v for k, v in merged.items() if not (isinstance(v, str) and "${" in v)}


#: VisionDataModule's keyword defaults (read from conf/data/base/, see :func:`_constructor_defaults`)
DEFAULTS: dict[str, Any] = _constructor_defaults()


def check_train_size(size: Any) -> None:
    """``data.train_size``: null (the whole split), an int count >= 1, or a float fraction in (0, 1].

    A float above 1 is refused rather than truncated: ``1.5`` used to mean "1 image", which nobody asks for.
    """
    if size is None:
        return
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        if size < 1:
            raise DataConfigError(
                f"data.train_size={size} must be a number of images >= 1, a fraction in (0, 1], "
                "or null for the whole train split"
            )
        return
    if isinstance(size, numbers.Real) and not isinstance(size, bool):
        if not 0.0 < size <= 1.0:
            count = f" (e.g. data.train_size={max(1, int(size))})" if size > 1 else ""
            raise DataConfigError(
                f"data.train_size={size} as a fraction must be in (0, 1]: a float is a fraction of the train "
                f"split; for a number of images give an int{count}"
            )
        return
    raise DataConfigError(
        f"data.train_size={size!r} must be an int (number of images), a float fraction in (0, 1], or null"
    )


def check_val_fraction(val_fraction: Any) -> float:
    """``data.val_fraction``: the share of train held out as the dev split (paper Table 4), in [0, 1)."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    return float(val_fraction)


#: the largest image side vitlab accepts (the paper's largest is 518 px: ViT-H/14 fine-tuned at 518); a typo such as
#: img_size=100000 is named here instead of allocating a position embedding of 39M tokens
MAX_IMG_SIZE = 4096
#: the largest batch one process loads (data.batch_size / eval_batch_size)
MAX_BATCH_SIZE = 2**20


def check_data_args(batch_size: Any = 1, eval_batch_size: Any = None, img_size: Any = 1,
                    eval_img_size: Any = None, train_size: Any = None, num_classes: Any = None) -> None:
    """The checks a DataModule runs on its own arguments when built, before anything is read. ``eval_batch_size``
    / ``eval_img_size`` null = the same as the training value; 0, a fraction, nan or an absurd size is an error."""
    check_count("data.batch_size", batch_size, maximum=MAX_BATCH_SIZE, what="images per process")
    check_count("data.eval_batch_size", eval_batch_size, maximum=MAX_BATCH_SIZE, optional=True,
                what="images per process")
    check_count("data.img_size", img_size, maximum=MAX_IMG_SIZE, what="px")
    check_count("data.eval_img_size", eval_img_size, maximum=MAX_IMG_SIZE, optional=True, what="px")
    check_count("data.num_classes", num_classes, maximum=MAX_CLASSES, optional=True, what="classes")
    check_train_size(train_size)


class TransformedDataset(Dataset):
    """Applies a stage's pipeline on read; the wrapped dataset yields ``(image, label)``."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int | tuple[int, int]):
        if isinstance(i, tuple):  # (index, seed) from ResumableSampler: augmentation = f(seed), exact on resume
            i, seed = i
            with seeded_rng(seed):
                return self.__getitem__(i)
        img, label, *extra = self.base[i]  # extra: per-image side data, e.g. ImageNet ReaL label sets
        return (self.transform(img), label, *extra)

    @property
    def targets(self) -> list[int]:
        return dataset_targets(self.base)


def dataset_targets(ds: Dataset) -> list[int]:
    """Labels of a dataset without decoding images (``targets`` attribute, or through a ``Subset``)."""
    if isinstance(ds, Subset):
        parent = dataset_targets(ds.dataset)
        return [parent[i] for i in ds.indices]
    for attr in ("targets", "labels", "_labels"):
        if hasattr(ds, attr):
            return [int(t) for t in getattr(ds, attr)]
    raise TypeError(f"{type(ds).__name__} exposes no `targets`; add one so subsets can be class-balanced")


def balanced_subset_indices(targets: Sequence[int], size: int | float, seed: int) -> np.ndarray:
    """A seeded subset of ``size`` examples (an int, or a fraction in (0, 1]) with classes as even as possible.

    Classes get ``size // K`` each, the remainder goes to randomly chosen classes, and a class with too
    few examples gives its shortfall to the others. The same (targets, size, seed) always gives the
    same indices, and a smaller subset of the same seed is a prefix-compatible draw per class. ``size``: as
    :func:`check_train_size` accepts it (the DataModule checks ``data.train_size`` when it is built).
    """
    targets = np.asarray(targets)
    n = len(targets)
    if not isinstance(size, numbers.Integral):  # a fraction
        frac, size = size, int(round(size * n))
        if size < 1:
            raise DataConfigError(f"data.train_size={frac} of {n} examples is no example: ask for a larger fraction")
    size = int(size)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    per_class = {c: rng.permutation(np.flatnonzero(targets == c)) for c in classes}
    quota = {c: 0 for c in classes}
    remaining = size
    open_classes = list(classes)
    while remaining > 0 and open_classes:
        share, extra = divmod(remaining, len(open_classes))
        lucky = set(rng.choice(open_classes, size=extra, replace=False).tolist()) if extra else set()
        nxt = []
        for c in open_classes:
            want = share + (1 if c in lucky else 0)
            take = min(want, len(per_class[c]) - quota[c])
            quota[c] += take
            remaining -= take
            if quota[c] < len(per_class[c]):
                nxt.append(c)
        open_classes = nxt
    idx = np.concatenate([per_class[c][: quota[c]] for c in classes])
    return np.sort(idx)


class VisionDataModule(L.LightningDataModule):
    """Base for every dataset: subclasses implement :meth:`build_splits` and set ``num_classes``.

    Keyword defaults come from conf/data/base/ (:data:`DEFAULTS`), the one place they are written: a DataModule
    built in Python and one composed by Hydra start from the same values. ``eval_img_size`` / ``eval_batch_size``
    None = the training value (the configs' ``${.img_size}``); ``train_pipeline`` None = the class's own.
    """

    name = "base"
    #: pipelines per stage; subclasses override where the paper's defaults don't suit the data
    default_train_pipeline = "pretrain"

    def __init__(
        self,
        root: str | None = None,
        img_size: int = DEFAULTS["img_size"],
        eval_img_size: int | None = None,
        batch_size: int = DEFAULTS["batch_size"],
        eval_batch_size: int | None = None,
        global_batch_size: int | None = None,
        num_workers: int | str = DEFAULTS["num_workers"],
        pin_memory: bool | str = DEFAULTS["pin_memory"],
        persistent_workers: bool = DEFAULTS["persistent_workers"],
        train_size: int | float | None = DEFAULTS["train_size"],
        subset_seed: int = DEFAULTS["subset_seed"],
        train_pipeline: str | None = None,
        eval_pipeline: str = DEFAULTS["eval_pipeline"],
        normalization: str | dict = DEFAULTS["normalization"],
        crop_pct: float = DEFAULTS["crop_pct"],
        train_crop_scale: Sequence[float] = tuple(DEFAULTS["train_crop_scale"]),
        eval_resize: str = DEFAULTS["eval_resize"],
        normalize_on_device: bool = DEFAULTS["normalize_on_device"],
        num_classes: int | None = None,
        drop_last: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if name is not None:
            self.name = name
        if kwargs:
            unknown = ", ".join(f"data.{k}" for k in sorted(kwargs) if not k.startswith("_"))
            if unknown:
                raise DataConfigError(f"{type(self).__name__} does not take {unknown}")
        check_data_args(batch_size, eval_batch_size, img_size, eval_img_size, train_size, num_classes)
        self.root = root
        self.img_size = int(img_size)
        self.eval_img_size = int(img_size if eval_img_size is None else eval_img_size)
        self.batch_size = int(batch_size)  # per process: vitlab.train derives it from data.global_batch_size
        self.global_batch_size = None if global_batch_size is None else int(global_batch_size)
        self.eval_batch_size = int(batch_size if eval_batch_size is None else eval_batch_size)
        self.num_workers = resolve_num_workers(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.train_size = train_size
        self.subset_seed = subset_seed
        self.train_pipeline = train_pipeline or self.default_train_pipeline
        self.eval_pipeline = eval_pipeline
        self.normalization = normalization
        self.crop_pct = crop_pct
        try:
            self.train_crop_scale = check_crop_scale(train_crop_scale)
        except ValueError as e:
            raise DataConfigError(str(e)) from None
        if eval_resize not in EVAL_RESIZE:
            raise DataConfigError(f"data.eval_resize={eval_resize!r} is not one of {list(EVAL_RESIZE)}: square = resize the "
                                  "whole image (the paper's eval), center_crop = short-side resize + central crop (timm)")
        self.eval_resize = eval_resize
        self.normalize_on_device = bool(normalize_on_device)
        self.drop_last = drop_last
        if num_classes is not None:
            self.num_classes = int(num_classes)
        self.train_set = self.val_set = self.test_set = None

    # ---- to implement -------------------------------------------------------------------------
    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return raw (train, val, test) datasets yielding ``(PIL image or uint8 CHW tensor, int label)``."""
        raise NotImplementedError

    def subset_train(self, train: Dataset) -> Dataset:
        if self.train_size is None:
            return train
        targets = dataset_targets(train)
        is_fraction = not isinstance(self.train_size, numbers.Integral)
        if not is_fraction and int(self.train_size) > len(targets):
            raise DataConfigError(
                f"data.train_size={self.train_size} but {self.name}'s train split has only {len(targets)} examples: "
                f"ask for at most {len(targets)}, or a fraction in (0, 1]"
            )
        idx = balanced_subset_indices(targets, self.train_size, self.subset_seed)
        return Subset(train, idx.tolist())

    # ---- shared machinery -----------------------------------------------------------------------
    def train_transform(self):
        return build_transform(self.train_pipeline, self.img_size, self.normalization, crop_pct=self.crop_pct,
                               scale=self.train_crop_scale, eval_resize=self.eval_resize,
                               normalize=not self.normalize_on_device)

    def eval_transform(self):
        return build_transform(self.eval_pipeline, self.eval_img_size, self.normalization, crop_pct=self.crop_pct,
                               scale=self.train_crop_scale, eval_resize=self.eval_resize)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, test = self.build_splits()
        self.check_labels(train=train, val=val, test=test)
        self.train_set = TransformedDataset(self.subset_train(train), self.train_transform())
        self.val_set = TransformedDataset(val, self.eval_transform())
        self.test_set = TransformedDataset(test, self.eval_transform())

    def check_labels(self, **splits: Dataset) -> None:
        """Every label must index the head: a wrong ``data.num_classes`` is named here, at start-up, instead of
        surfacing as an index error deep inside the loss on the first batch that holds a large label."""
        k = getattr(self, "num_classes", None)
        if k is None:
            return
        for split, ds in splits.items():
            try:
                targets = np.asarray(dataset_targets(ds))
            except TypeError:  # a dataset without a label list: nothing to check without decoding
                continue
            if targets.size and (targets.min() < 0 or targets.max() >= k):
                raise DataConfigError(
                    f"data.num_classes={k} but the {split} split of {self.name} has labels from {targets.min()} to "
                    f"{targets.max()} ({len(np.unique(targets))} classes): set data.num_classes={targets.max() + 1} "
                    "(or drop the override to use the dataset's own count)"
                )

    def stats(self) -> dict[str, Any]:
        """What the loggers record about the data (scaling dashboards group by these)."""
        self.setup()
        return {
            M.DATA_NAME: self.name,
            M.DATA_TRAIN_SIZE: len(self.train_set),
            M.DATA_VAL_SIZE: len(self.val_set),
            M.DATA_TEST_SIZE: len(self.test_set),
            M.DATA_NUM_CLASSES: self.num_classes,
            M.DATA_IMG_SIZE: self.img_size,
            M.DATA_EVAL_IMG_SIZE: self.eval_img_size,
        }

    # The training sampler's position (seed, epoch, batches consumed) travels in every checkpoint, so a
    # resumed run continues with exactly the batches an uninterrupted one would see (data/sampler.py).
    def state_dict(self) -> dict[str, Any]:
        sampler, trainer = getattr(self, "_train_sampler", None), getattr(self, "trainer", None)
        if sampler is None or trainer is None:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return {"train_sampler": sampler.state_dict(done, done >= trainer.num_training_batches, self.batch_size)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_sampler_state = state_dict.get("train_sampler")

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        sampler = None
        if train and isinstance(ds, TransformedDataset):
            sampler = self._train_sampler = ResumableSampler(ds, state=getattr(self, "_train_sampler_state", None))
            self._train_sampler_state = None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train if sampler is None else None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and train,
            collate_fn=collate,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``data.normalize_on_device``: the train loader yields uint8 images (4x fewer bytes to collate, pin and
        copy, no float work in the workers: timm's prefetcher, FFCV); they are normalised here, on the device,
        with the loader's own ops (:func:`normalize_batch`), after the uint8 batch is made contiguous (a channels-last
        one from :func:`collate`): the model gets the NCHW layout it gets without the option. Lightning calls this for
        every batch of a fit."""
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor) \
                and batch[0].dtype == torch.uint8:
            batch = type(batch)([normalize_batch(batch[0].contiguous(), self.normalization), *batch[1:]])
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


def _stack(batch: Sequence[torch.Tensor], *, collate_fn_map=None) -> torch.Tensor:
    elem = batch[0]
    if elem.dtype == torch.uint8 and elem.dim() == 3 and not elem.is_contiguous() and elem.permute(1, 2, 0).is_contiguous():
        return collate_tensor_fn([t.permute(1, 2, 0) for t in batch]).permute(0, 3, 1, 2)
    return collate_tensor_fn(batch, collate_fn_map=collate_fn_map)


def collate(batch: Sequence[Any]) -> Any:
    """Every vitlab loader's ``collate_fn``: torch's ``default_collate``, except that uint8 images stored channels-last
    (HWC in memory: the packed reader's crops, as the uint8 resize kernel writes them) stack into a channels-last
    batch with row copies, in shared memory inside a worker as ``default_collate`` does. ``default_collate`` would
    stack them into a contiguous NCHW batch, a byte-by-byte transposition 20x slower than the copy. The values are
    the same; :meth:`VisionDataModule.on_after_batch_transfer` makes the batch contiguous on the device."""
    return collate_with(batch, collate_fn_map=_COLLATE_FNS)


_COLLATE_FNS = {**default_collate_fn_map, torch.Tensor: _stack}


def resolve_num_workers(num_workers: int | str) -> int:
    """``auto`` = one worker per available core minus one for the main process (at least 0)."""
    if num_workers == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS
            cores = os.cpu_count() or 1
        return max(0, min(8, cores - 1))
    try:
        n = int(num_workers)
    except (TypeError, ValueError):
        raise DataConfigError(f"data.num_workers={num_workers!r} must be an int >= 0 or 'auto'") from None
    if n < 0:
        raise DataConfigError(f"data.num_workers={n} must be >= 0 or 'auto'")
    return n
