"""CIFAR-10 and CIFAR-100, read from the official "python version" release as it unpacks.

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

(``data.root`` may also point at the ``cifar-*`` folder itself.) The batches are Python 2 pickles of
``{"data": uint8 (N, 3072), "labels" | "fine_labels" + "coarse_labels", ...}``; they are read with a
restricted unpickler that only accepts numpy arrays, so a tampered file cannot run code.

Validation follows the official ViT fine-tuning code: ``train[98%:]`` is held out as minival
(``data.val_fraction=0.02``; 0 trains on all 50,000 and validates on the test split).
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlab.data.base import check_val_fraction
from vitlab.data.download import fetch_archive, safe_extract
from vitlab.data.files import FileDataModule, read_image_bytes
from vitlab.data.memory import TensorImageDataset
from vitlab.errors import CorruptImageError, DataConfigError, DatasetFormatError, DatasetNotFoundError

#: the official archives (https://www.cs.toronto.edu/~kriz/cifar.html) and what they unpack to
ARCHIVES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetFormatError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only numpy arrays and lists")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
            except ImportError:  # pragma: no cover - numpy 1.x
                pass
        return super().find_class(module, name)


def load_batch(path: Path) -> dict[str, Any]:
    """One official CIFAR pickle (Python 2 ``str`` keys; Python 3 ``bytes`` keys are accepted too)."""
    try:
        # a regular file under the size cap only (a FIFO named data_batch_1 would block open() for ever)
        data = read_image_bytes(path, what="CIFAR batch")
        raw = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (FileNotFoundError, DatasetNotFoundError, CorruptImageError):
        raise
    except DatasetFormatError as e:
        raise DatasetFormatError(f"{path}: {e}") from None
    except Exception as e:
        raise DatasetFormatError(f"{path} is not a readable CIFAR python pickle ({type(e).__name__}: {e}); "
                                 "download the archive again") from e
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path} holds a {type(raw).__name__}, not the dict of a CIFAR batch")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _names(values) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def read_split(folder: Path, files: list[str], label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int64 labels from the given batch files, in file order."""
    xs, ys = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is missing: the CIFAR folder {folder} is incomplete; unpack the archive again")
        b = load_batch(path)
        if "data" not in b or label_key not in b:
            raise DatasetFormatError(f"{path} has keys {sorted(b)}; a CIFAR batch needs 'data' and {label_key!r}")
        x = np.asarray(b["data"], dtype=np.uint8)
        y = np.asarray(b[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DatasetFormatError(f"{path}: 'data' is {x.shape} with {len(y)} labels; expected (N, 3072) uint8 and N labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
            raise DatasetFormatError(f"{path}: label {int(y[bad])} of image {bad} is outside [0, {num_classes})")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


class CIFARDataModule(FileDataModule):
    """``data=cifar10`` / ``data=cifar100`` (``data.label_mode=coarse`` for CIFAR-100's 20 superclasses)."""

    default_train_pipeline = "finetune"

    def __init__(
        self,
        variant: str = "cifar10",
        label_mode: str = "fine",
        val_fraction: float = 0.02,
        download: bool = False,
        download_url: str | None = None,
        **kwargs,
    ) -> None:
        if variant not in ARCHIVES:
            raise DataConfigError(f"data.variant={variant!r} is not one of {sorted(ARCHIVES)}")
        if label_mode not in ("fine", "coarse") or (variant == "cifar10" and label_mode != "fine"):
            raise DataConfigError(f"data.label_mode={label_mode!r}: CIFAR-100 takes 'fine' or 'coarse', CIFAR-10 only 'fine'")
        val_fraction = check_val_fraction(val_fraction)
        kwargs.setdefault("name", variant)
        kwargs.setdefault("img_size", 32)
        kwargs.setdefault("num_workers", 0)
        kwargs.setdefault("eval_pipeline", "none")  # vit_jax resizes CIFAR test images straight to the resolution
        super().__init__(**kwargs)
        self.variant, self.label_mode, self.val_fraction = variant, label_mode, float(val_fraction)
        self.download, self.download_url = bool(download), download_url
        self.spec = ARCHIVES[variant]
        self.layout = (
            f"  <root>/{self.spec['folder']}/{{{', '.join(self.spec['train'] + self.spec['test'] + [self.spec['meta']])}}}\n"
            f"  (the official python version, {self.spec['url']}, unpacked; or set data.download=true)"
        )

    def folder(self) -> Path:
        if self.root in (None, ""):
            raise DatasetNotFoundError(f"data.root is not set for data={self.name}; expected\n{self.layout}")
        root = Path(str(self.root)).expanduser()
        for cand in (root / self.spec["folder"], root):
            if (cand / self.spec["test"][0]).is_file():
                return cand
        if self.download:
            archive = fetch_archive(
                self.download_url or self.spec["url"], root, self.spec["filename"], self.spec["md5"],
                expected=str(root / self.spec["folder"] / self.spec["test"][0]),
            )
            safe_extract(archive, root)
            if (root / self.spec["folder"] / self.spec["test"][0]).is_file():
                return root / self.spec["folder"]
            raise DatasetFormatError(f"{archive} unpacked, but {root / self.spec['folder']} is still missing its files")
        where = "does not exist" if not root.exists() else "has no CIFAR batches"
        raise DatasetNotFoundError(
            f"data.root={self.root} {where} ({root.resolve()}). data={self.name} expects\n{self.layout}\n"
            f"Put {self.spec['filename']} (MD5 {self.spec['md5']}) in {root} and set data.download=true to check and unpack it."
        )

    def class_names(self) -> list[str]:
        meta = load_batch(self.folder() / self.spec["meta"])
        key = "label_names" if self.variant == "cifar10" else f"{self.label_mode}_label_names"
        if key not in meta:
            raise DatasetFormatError(f"{self.folder() / self.spec['meta']} has no {key!r} (keys: {sorted(meta)})")
        return _names(meta[key])

    def build_splits(self):
        folder = self.folder()
        self.classes = self.class_names()
        self.check_num_classes(len(self.classes), folder / self.spec["meta"])
        key = "labels" if self.variant == "cifar10" else f"{self.label_mode}_labels"
        x, y = read_split(folder, self.spec["train"], key, self.num_classes)
        xt, yt = read_split(folder, self.spec["test"], key, self.num_classes)
        n_val = int(round(self.val_fraction * len(y)))
        test = TensorImageDataset(_chw(xt), yt)
        if n_val == 0:
            return TensorImageDataset(_chw(x), y), test, test
        cut = len(y) - n_val  # train[:98%] / train[98%:], as the official ViT fine-tuning code holds out
        return TensorImageDataset(_chw(x[:cut]), y[:cut]), TensorImageDataset(_chw(x[cut:]), y[cut:]), test


def _chw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x))
