"""ImageNet (ILSVRC-2012) in the layouts people have on disk, with ReaL labels.

    <root>/train/<wnid>/*.JPEG                   always
    <root>/val/<wnid>/*.JPEG                     the "sorted" val most scripts make, or
    <root>/val/ILSVRC2012_val_XXXXXXXX.JPEG      the flat val as released, labelled by one of
        <root>/ILSVRC2012_devkit_t12/ (data/ILSVRC2012_validation_ground_truth.txt + data/meta.mat)
        <root>/ILSVRC2012_devkit_t12.tar.gz      (read in place, never unpacked)
        LOC_val_solution.csv                     (Kaggle: <root>/ILSVRC/Data/CLS-LOC/{train,val}
                                                  with the CSV in <root>)
    <root>/real.json                             optional ImageNet ReaL labels -> test/acc_real

Class index = position of the wnid in the sorted train folders (the standard order, the one timm and
the official checkpoints use). The test split is the official validation set; validation is a
held-out ``data.val_fraction`` of train (default 1%, the official code's ``train[99%:]`` minival),
chosen by hashing file names, or the official validation set with ``data.val_fraction=0``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat

from vitlab import metrics as M
from vitlab.data.files import IMG_EXTENSIONS, list_class_dirs, scan_class_folders
from vitlab.data.folder import FolderDataModule
from vitlab.errors import DatasetFormatError, DatasetNotFoundError

VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")
DEVKIT = "ILSVRC2012_devkit_t12"
GT_FILE = "ILSVRC2012_validation_ground_truth.txt"


def val_number(path: str | Path) -> int:
    m = VAL_NAME.search(Path(path).name)
    if not m:
        raise DatasetFormatError(f"{path}: an ImageNet val image is named ILSVRC2012_val_<8 digits>.JPEG")
    return int(m.group(1))


def read_loc_csv(path: Path) -> list[tuple[str, str, int]]:
    """Kaggle ``LOC_val_solution.csv``: (ImageId, wnid of the first box, line number) per row."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DatasetFormatError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header}")
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2 or not row[1].split():
                raise DatasetFormatError(f"{path}:{n}: expected '<ImageId>,<wnid> x0 y0 x1 y1 ...', got {row}")
            rows.append((row[0].strip(), row[1].split()[0], n))
    return rows


