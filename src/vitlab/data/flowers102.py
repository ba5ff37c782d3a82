"""Oxford Flowers-102 in its official release layout.

    <root>/jpg/image_00001.jpg ... image_08189.jpg    (102flowers.tgz unpacked)
    <root>/imagelabels.mat   'labels': 1 x 8189, class 1..102 of image i
    <root>/setid.mat         'trnid', 'valid', 'tstid': 1-based image ids of each split

Train = trnid (1,020) minus a held-out ``data.val_fraction`` dev split (the paper picks the fine-tuning lr on
10% of train, App. B.1.1), val = that dev split, test = tstid (6,149). ``data.val_fraction=0`` validates on
the official valid split (1,020) instead; ``data.train_split=trainval`` trains on trnid + valid.
Class index = label - 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from vitlab.data.base import check_val_fraction
from vitlab.data.files import FileDataModule, holdout_mask, require_file
from vitlab.errors import DataConfigError, DatasetFormatError, DatasetNotFoundError


def load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        m = loadmat(path)
    except Exception as e:
        raise DatasetFormatError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}); download it again") from e
    missing = [k for k in keys if k not in m]
    if missing:
        raise DatasetFormatError(f"{path} lacks {missing} (has {sorted(k for k in m if not k.startswith('__'))})")
    return {k: np.asarray(m[k]).astype(np.int64).ravel() for k in keys}


class Flowers102DataModule(FileDataModule):
    name = "flowers102"
    num_classes = 102
    default_train_pipeline = "finetune"
    layout = "  <root>/jpg/image_XXXXX.jpg, <root>/imagelabels.mat, <root>/setid.mat  (the official release)"

    def __init__(self, train_split: str = "train", val_fraction: float = 0.1, split_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if train_split not in ("train", "trainval"):
            raise DataConfigError(f"data.train_split={train_split!r} is not one of ['train', 'trainval']")
        val_fraction = check_val_fraction(val_fraction)
        self.train_split = train_split
        self.val_fraction, self.split_seed = val_fraction, int(split_seed)

    def build_splits(self):
        root = self.root_dir()
        labels_f = require_file(root / "imagelabels.mat", self.name, self.layout)
        setid_f = require_file(root / "setid.mat", self.name, self.layout)
        labels = load_mat(labels_f, ("labels",))["labels"]
        ids = load_mat(setid_f, ("trnid", "valid", "tstid"))
        k = int(self.num_classes)
        if labels.min() < 1 or labels.max() > k:
            bad = int(np.flatnonzero((labels < 1) | (labels > k))[0])
            raise DatasetFormatError(f"{labels_f}: labels[{bad}] = {labels[bad]} (image_{bad + 1:05d}.jpg) is outside 1..{k}")
        if len(np.unique(labels)) != k:
            raise DataConfigError(
                f"{labels_f} has {len(np.unique(labels))} classes but data.num_classes={k}: "
                f"set data.num_classes={len(np.unique(labels))} for a partial copy"
            )
        self.classes = [str(i) for i in range(1, k + 1)]

        def split(key: str):
            sel = ids[key]
            if sel.min() < 1 or sel.max() > len(labels):
                bad = int(sel[(sel < 1) | (sel > len(labels))][0])
                raise DatasetFormatError(f"{setid_f}: {key} has image id {bad}, outside 1..{len(labels)} of imagelabels.mat")
            paths = [root / "jpg" / f"image_{i:05d}.jpg" for i in sel]
            if self.check_files:
                for i, p in zip(sel, paths, strict=True):
                    if not p.is_file():
                        raise DatasetNotFoundError(f"{setid_f}: {key} lists image id {i}, but {p} does not exist")
            return [str(p) for p in paths], [int(labels[i - 1]) - 1 for i in sel]

        (tp, tl), (vp, vl), (sp, sl) = split("trnid"), split("valid"), split("tstid")
        if self.train_split == "trainval":
            tp, tl = tp + vp, tl + vl
        if self.val_fraction == 0.0:
            return self.images(tp, tl), self.images(vp, vl), self.images(sp, sl)
        held = holdout_mask([Path(p).name for p in tp], self.val_fraction, self.split_seed)
        keep = [i for i, h in enumerate(held) if not h]
        dev = [i for i, h in enumerate(held) if h]
        return (self.images([tp[i] for i in keep], [tl[i] for i in keep]),
                self.images([tp[i] for i in dev], [tl[i] for i in dev]), self.images(sp, sl))
