"""What every on-disk dataset shares: finding the root, reading images with errors that name the file,
list files with errors that name the line, class folders, deterministic held-out splits, and a base
DataModule that checks the class count against the config.

Nothing here writes inside a dataset root; only an explicit ``data.download=true`` does (``download.py``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn.functional import interpolate
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2.functional import pil_to_tensor

try:  # libjpeg-turbo's TurboJPEG API in a wheel: a header read and a (DCT-scaled) decode, no Python image object
    import simplejpeg
except ImportError:  # torchvision's libjpeg-turbo then decodes: the same pixels, slower (log_jpeg_backend says so once)
    simplejpeg = None

from vitlab import metrics as M
from vitlab.data.base import VisionDataModule, check_val_fraction
from vitlab.data.transforms import InceptionCropBox
from vitlab.data.tree import ancestor_keys, list_class_dirs, walk_files
from vitlab.errors import (
    CorruptImageError,
    DataConfigError,
    DatasetFormatError,
    DatasetNotFoundError,
    RefusedImageError,
)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


#: ``data.max_image_pixels`` default: PIL's own warning threshold (2**30 // 4 // 3 = 89.5 Mpx, e.g. 9459 x 9459;
#: 256 MiB decoded as RGB). Photos in vision datasets are far smaller (ImageNet's average about 0.2 Mpx; a
#: 50 Mpx camera stays under it), so no real image is refused, while a 20000 x 20000 JPEG bomb (400 Mpx from a 5 MB
#: file, 1.2 GB decoded) is 4.5x over and a 65535^2 one 48x over. Checked on the header, before any decoding.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: ``data.max_file_bytes`` default: 512 MiB. An uncompressed RGB image at the pixel limit (BMP/TIFF, 256 MiB) fits;
#: dataset JPEGs and PNGs are a few MB. A bigger (or sparse, multi-GB) file is refused from its size, unread.
DEFAULT_MAX_FILE_BYTES = 512 * 2**20


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
JPEG_MAGIC = b"\xff\xd8\xff"
log = logging.getLogger(__name__)


@functools.cache
def log_jpeg_backend() -> None:
    """Say once per process when JPEGs decode through the slower fallback (torchvision's libjpeg-turbo, the same
    pixels: ``tests/test_packed.py::test_drafted_224px_crop_is_the_torchvision_imagefolder_sample``)."""
    if simplejpeg is None:
        log.info("simplejpeg is not installed: JPEGs decode through torchvision's libjpeg-turbo (the same pixels, "
                 "slower); pip install simplejpeg")


def positive_int(value: Any, key: str) -> int:
    """``value`` as an int > 0, or a :class:`DataConfigError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataConfigError(f"{key}={value!r} must be a positive int")
    return value


def decode_limits(decoder: str, max_image_pixels: Any, max_file_bytes: Any) -> tuple[str, int, int]:
    """``data.decoder``, ``data.max_image_pixels`` and ``data.max_file_bytes`` checked (a :class:`DataConfigError`
    naming the key otherwise): what a file dataset and its data module both hold."""
    if decoder not in DECODERS:
        raise DataConfigError(f"data.decoder={decoder!r} is not one of {DECODERS}")
    return (decoder, positive_int(max_image_pixels, "data.max_image_pixels"),
            positive_int(max_file_bytes, "data.max_file_bytes"))


def _refusal_hint(key: str) -> str:
    return (
        f"Replace or delete the file, raise {key} if it is genuine, "
        "or set data.skip_corrupt=true to skip such files with a warning"
    )


def read_image_bytes(path: str | os.PathLike, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, what: str = "image") -> bytes:
    """The bytes of ``path`` (``what`` names it in errors), if it is a regular file of at most ``max_file_bytes``.

    Special files are refused by ``stat`` before they are opened: a FIFO named ``x.jpg`` would block ``open``
    for ever, and a link to ``/dev/zero`` would be read until memory runs out. The file is then opened
    non-blocking and checked again on the open descriptor (nothing can be swapped in between), and at most
    ``max_file_bytes + 1`` bytes are read, whatever the size the file claims.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{what} {path} is missing (it is listed by the dataset's index)") from None
    except OSError as e:
        raise CorruptImageError(f"cannot read {what} {path} ({e})") from e

    def check(st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            kind = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                    stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(st.st_mode), "not a file")
            raise RefusedImageError(
                f"{what} {path} is {kind}, not a regular file ({os.path.realpath(path)}); vitlab reads only regular "
                "files. Replace or delete it, or set data.skip_corrupt=true to skip such files with a warning"
            )
        if st.st_size > max_file_bytes:
            raise RefusedImageError(
                f"{what} {path} is {st.st_size:,} bytes, more than data.max_file_bytes={max_file_bytes:,}. "
                + _refusal_hint("data.max_file_bytes")
            )

    check(st)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CorruptImageError(f"cannot read {what} {path} ({e})") from e
    with open(fd, "rb") as f:
        check(os.fstat(fd))
        try:
            data = f.read(max_file_bytes + 1)
        except OSError as e:
            raise CorruptImageError(f"cannot read {what} {path} ({e})") from e
    if len(data) > max_file_bytes:  # it grew after the check, or claims a size it does not have (/proc)
        raise RefusedImageError(
            f"{what} {path} holds more than data.max_file_bytes={max_file_bytes:,} bytes. "
            + _refusal_hint("data.max_file_bytes")
        )
    return data


def _let_pil_open(max_image_pixels: int) -> None:
    """Make ``data.max_image_pixels`` the one limit: PIL refuses images over twice its own global
    ``MAX_IMAGE_PIXELS`` before vitlab's check runs, so a limit set above PIL's is passed on to PIL.
    Only ever raised, and only when asked for: a lower ``data.max_image_pixels`` is enforced by vitlab."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_image_pixels:
        Image.MAX_IMAGE_PIXELS = max_image_pixels


def load_image(
    path: str | os.PathLike,
    decoder: str = "auto",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Image.Image | torch.Tensor:
    """Decode ``path`` to RGB; a missing, oversized or undecodable file raises an error naming it.

    ``auto`` decodes JPEGs with libjpeg-turbo (simplejpeg's, else torchvision's) straight into a uint8 CHW
    tensor (measurably faster through the pipelines than PIL + conversion, the same pixels; see
    ``vitlab.bench.data``) and everything else, or a JPEG libjpeg refuses, with PIL. ``pil`` always uses PIL.

    Whatever the decoder, the file is first opened lazily by PIL, which reads only the header, and the
    pixel count it declares is checked against ``max_image_pixels``: a decompression bomb (a few MB
    declaring 20000 x 20000) is refused before a single pixel buffer is allocated.
    """
    return decode_image_bytes(read_image_bytes(path, max_file_bytes), path, decoder, max_image_pixels)


def check_declared_pixels(w: int, h: int, path: str | os.PathLike, max_image_pixels: int) -> None:
    """Refuse an image from the size its header declares, before a single pixel is decoded."""
    if w * h > max_image_pixels:
        raise RefusedImageError(
            f"image {path} declares {w}x{h} = {w * h:,} pixels, more than data.max_image_pixels="
            f"{max_image_pixels:,}; refused before decoding (a decompression bomb?). "
            + _refusal_hint("data.max_image_pixels")
        )
    if w <= 0 or h <= 0:
        raise CorruptImageError(
            f"image {path} declares an empty size {w}x{h}. Replace or delete the file, "
            "or set data.skip_corrupt=true to skip unreadable images with a warning"
        )


def dct_reduction(side: int, min_side: float) -> int:
    """The largest JPEG DCT scaling 1/r (r in 1, 2, 4, 8) that keeps ``side`` >= ``min_side`` pixels."""
    r = 1
    while r < 8 and side // (2 * r) >= min_side:
        r *= 2
    return r


def decode_image_bytes(
    data: bytes | memoryview,
    path: str | os.PathLike,
    decoder: str = "auto",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    plan: Callable[[int, int], tuple[int, int]] | None = None,
) -> Image.Image | torch.Tensor:
    """Decode an image file's bytes (``path`` names it in errors) after checking the pixel count its
    header declares against ``max_image_pixels``: every decoder of vitlab goes through here.

    A JPEG (unless ``decoder="pil"``) is decoded by libjpeg-turbo into a uint8 CHW tensor: simplejpeg's, which
    reads the header and decodes with the same library (so the size checked is the size decoded), else
    torchvision's. Whatever libjpeg-turbo refuses (CMYK, damaged files) and other formats go to PIL, which
    gives the verdict and the error message.

    ``plan(width, height)``, called once with the size the header declares (after the check), returns
    ``(r, rows)``: a factor r (1, 2, 4 or 8, see :func:`dct_reduction`), and the rows from the top the caller
    will read (``height`` for all). A JPEG is then decoded at 1/r scale (libjpeg's DCT scaling; the packed
    reader's ``data.draft``); at full scale, only its top ``rows`` rows where :func:`decode_jpeg_top_rows` can
    (the returned image is then shorter; its pixels are the full decode's). Other formats decode whole. The drafted
    inception crop draws its crop inside ``plan``, from this one header parse."""
    _let_pil_open(max_image_pixels)
    plan = functools.cache(plan) if plan is not None else None  # one call (one crop drawn), whichever path
    is_jpeg = bytes(data[:3]) == JPEG_MAGIC
    if is_jpeg and decoder != "pil" and simplejpeg is not None:
        img = _decode_simplejpeg(data, path, max_image_pixels, plan)
        if img is not None:
            return img
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below names the key
            im = Image.open(io.BytesIO(data))  # lazy: parses the header, decodes nothing
        with im:
            check_declared_pixels(*im.size, path, max_image_pixels)
            w, h = im.size
            r = plan(w, h)[0] if plan is not None else 1
            if r > 1 and is_jpeg:
                im.draft("RGB", (w // r, h // r))  # PIL picks the largest scale whose output is >= this
                return im.convert("RGB")
            if decoder == "auto" and is_jpeg:
                try:  # libjpeg-turbo reads the same (single, else it errors) SOF header PIL just checked
                    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
                except RuntimeError:
                    pass  # truncated or unusual: PIL gives the verdict (and the error message)
            if decoder == "torchvision":  # libjpeg-turbo / libpng for every format torchvision reads (packed shards)
                try:
                    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
                except RuntimeError:
                    pass
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return im.convert("RGB")
    except Image.DecompressionBombError as e:  # PIL's own check (never below ours): on open, or in a frame or tile
        raise RefusedImageError(
            f"image {path} declares more pixels than data.max_image_pixels={max_image_pixels:,} ({e}); refused "
            "before decoding. " + _refusal_hint("data.max_image_pixels")
        ) from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise CorruptImageError(
            f"cannot decode image {path} ({type(e).__name__}: {e}). Replace or delete the file, "
            "or set data.skip_corrupt=true to skip unreadable images with a warning"
        ) from e


def _decode_simplejpeg(data: bytes | memoryview, path: str | os.PathLike, max_image_pixels: int,
                       plan: Callable[[int, int], tuple[int, int]] | None) -> torch.Tensor | None:
    """A JPEG through simplejpeg: header, the pixel check, the decode at 1/r (or of the top rows), as a uint8 CHW
    view of the HWC array (the strides torchvision's ``decode_jpeg`` returns). None where libjpeg-turbo refuses
    the file."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB"):  # CMYK / YCCK: libjpeg-turbo has no RGB for them, PIL does
        return None
    check_declared_pixels(w, h, path, max_image_pixels)
    r, rows = plan(w, h) if plan is not None else (1, h)
    rgb = decode_jpeg_top_rows(data, rows) if r == 1 else None
    if rgb is None:
        try:  # 1/r is the smallest libjpeg-turbo scale M/8 whose output reaches ceil(size / r)
            rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // r), min_width=-(-w // r))
        except ValueError:
            return None
    return torch.from_numpy(rgb).permute(2, 0, 1)


#: JPEG frame types whose top rows decode alone: Huffman-coded baseline, extended sequential and progressive
_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)
#: rows decoded below the last one returned: libjpeg's smooth chroma upsampling (4:2:0, 4:4:0) reads the chroma
#: row below an output row, and at the frame's bottom edge it repeats the last row instead, so the returned rows
#: keep real neighbours (tests/test_packed.py pins every subsampling, progressive and restart markers too)
TOP_ROWS_MARGIN = 2


def jpeg_height_field(data: bytes | memoryview) -> int | None:
    """Offset of the frame header's 2-byte height in a Huffman-coded JPEG (SOF0/1/2), or None where the markers
    before it are anything but plain segments (a bounded walk over the segment lengths; nothing is trusted)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if m in _SOF_HUFFMAN:
            return i + 5 if i + 10 <= n else None
        if not (0xE0 <= m <= 0xEF or m in (0xDB, 0xC4, 0xDD, 0xFE)):  # APPn, DQT, DHT, DRI, COM only
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_jpeg_top_rows(data: bytes | memoryview, rows: int) -> np.ndarray | None:
    """The top ``rows`` (+ :data:`TOP_ROWS_MARGIN`) rows of a JPEG, as HWC uint8 RGB, decoded alone: the entropy
    decoding, inverse DCT and colour conversion of the rows below the crop are skipped. The frame header's
    height, in a copy of the bytes, is set to the rows needed; every row above the margin is the full decode's,
    bit for bit (libjpeg decodes top-down). None where the whole image is needed or the file is not a plain
    Huffman-coded JPEG ending in an EOI marker (a truncated file then gets the full, strict decode and its error).

    libjpeg-turbo then skips the rest of the scan as data after the shortened frame, and warns: hence
    ``strict=False``. Damaged files fare as on the full decode: a truncated one has no end marker, so it is decoded
    whole and strictly, and refused; corrupt scan data that libjpeg only warns about is decoded anyway on the full
    path too (by PIL, its fallback). Only a fatal error below the crop goes unseen, as the rows there are not read."""
    need = rows + TOP_ROWS_MARGIN
    if bytes(data[-2:]) != b"\xff\xd9" or (at := jpeg_height_field(data)) is None:
        return None
    height = (data[at] << 8) | data[at + 1]
    if need >= height:
        return None
    cut = bytearray(data)
    cut[at:at + 2] = need.to_bytes(2, "big")
    try:
        return simplejpeg.decode_jpeg(cut, "RGB", strict=False)[:rows]
    except ValueError:
        return None


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
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} image paths but {len(targets)} labels")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.skip_corrupt = skip_corrupt
        self.extras = extras
        self.decoder, self.max_image_pixels, self.max_file_bytes = decode_limits(decoder, max_image_pixels,
                                                                                 max_file_bytes)
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        for attempt in range(min(len(self.paths), 64)):
            j = (i + attempt) % len(self.paths)
            try:
                img = load_image(self.paths[j], self.decoder, self.max_image_pixels, self.max_file_bytes)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                if self.paths[j] not in self.skipped:
                    self.skipped.add(self.paths[j])
                    warnings.warn(
                        f"data.skip_corrupt: skipped {self.paths[j]} ({len(self.skipped)} corrupt image(s) skipped "
                        f"so far in this process): {e.__cause__ or e}",
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
            if Path(rel).is_absolute() or ".." in Path(rel).parts:  # a list names images inside its dataset only
                raise DatasetFormatError(
                    f"{path}:{n}: image path {rel!r} leaves the dataset folder {root}; list files name images by "
                    "paths relative to it, without '..'"
                )
            if check_files and not img.is_file():
                raise DatasetNotFoundError(f"{path}:{n}: image {img} listed on this line does not exist")
            paths.append(str(img))
            labels.append(label)
    if not paths:
        raise DatasetFormatError(f"list file {path} has no '<image path> <label>' lines")
    return paths, labels


def scan_class_folders(
    directory: Path,
    classes: Sequence[str] | None = None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    root: Path | None = None,
) -> tuple[list[str], list[int], list[str]]:
    """ImageFolder-style ``<directory>/<class>/**/<image>``; class index = position in sorted class names.

    With ``classes`` given (e.g. the train split's), a folder outside that list is an error naming it.
    Links are followed inside ``root`` (``data.root``; default ``directory``) only, and each folder once
    (:func:`walk_files`), so a symlink loop can neither hang the scan nor relabel images.
    """
    root = directory if root is None else root
    root_real = os.path.realpath(root)
    found = list_class_dirs(directory, root_real)
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
    above = ancestor_keys(directory, root_real)
    reals = {os.path.realpath(directory / c): c for c in found}
    paths, targets = [], []
    for idx, c in enumerate(classes):
        cdir = directory / c
        if c not in found:
            continue
        others = {r: name for r, name in reals.items() if name != c}
        files = walk_files(cdir, extensions, root_real, seen=above, elsewhere=others)
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

    def __init__(
        self,
        skip_corrupt: bool = False,
        check_files: bool = True,
        decoder: str = "auto",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_workers", "auto")
        super().__init__(**kwargs)
        self.decoder, self.max_image_pixels, self.max_file_bytes = decode_limits(decoder, max_image_pixels,
                                                                                 max_file_bytes)
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
        if self.decoder == "auto":
            log_jpeg_backend()
        return ImageListDataset(
            paths, targets, skip_corrupt=self.skip_corrupt, extras=extras, decoder=self.decoder,
            max_image_pixels=self.max_image_pixels, max_file_bytes=self.max_file_bytes,
        )

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), M.DATA_ROOT: str(self.root)}


class HeldOutFileDataModule(FileDataModule):
    """A file dataset whose dev split is a seeded, stable share of train (``data.val_fraction``, paper Table 4)."""

    def __init__(self, val_fraction: float = 0.1, split_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_fraction, self.split_seed = check_val_fraction(val_fraction), int(split_seed)


class DraftInceptionCrop:
    """The ``pretrain`` pipeline's inception crop, decoded at the smallest DCT scale that still covers it.

    The crop (top, left, height, width) is drawn on the full-size geometry read from the JPEG header, with the
    same RNG calls as ``v2.RandomResizedCrop`` (so the same per-sample seed gives the same crop). The image is
    then decoded at 1/r (r = 8, 4, 2) only if the crop still has >= ``size`` pixels on each side at that scale,
    so the final resize stays a downsample; otherwise at full size, and the result is then the standard
    pipeline's, bit for bit. The difference is resampling error only
    (``data.draft`` of ``data=packed``; ``tests/test_packed.py::test_drafted_inception_crop_differs_only_by_resampling_error``).
    """

    def __init__(self, size: int, scale: tuple[float, float], margin: float = 2.0) -> None:
        self.size, self.margin = int(size), float(margin)
        self.box = InceptionCropBox(scale)  # v2.RandomResizedCrop's draws (its default ratio)

    def __call__(self, data: bytes | memoryview, where: str, max_image_pixels: int) -> torch.Tensor:
        box: dict = {}

        def plan(w: int, h: int) -> tuple[int, int]:  # called once, from the header decode_image_bytes checks
            top, _, height, width = box["crop"] = self.box(h, w)
            box.update(full=(h, w), r=dct_reduction(min(height, width), self.margin * self.size))
            return box["r"], top + height  # the rows below the crop are not decoded

        img = decode_image_bytes(data, where, "torchvision", max_image_pixels, plan=plan)
        if isinstance(img, Image.Image):
            img = pil_to_tensor(img)
        (h_full, w_full), (h_img, w_img) = box["full"], img.shape[-2:]
        top, left, height, width = box["crop"]
        if box["r"] > 1 and (h_img, w_img) != (h_full, w_full):  # drafted: the same region on the smaller grid
            sy, sx = h_img / h_full, w_img / w_full
            top, left = round(top * sy), round(left * sx)
            height = max(1, min(round(height * sy), h_img - top))
            width = max(1, min(round(width * sx), w_img - left))
        # v2's resized_crop = this slice + the kernel call of its resize_image (the crop lies inside the image), without
        # the dispatch and checks: the crop copied into HWC order as a channels-last 1CHW batch (resize_image restrides
        # to that), so the uint8 kernel neither re-packs its input nor its output; the same pixels (tests/test_packed.py)
        crop = img[..., top:top + height, left:left + width].permute(1, 2, 0).contiguous()[None].permute(0, 3, 1, 2)
        if (height, width) != (self.size, self.size):  # resize_image returns a same-size image as it is
            crop = interpolate(crop, size=[self.size, self.size], mode="bilinear", align_corners=False, antialias=True)
        return crop[0]
