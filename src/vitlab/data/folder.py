"""``data=folder``: any ImageFolder-style tree, a user's own data in one line.

    python -m vitlab.train data=folder data.root=/my/data

Accepted layouts (class index = position in the sorted class-folder names of the train split):

    <root>/train/<class>/**/<image>   + optional <root>/val/<class>/..., <root>/test/<class>/...
    <root>/<class>/**/<image>         (no split folders)

Where ``val/`` is missing, ``data.val_fraction`` of train is held out by hashing each file's path
(deterministic, stable when files are added, nothing written to disk). Where ``test/`` is missing,
the test split is the validation split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vitlab.data.files import HeldOutFileDataModule, holdout_mask, scan_class_folders
from vitlab.errors import DataConfigError

log = logging.getLogger("vitlab.data")

VAL_DIRS = ("val", "valid", "validation")


class FolderDataModule(HeldOutFileDataModule):
    name = "folder"
    default_train_pipeline = "pretrain"
    layout = (
        "  <root>/train/<class>/<image>  (+ optional <root>/val/<class>/..., <root>/test/<class>/...)\n"
        "  or <root>/<class>/<image>"
    )

    def train_dir(self, root: Path) -> Path:
        return root / "train" if (root / "train").is_dir() else root

    def split_dir(self, root: Path, names: tuple[str, ...]) -> Path | None:
        if not (root / "train").is_dir():
            return None
        return next((root / n for n in names if (root / n).is_dir()), None)

    def build_splits(self):
        root = self.root_dir()
        tdir = self.train_dir(root)
        paths, targets, classes = self.scan(tdir, root=root)
        self.classes = classes
        self.check_num_classes(len(classes), tdir)
        vdir = self.split_dir(root, VAL_DIRS)
        if vdir is not None:
            train = self.images(paths, targets)
            val = self.images(*self.scan(vdir, classes, root=root)[:2])
        else:
            train, val = self.holdout(paths, targets, tdir)
        sdir = self.split_dir(root, ("test",))
        if sdir is not None:
            test = self.images(*self.scan(sdir, classes, root=root)[:2])
        else:
            test = val
            held = f"{vdir}" if vdir is not None else f"data.val_fraction={self.val_fraction} of {tdir}, held out"
            log.warning("data=folder: %s has no test/ folder, so test/acc is measured on the val split (%s); add "
                        "<root>/test/<class>/ for a separate test split", root, held)
        return train, val, test

    def scan(self, directory: Path, classes: list[str] | None = None, root: Path | None = None):
        """``(paths, targets, classes)`` of a class-folder tree (imagenet21k caches this index)."""
        return scan_class_folders(directory, classes, root=root)

    def holdout(self, paths: list[str], targets: list[int], base: Path):
        if self.val_fraction == 0.0:
            raise DataConfigError(
                f"{base} has no val/ folder and data.val_fraction=0: set a fraction to hold out (e.g. 0.1) "
                "or add a val/<class>/ folder"
            )
        held = holdout_mask([str(Path(p).relative_to(base)) for p in paths], self.val_fraction, self.split_seed)
        if held.all() or not held.any():
            # a tiny folder can hash all one way: fall back to a seeded per-class draw that always has both sides
            rng = np.random.default_rng(self.split_seed)
            held = np.zeros(len(paths), dtype=bool)
            t = np.asarray(targets)
            for c in np.unique(t):
                idx = rng.permutation(np.flatnonzero(t == c))
                held[idx[: max(1, int(round(self.val_fraction * len(idx))))] if len(idx) > 1 else []] = True
        p, t = np.asarray(paths, dtype=object), np.asarray(targets)
        return self.images(p[~held].tolist(), t[~held].tolist()), self.images(p[held].tolist(), t[held].tolist())
