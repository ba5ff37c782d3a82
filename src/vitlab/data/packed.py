"""``data=packed``: a dataset packed by ``vitlab.pack`` into litdata shards, read from disk or S3.

    python -m vitlab.pack data=imagenet21k data.root=/datasets/imagenet21k out=/shards/in21k
    python -m vitlab.train data=packed data.root=/shards/in21k           # or data.root=s3://bucket/in21k

Layout written by ``vitlab.pack`` (``vitlab_pack.json`` is written last: a folder without it is not a
finished pack and is never read):

    <root>/vitlab_pack.json          classes, counts, pack options, vitlab version, per-chunk sizes + sha256
    <root>/<split>/index.json        litdata's index of the split's chunks
    <root>/<split>/chunk-*.bin       litdata chunks of {image: encoded bytes, label, index[, extra]}
    <root>/<split>/labels.npy        the labels in stored order (subsets without reading images)

Why map-style: each split is read by index through litdata's chunk reader (``batch_decode=0``: one
item per read, ~60 us on this machine), so the sampler of every other dataset applies unchanged:
``data.train_size`` subsets (base.py), the ``ResumableSampler`` that shards by rank (DDP) and by
DataLoader worker (batches), and exact mid-epoch resume with per-sample augmentation seeds
(data/sampler.py). litdata supplies the on-disk format, the local/S3 reading and the chunk cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitlab import metrics as M
from vitlab.data.base import DataConfigError, VisionDataModule
from vitlab.data.files import (
    DEFAULT_MAX_IMAGE_PIXELS,
    CorruptImageError,
    DatasetNotFoundError,
    dct_reduction,
    decode_image_bytes,
    positive_int,
)
from vitlab.data.transforms import DraftInceptionCrop, FlipNormalize
from vitlab.errors import PackedDataError

log = logging.getLogger(__name__)

#: version of the layout above; a reader refuses any other
PACK_FORMAT = 1
MANIFEST = "vitlab_pack.json"
SPLITS = ("train", "val", "test")
#: env var: a folder where every process appends the (split, index) pairs it reads (sharding tests)
TRACE_ENV = "VITLAB_PACKED_TRACE"


def is_url(root: str | os.PathLike) -> bool:
    return "://" in str(root)


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


# ---- remote access (S3 through boto3, which litdata itself uses) ----------------------------------------
def s3_client(timeout: float):
    """A boto3 S3 client that gives up after ``timeout`` seconds (``AWS_ENDPOINT_URL`` picks a local server)."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
    return boto3.client("s3", config=cfg, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _split_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise DataConfigError(f"data.root={url}: only local folders and s3:// URLs are supported")
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key.strip("/")


def read_remote(url: str, timeout: float) -> bytes:
    """The bytes of one object; an unreachable server or missing object is an error naming the URL."""
    bucket, key = _split_url(url)
    try:
        return s3_client(timeout).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as e:  # botocore raises many types: connection, timeout, NoSuchKey, credentials
        raise DatasetNotFoundError(
            f"cannot read {url} ({type(e).__name__}: {e}); within data.timeout={timeout}s. Check the URL, "
            "AWS_ENDPOINT_URL and your credentials"
        ) from e


def list_remote_sizes(url: str, timeout: float) -> dict[str, int]:
    bucket, prefix = _split_url(url)
    client, sizes, token = s3_client(timeout), {}, None
    try:
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix + "/"}
            if token:
                kw["ContinuationToken"] = token
            page = client.list_objects_v2(**kw)
            for obj in page.get("Contents", []):
                sizes[obj["Key"][len(prefix) + 1:]] = int(obj["Size"])
            token = page.get("NextContinuationToken")
            if not token:
                return sizes
    except Exception as e:
        raise DatasetNotFoundError(f"cannot list {url} ({type(e).__name__}: {e}) within data.timeout={timeout}s") from e


def read_bytes(root: str, rel: str, timeout: float = 30.0) -> bytes:
    if is_url(root):
        return read_remote(f"{str(root).rstrip('/')}/{rel}", timeout)
    path = Path(root) / rel
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing")
    return path.read_bytes()


