"""What every on-disk dataset shares: finding the root, reading images with errors that name the file,
list files with errors that name the line, class folders, deterministic held-out splits, and a base
DataModule that checks the class count against the config.

Nothing here writes inside a dataset root; only an explicit ``data.download=true`` does (``download.py``).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from vitlab.data.base import DataConfigError, VisionDataModule

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root (or a file the layout needs) is not there; the message shows the expected layout."""


class DatasetFormatError(ValueError):
    """A file of the dataset is there but does not read as the format says (the message names file and line)."""


class CorruptImageError(RuntimeError):
    """An image file cannot be decoded; the message names the file."""


def require_dir(path: str | os.PathLike | None, name: str, layout: str, key: str = "data.root") -> Path:
    """``path`` as an existing directory, or an error that names it and shows the layout expected there."""
    if path in (None, "", "???"):
        raise DatasetNotFoundError(f"{key} is not set for data={name}: point it at a folder laid out as\n{layout}")
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise DatasetNotFoundError(
            f"{key}={path} {what} ({p.resolve()}). data={name} expects a folder laid out as\n{layout}"
        )
    return p


def require_file(path: Path, name: str, layout: str) -> Path:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing. data={name} expects:\n{layout}")
    return path


DECODERS = ("auto", "pil")


def load_image(path: str | os.PathLike, decoder: str = "auto") -> Image.Image | torch.Tensor:
    """Decode ``path`` to RGB; a missing or undecodable file raises an error naming it.

    ``auto`` decodes JPEGs with torchvision's libjpeg-turbo straight into a contiguous uint8 CHW
    tensor (measurably faster through the pipelines than PIL + conversion; see ``vitlab.data.bench``)
    and everything else, or a JPEG libjpeg refuses, with PIL. ``pil`` always uses PIL.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"image {path} is missing (it is listed by the dataset's index)") from None
    except OSError as e:
        raise CorruptImageError(f"cannot read image {path} ({e})") from e
    if decoder == "auto" and data[:3] == b"\xff\xd8\xff":
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # truncated or unusual: PIL gives the verdict (and the error message)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(
            f"cannot decode image {path} ({type(e).__name__}: {e}). Replace or delete the file, "
            "or set data.skip_corrupt=true to skip unreadable images with a warning"
        ) from e


class ImageListDataset(Dataset):
    """Image files + integer labels (+ optional per-item extras, e.g. ImageNet ReaL label sets).

    With ``skip_corrupt`` an undecodable file is replaced by the next readable one and counted in a
    warning that names it; otherwise it raises :class:`CorruptImageError` naming the file.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        targets: Sequence[int],
        skip_corrupt: bool = False,
        extras: Callable[[int], Any] | None = None,
        decoder: str = "auto",
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} image paths but {len(targets)} labels")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.skip_corrupt = skip_corrupt
        self.extras = extras
        if decoder not in DECODERS:
            raise DataConfigError(f"data.decoder={decoder!r} is not one of {DECODERS}")
        self.decoder = decoder
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        for attempt in range(min(len(self.paths), 64)):
            j = (i + attempt) % len(self.paths)
            try:
                img = load_image(self.paths[j], self.decoder)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                if self.paths[j] not in self.skipped:
                    self.skipped.add(self.paths[j])
                    warnings.warn(
                        f"data.skip_corrupt: skipped {self.paths[j]} ({len(self.skipped)} corrupt image(s) skipped "
                        f"so far in this process): {e.__cause__}",
                        stacklevel=2,
                    )
                continue
            if self.extras is None:
                return img, self.targets[j]
            return img, self.targets[j], self.extras(j)
        raise CorruptImageError(f"64 consecutive images from {self.paths[i]} on are unreadable: is the disk intact?")