def read_devkit(path: Path) -> tuple[list[str], str]:
    """Val wnids in file-number order from the devkit folder or its .tar.gz (read in memory)."""
    if path.is_dir():
        meta_f, gt_f = path / "data" / "meta.mat", path / "data" / GT_FILE
        for f in (meta_f, gt_f):
            if not f.is_file():
                raise DatasetNotFoundError(f"{f} is missing: the devkit folder {path} is incomplete")
        meta, gt_text, gt_name = loadmat(meta_f, squeeze_me=True), gt_f.read_text(), str(gt_f)
    else:
        try:
            with tarfile.open(path) as tar:
                names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                if "meta.mat" not in names or GT_FILE not in names:
                    raise DatasetFormatError(f"{path} lacks data/meta.mat or data/{GT_FILE}: is it the ILSVRC2012 devkit?")
                meta = loadmat(io.BytesIO(tar.extractfile(names["meta.mat"]).read()), squeeze_me=True)
                gt_text = tar.extractfile(names[GT_FILE]).read().decode()
                gt_name = f"{path}:{names[GT_FILE].name}"
        except tarfile.TarError as e:
            raise DatasetFormatError(f"{path} is not a readable tar.gz ({e}); download the devkit again") from e
    synsets = np.atleast_1d(meta["synsets"])
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    wnids = []
    for n, line in enumerate(gt_text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            wnids.append(id_to_wnid[int(line)])
        except (KeyError, ValueError):
            raise DatasetFormatError(f"{gt_name}:{n}: {line!r} is not an ILSVRC2012_ID of a leaf synset in meta.mat") from None
    return wnids, gt_name


class ReaLLabels:
    """Per-test-image multi-hot of the ReaL label set (all zeros = excluded from ReaL accuracy)."""

    def __init__(self, sets: list[list[int]], num_classes: int) -> None:
        self.sets, self.num_classes = sets, num_classes

    def __call__(self, j: int) -> torch.Tensor:
        out = torch.zeros(self.num_classes, dtype=torch.bool)
        if self.sets[j]:
            out[self.sets[j]] = True
        return out


class ImageNetDataModule(FolderDataModule):
    name = "imagenet"
    default_train_pipeline = "pretrain"
    layout = (
        "  <root>/train/<wnid>/*.JPEG\n"
        "  <root>/val/<wnid>/*.JPEG, or a flat <root>/val/ILSVRC2012_val_XXXXXXXX.JPEG labelled by\n"
        f"    <root>/{DEVKIT}/ (or {DEVKIT}.tar.gz) or LOC_val_solution.csv (data.val_labels=<path>)\n"
        "  (Kaggle: <root>/ILSVRC/Data/CLS-LOC/{train,val} with LOC_val_solution.csv in <root>)\n"
        "  <root>/real.json (optional: ImageNet ReaL labels, data.real_labels)"
    )

    def __init__(self, val_labels: str | None = "auto", real_labels: str | None = "auto", **kwargs) -> None:
        kwargs.setdefault("val_fraction", 0.01)
        kwargs.setdefault("num_classes", 1000)
        super().__init__(**kwargs)
        self.val_labels, self.real_labels = val_labels, real_labels

    # ---- layout --------------------------------------------------------------------------------
    def base_dir(self, root: Path) -> Path:
        kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
        base = kaggle if kaggle.is_dir() else root
        for d in ("train", "val"):
            if not (base / d).is_dir():
                raise DatasetNotFoundError(f"{base / d} is missing. data=imagenet expects under data.root={self.root}:\n{self.layout}")
        return base

    def flat_val_labels(self, root: Path, base: Path) -> tuple[list[str], list[str], list[str]]:
        """(image paths, wnids, source lines) of the flat val folder, from the devkit or the Kaggle CSV."""
        src = self.find_val_labels(root, base)
        val = base / "val"
        paths, wnids, where = [], [], []
        if src.suffix == ".csv":
            for image_id, wnid, n in read_loc_csv(src):
                paths.append(val / f"{image_id}.JPEG")
                wnids.append(wnid)
                where.append(f"{src}:{n}")
        else:
            gt, gt_name = read_devkit(src)
            for i, wnid in enumerate(gt):
                paths.append(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
                wnids.append(wnid)
                where.append(f"{gt_name}:{i + 1}")
        if self.check_files:
            for p, w in zip(paths, where, strict=True):
                if not p.is_file():
                    raise DatasetNotFoundError(f"{w}: image {p} listed on this line does not exist")
        return [str(p) for p in paths], wnids, where

    def find_val_labels(self, root: Path, base: Path) -> Path:
        if self.val_labels not in (None, "auto"):
            p = Path(str(self.val_labels)).expanduser()
            if not p.exists():
                raise DatasetNotFoundError(f"data.val_labels={self.val_labels} does not exist ({p.resolve()})")
            return p
        if self.val_labels is not None:
            dirs = [root, base, *list(base.parents)[:3]]
            for d in dict.fromkeys(dirs):
                for name in ("LOC_val_solution.csv", DEVKIT, f"{DEVKIT}.tar.gz"):
                    if (d / name).exists():
                        return d / name
        raise DatasetNotFoundError(
            f"{base / 'val'} is a flat folder of ILSVRC2012_val_*.JPEG, and no labels for it were found. Put one of\n"
            f"  {root / DEVKIT}/ (data/{GT_FILE} + data/meta.mat) or {root / DEVKIT}.tar.gz\n"
            f"  {root / 'LOC_val_solution.csv'} (Kaggle)\n"
            "there, point data.val_labels at it, or sort val/ into <wnid>/ folders."
        )

    def real_sets(self, root: Path, test_paths: list[str]) -> ReaLLabels | None:
        if self.real_labels is None:
            return None
        path = root / "real.json" if self.real_labels == "auto" else Path(str(self.real_labels)).expanduser()
        if not path.is_file():
            if self.real_labels == "auto":
                return None
            raise DatasetNotFoundError(
                f"data.real_labels={self.real_labels} does not exist; get real.json from "
                "github.com/google-research/reassessed-imagenet or set data.real_labels=null"
            )
        try:
            real = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path} is not valid JSON ({e}); expected a list of label lists") from e
        if not isinstance(real, list):
            raise DatasetFormatError(f"{path} holds a {type(real).__name__}; ReaL's real.json is a list of label lists")
        sets = []
        for p in test_paths:
            num = val_number(p)
            if num > len(real):
                raise DatasetFormatError(f"{path} has {len(real)} entries but the val set has image {Path(p).name}")
            labels = real[num - 1]
            bad = [v for v in labels if not isinstance(v, int) or not 0 <= v < self.num_classes]
            if bad:
                raise DatasetFormatError(
                    f"{path}: entry {num - 1} ({Path(p).name}) has label(s) {bad} outside [0, {self.num_classes})"
                )
            sets.append(sorted(labels))
        return ReaLLabels(sets, self.num_classes)

    # ---- splits --------------------------------------------------------------------------------
    def build_splits(self):
        root = self.root_dir()
        base = self.base_dir(root)
        tdir = base / "train"
        paths, targets, classes = scan_class_folders(tdir, extensions=IMG_EXTENSIONS, root=root)
        self.classes = classes
        self.check_num_classes(len(classes), tdir)
        vdir = base / "val"
        if list_class_dirs(vdir, root):
            vpaths, vtargets, _ = scan_class_folders(vdir, classes, root=root)
        else:
            vpaths, wnids, where = self.flat_val_labels(root, base)
            index = {w: i for i, w in enumerate(classes)}
            vtargets = []
            for w, line in zip(wnids, where, strict=True):
                if w not in index:
                    raise DatasetFormatError(f"{line}: wnid {w} is not one of the {len(classes)} class folders in {tdir}")
                vtargets.append(index[w])
        order = np.argsort([Path(p).name for p in vpaths], kind="stable")  # file-number order, as real.json is
        vpaths, vtargets = [vpaths[i] for i in order], [vtargets[i] for i in order]
        test = self.images(vpaths, vtargets, extras=self.real_sets(root, vpaths))
        if self.val_fraction == 0.0:
            return self.images(paths, targets), self.images(vpaths, vtargets), test
        train, val = self.holdout(paths, targets, tdir)
        return train, val, test

    def stats(self):
        s = super().stats()
        s[M.DATA_REAL_LABELS] = bool(self.test_set is not None and getattr(self.test_set.base, "extras", None))
        return s