# ---- the manifest --------------------------------------------------------------------------------------
def read_manifest(root: str | os.PathLike, timeout: float = 30.0) -> dict[str, Any]:
    """``vitlab_pack.json`` of a finished pack, checked for format; errors name the folder and the fix."""
    root = str(root)
    if root in ("", "???", "None"):
        raise DatasetNotFoundError("data.root is not set: data=packed needs data.root=<folder or s3:// URL written by vitlab.pack>")
    if not is_url(root):
        p = Path(root).expanduser()
        if not p.is_dir():
            raise DatasetNotFoundError(f"data.root={root} does not exist ({p.resolve()}); pack a dataset there with "
                                       f"`python -m vitlab.pack data=<dataset> out={root}`")
        if not (p / MANIFEST).is_file():
            partial = (p / ".pack_state.json").is_file()
            raise DatasetNotFoundError(
                f"{p / MANIFEST} is missing: {root} is "
                + ("an unfinished pack (interrupted): run the same `python -m vitlab.pack` command again to finish it"
                   if partial else "not a folder written by `python -m vitlab.pack`")
            )
    raw = read_bytes(root, MANIFEST, timeout)
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise PackedDataError(f"{root}/{MANIFEST} is not valid JSON ({e}): the pack is damaged; pack again") from e
    check_manifest(meta, root)
    return meta


def check_manifest(meta: dict[str, Any], root: str) -> None:
    from vitlab import __version__

    fmt, ver = meta.get("format"), meta.get("vitlab_version", "unknown")
    if fmt != PACK_FORMAT:
        raise PackedDataError(
            f"{root} was packed by vitlab {ver} (pack format {fmt}); this vitlab {__version__} reads pack format "
            f"{PACK_FORMAT}: pack it again with this version (python -m vitlab.pack ... pack.overwrite=true)"
        )
    if ver != __version__:
        log.warning("%s was packed by vitlab %s, this is vitlab %s (same pack format %d)", root, ver, __version__, fmt)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise PackedDataError(f"{root}/{MANIFEST} has no class table ('classes')")
    for split, s in meta.get("splits", {}).items():
        if s.get("classes_sha256", class_table_hash(classes)) != class_table_hash(classes):
            raise PackedDataError(f"{root}/{split} was packed with another class table than {root}/{MANIFEST}; "
                                  "pack the whole dataset again into an empty folder")


def class_table_hash(classes: list[str]) -> str:
    return hashlib.sha256("\n".join(map(str, classes)).encode()).hexdigest()


def class_table_diff(expected: list[str], found: list[str]) -> str:
    if len(expected) != len(found):
        return f"{len(found)} classes instead of {len(expected)}"
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(expected, found, strict=True)) if a != b]
    shown = ", ".join(f"#{i}: {b!r} instead of {a!r}" for i, a, b in diff[:5])
    return f"{len(diff)} class name(s) differ ({shown})"


def check_chunks(root: str, split: str, info: dict[str, Any], verify: bool, timeout: float) -> None:
    """Every chunk the manifest lists is there with its size (and sha256 with ``verify``), or a named error.

    This is what keeps a missing or truncated shard from reading as a short epoch.
    """
    remote = list_remote_sizes(f"{root.rstrip('/')}/{split}", timeout) if is_url(root) else None
    for c in info["chunks"]:
        where = f"{root.rstrip('/')}/{split}/{c['filename']}"
        size = remote.get(c["filename"]) if remote is not None else (
            os.path.getsize(Path(root) / split / c["filename"]) if (Path(root) / split / c["filename"]).is_file() else None)
        if size is None:
            raise PackedDataError(f"shard {where} is missing ({c['items']} images of split {split!r}); "
                                  "copy it again from the original pack, or re-pack")
        if size != c["bytes"]:
            raise PackedDataError(f"shard {where} is truncated or damaged: {size} bytes, the pack wrote {c['bytes']}; "
                                  "copy it again from the original pack, or re-pack")
        if verify and remote is None and sha256_file(Path(root) / split / c["filename"]) != c["sha256"]:
            raise PackedDataError(f"shard {where} fails its sha256 check: the bytes changed after packing; re-pack")