def read_list_file(path: Path, root: Path, num_classes: int | None, check_files: bool = True) -> tuple[list[str], list[int]]:
    """``<relative path> <int label>`` per line (VTAB-1k lists); errors give the file and the line number."""
    if not path.is_file():
        raise DatasetNotFoundError(f"list file {path} is missing")
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                rel, label = parts[0], int(parts[1])
            except (IndexError, ValueError):
                raise DatasetFormatError(f"{path}:{n}: expected '<image path> <int label>', got {line!r}") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise DatasetFormatError(
                    f"{path}:{n}: label {label} is outside [0, {num_classes}) for {line!r}: "
                    "is data.task (or data.num_classes) right?"
                )
            img = root / rel
            if check_files and not img.is_file():
                raise DatasetNotFoundError(f"{path}:{n}: image {img} listed on this line does not exist")
            paths.append(str(img))
            labels.append(label)
    if not paths:
        raise DatasetFormatError(f"list file {path} has no '<image path> <label>' lines")
    return paths, labels


def list_class_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def scan_class_folders(
    directory: Path, classes: Sequence[str] | None = None, extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> tuple[list[str], list[int], list[str]]:
    """ImageFolder-style ``<directory>/<class>/**/<image>``; class index = position in sorted class names.

    With ``classes`` given (e.g. the train split's), a folder outside that list is an error naming it.
    """
    found = list_class_dirs(directory)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetFormatError(
                f"{directory} has class folder(s) {extra[:5]} that the train split does not have; "
                "every split must use the train split's classes"
            )
    if not classes:
        raise DatasetNotFoundError(f"{directory} holds no class sub-folders; expected {directory}/<class>/<image file>")
    paths, targets = [], []
    for idx, c in enumerate(classes):
        cdir = directory / c
        if not cdir.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            files += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(extensions) and not f.startswith(".")]
        files.sort()
        paths += files
        targets += [idx] * len(files)
    if not paths:
        raise DatasetNotFoundError(f"{directory} has class folders but no image files ({', '.join(extensions)})")
    return paths, targets, list(classes)


def holdout_mask(keys: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic held-out split by hashing each key (e.g. a relative path) with the seed.

    Stable: adding or removing images never moves the others between splits, and no file is written.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataConfigError(f"held-out fraction {fraction} must be in [0, 1)")
    if fraction == 0.0:
        return np.zeros(len(keys), dtype=bool)
    limit = int(fraction * 2**32)
    return np.array(
        [int.from_bytes(hashlib.sha1(f"{seed}:{k}".encode()).digest()[:4], "big") < limit for k in keys], dtype=bool
    )


class FileDataModule(VisionDataModule):
    """Base for datasets read from files: checks class counts and carries the corrupt-image policy."""

    #: the layout this dataset expects under ``data.root``, shown in every missing-file error
    layout = ""

    def __init__(self, skip_corrupt: bool = False, check_files: bool = True, decoder: str = "auto", **kwargs) -> None:
        kwargs.setdefault("num_workers", "auto")
        super().__init__(**kwargs)
        if decoder not in DECODERS:
            raise DataConfigError(f"data.decoder={decoder!r} is not one of {DECODERS}")
        self.decoder = decoder
        self.skip_corrupt = bool(skip_corrupt)
        self.check_files = bool(check_files)
        self.classes: list[str] | None = None

    def root_dir(self) -> Path:
        return require_dir(self.root, self.name, self.layout)

    def check_num_classes(self, found: int, where: str | Path) -> None:
        expected = getattr(self, "num_classes", None)
        if expected is None:
            self.num_classes = found
        elif int(expected) != found:
            raise DataConfigError(
                f"{where} has {found} classes but data.num_classes={expected}: set data.num_classes={found} "
                "(the model's head follows it) or point data.root at the full dataset"
            )

    def images(self, paths, targets, extras=None) -> ImageListDataset:
        return ImageListDataset(paths, targets, skip_corrupt=self.skip_corrupt, extras=extras, decoder=self.decoder)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "data/root": str(self.root)}


def class_counts(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    return torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes)