# ---- decoding -------------------------------------------------------------------------------------------
def decode(data: bytes | memoryview, draft_min_side: int | None = None, where: str = "packed image",
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image | torch.Tensor:
    """Encoded image -> uint8 CHW tensor (libjpeg-turbo / libpng via torchvision) or RGB PIL image.

    It is ``files.decode_image_bytes``, the one decoder with the header check of ``data.max_image_pixels``:
    shards come from other people too, and a bomb inside one costs no more than a normal image.
    With ``draft_min_side``, a JPEG is decoded at reduced scale (DCT scaling): the pipeline's crop and resize
    then start from fewer pixels and cover the same image region, up to resampling error.
    """
    reduce = None if not draft_min_side else lambda w, h: dct_reduction(min(w, h), draft_min_side)
    return decode_image_bytes(bytes(data), where, "torchvision", max_image_pixels, reduce)


class PackedSplit(Dataset):
    """One split of a pack, by index: ``(image, label[, extra])`` like every other vitlab dataset."""

    def __init__(self, root: str, split: str, info: dict[str, Any], labels: np.ndarray,
                 cache_dir: str | None = None, timeout: float = 30.0) -> None:
        self.root, self.split, self.info = str(root), split, info
        self.targets = [int(t) for t in labels]
        self.cache_dir, self.timeout = cache_dir, timeout
        self.draft_min_side: int | None = None  # set by the DataModule from the stage's pipeline
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # set by the DataModule (data.max_image_pixels)
        self.crop: DraftInceptionCrop | None = None  # set for pretrain + data.draft: the crop happens at decode
        self._ds = None
        self._trace = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self):  # workers open their own readers
        return {**self.__dict__, "_ds": None, "_trace": None}

    def _reader(self):
        if self._ds is None:
            from litdata import StreamingDataset

            url = f"{self.root.rstrip('/')}/{self.split}"
            kw = {}
            if is_url(self.root):
                cache = Path(self.cache_dir or os.path.join(tempfile.gettempdir(), "vitlab_packed_cache"))
                kw["cache_dir"] = str(cache / hashlib.sha1(url.encode()).hexdigest()[:16])
            else:
                url = str(Path(url).resolve())
            self._ds = StreamingDataset(url, batch_decode=0, **kw)
            # len(StreamingDataset) is this rank's share under DDP; an int index is global: count the whole split
            total = sum(int(end) - int(start) for start, end in self._ds.region_of_interest)
            if total != len(self.targets):
                raise PackedDataError(f"{url}: litdata's index lists {total} images, the pack's manifest "
                                      f"{len(self.targets)}: the split folder was changed after packing; re-pack")
        return self._ds

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0 or i >= len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images of split {self.split!r}")
        item = self._reader()[i]
        if int(item["label"]) != self.targets[i]:
            raise PackedDataError(f"{self.root}/{self.split}: image {i} has label {item['label']} in its shard but "
                                  f"{self.targets[i]} in labels.npy; the pack is damaged: re-pack")
        if os.environ.get(TRACE_ENV):
            self._log_read(i)
        where = f"image {i} of {self.root}/{self.split}"
        try:
            if self.crop is not None:
                img = self.crop(bytes(item["image"]), where, self.max_image_pixels)
            else:
                img = decode(item["image"], self.draft_min_side, where, self.max_image_pixels)
        except CorruptImageError:
            raise
        except Exception as e:
            raise CorruptImageError(f"{where} does not decode ({e})") from e
        if "extra" in item:
            return img, self.targets[i], torch.as_tensor(np.asarray(item["extra"]))
        return img, self.targets[i]

    def _log_read(self, i: int) -> None:
        if self._trace is None:
            d = Path(os.environ[TRACE_ENV])
            d.mkdir(parents=True, exist_ok=True)
            rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
            self._trace = open(d / f"rank{rank}-pid{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
        self._trace.write(f"{self.split} {i}\n")


def min_side_for(pipeline: str, img_size: int, crop_pct: float) -> int | None:
    """The short side a JPEG may be draft-decoded down to for ``pipeline`` (None: no draft decoding).

    eval/finetune/none resize the short side to ``img_size / crop_pct`` (or ``img_size``) first, so a smaller
    decode covers the same region; the factor 2 keeps that resize a >= 2x downsample, where antialiasing
    makes the result match full-size decoding up to ~0.015 mean abs in [-1, 1] units (tests/test_packed.py).
    pretrain's inception crop is drafted differently: :class:`DraftInceptionCrop` draws the crop on the full-size
    geometry first, then picks the scale from the crop's size (``PackedDataModule.train_transform``).
    """
    if pipeline in ("pretrain", "paper_finetune"):  # inception crops: a small crop needs the full-size decode
        return None
    target = img_size / crop_pct if pipeline in ("eval", "finetune") else img_size
    return 2 * int(np.ceil(target))


class PackedDataModule(VisionDataModule):
    """Train/val/test from a ``vitlab.pack`` folder; pipelines and sizes default to the source dataset's."""

    name = "packed"

    def __init__(self, root: str | None = None, verify: bool = False, cache_dir: str | None = None,
                 timeout: float = 30.0, draft: bool = False, classes: list[str] | None = None,
                 num_classes: int | None = None, train_pipeline: str | None = None,
                 eval_pipeline: str | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 train_crop_scale: list[float] | None = None, eval_resize: str | None = None,
                 **kwargs: Any) -> None:
        self.meta = read_manifest(root, timeout)
        src = self.meta.get("source", {})
        found = list(self.meta["classes"])
        if classes is not None and list(classes) != found:
            raise PackedDataError(f"the shards in {root} have another class table than data.classes: "
                                  f"{class_table_diff(list(classes), found)}")
        if num_classes is not None and int(num_classes) != len(found):
            raise PackedDataError(f"data.num_classes={num_classes} but the shards in {root} hold {len(found)} classes "
                                  f"({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}): set "
                                  f"data.num_classes={len(found)} or point data.root at the right pack")
        kwargs.setdefault("num_workers", "auto")
        src_data = src.get("data") or {}  # the source's whole data config: what the pipelines were built with
        for key, value in (("train_crop_scale", train_crop_scale), ("eval_resize", eval_resize)):
            if value is not None or src_data.get(key) is not None:
                kwargs[key] = value if value is not None else src_data[key]
        super().__init__(root=str(root), num_classes=len(found),
                         train_pipeline=train_pipeline or src.get("train_pipeline"),
                         eval_pipeline=eval_pipeline or src.get("eval_pipeline") or "eval", **kwargs)
        self.classes = found
        self.verify, self.cache_dir, self.timeout, self.draft = bool(verify), cache_dir, float(timeout), bool(draft)
        self.max_image_pixels = positive_int(max_image_pixels, "data.max_image_pixels")

    def open_split(self, split: str) -> PackedSplit:
        splits = self.meta["splits"]
        alias = self.meta.get("aliases", {}).get(split)
        name = alias or split
        if name not in splits:
            raise PackedDataError(f"{self.root} has no {split!r} split (it has {sorted(splits)}): pack it, "
                                  "or choose a pack that has it")
        info = splits[name]
        check_chunks(self.root, name, info, self.verify, self.timeout)
        raw = read_bytes(self.root, f"{name}/labels.npy", self.timeout)
        if hashlib.sha256(raw).hexdigest() != info["labels_sha256"]:
            raise PackedDataError(f"{self.root}/{name}/labels.npy fails its sha256 check; re-pack")
        labels = np.load(io.BytesIO(raw))
        if len(labels) != info["count"]:
            raise PackedDataError(f"{self.root}/{name}/labels.npy has {len(labels)} labels, the manifest {info['count']}")
        split_ds = PackedSplit(self.root, name, info, labels, self.cache_dir, self.timeout)
        split_ds.max_image_pixels = self.max_image_pixels
        return split_ds

    def train_transform(self):
        """With ``data.draft`` and the pretrain pipeline, the inception crop runs at decode time
        (:class:`DraftInceptionCrop`); flip and normalisation stay here, after it, as in ``build_transform``."""
        if not (self.draft and self.train_pipeline == "pretrain"):
            return super().train_transform()
        from vitlab.data.transforms import resolve_normalization

        if self.normalize_on_device:
            return FlipNormalize(None, None)
        return FlipNormalize(*resolve_normalization(self.normalization))

    def build_splits(self):
        train, val, test = (self.open_split(s) for s in SPLITS)
        if self.draft and self.train_pipeline == "pretrain":
            train.crop = DraftInceptionCrop(self.img_size, self.train_crop_scale)
        elif self.draft:
            train.draft_min_side = min_side_for(self.train_pipeline, self.img_size, self.crop_pct)
        if self.draft:
            for s in (val, test):
                s.draft_min_side = min_side_for(self.eval_pipeline, self.eval_img_size, self.crop_pct)
        skipped = sum(int(s.get("skipped", 0)) for s in self.meta["splits"].values())
        if skipped:
            warnings.warn(f"{self.root}: {skipped} corrupt source image(s) were skipped when packing "
                          f"(listed in {MANIFEST})", stacklevel=2)
        return train, val, test

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), M.DATA_ROOT: str(self.root), M.DATA_SOURCE: self.meta.get("source", {}).get("name")}


def packed_manifest_value(root: str, key: str, img_size: Any = None) -> Any:
    """Config resolver ``${vitlab.packed:<root>,<key>}``: ``num_classes`` or a source data setting (img_size ...).

    ``${vitlab.packed:<root>,eval_img_size,${.img_size}}``: where the source evaluated at its training resolution
    (``eval_img_size: ${.img_size}``, e.g. digits, CIFAR), the packed one follows ``data.img_size`` as well, so
    ``data=packed data.img_size=16`` evaluates at 16 px, as ``data=digits data.img_size=16`` does.
    """
    meta = read_manifest(root)
    if key == "num_classes":
        return len(meta["classes"])
    src = meta.get("source", {})
    if key == "eval_img_size" and img_size is not None and src.get("eval_img_size") == src.get("img_size"):
        return int(img_size)
    if key not in src:
        raise DataConfigError(f"the pack in {root} does not record {key!r}; set data.{key} explicitly")
    return src[key]
