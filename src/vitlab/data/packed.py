"""``data=packed``: a dataset packed by ``vitlab.pack`` into litdata shards, read from disk or S3.

    python -m vitlab.pack data=imagenet21k data.root=/datasets/imagenet21k out=/shards/in21k
    python -m vitlab.train data=packed data.root=/shards/in21k           # or data.root=s3://bucket/in21k

Layout written by ``vitlab.pack`` (``vitlab_pack.json`` is written last: a folder without it is not a
finished pack and is never read):

    <root>/vitlab_pack.json          classes, counts, pack options, vitlab version, per-chunk sizes + sha256
    <root>/<split>/index.json        litdata's index of the split's chunks
    <root>/<split>/chunk-*.bin       litdata chunks of {image: encoded bytes, label, index[, extra]}
    <root>/<split>/labels.npy        the labels in stored order (subsets without reading images)

Why map-style: each split is read by index (one ``pread`` per item), so the sampler of every other
dataset applies unchanged: ``data.train_size`` subsets (base.py), the ``ResumableSampler`` that shards by
rank (DDP) and by DataLoader worker (batches), and exact mid-epoch resume with per-sample augmentation seeds
(data/sampler.py).

Why vitlab reads the chunks itself: litdata's reader picks a decoder for each field from the serializer the
pack's own ``index.json`` names (``pickle`` among them) and sniffs chunk bytes for other encodings, so a pack
from someone else could run code. A pack is data: :func:`check_index` accepts only the fields and formats
``vitlab.pack`` writes (:data:`FIELD_FORMATS`: the image's raw bytes, int64 label and index, a numeric 1-D
extra), with plain chunk names, before a chunk is opened; :class:`ChunkFile` then parses litdata's chunk
layout (item table, per-field sizes) with bounds checks, and nothing else. litdata is the writer only.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
import stat
import struct
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitlab import __version__
from vitlab import metrics as M
from vitlab.data.base import VisionDataModule
from vitlab.data.files import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DraftInceptionCrop,
    dct_reduction,
    decode_image_bytes,
    log_jpeg_backend,
    positive_int,
    read_image_bytes,
)
from vitlab.data.transforms import FlipNormalize, resolve_normalization
from vitlab.errors import CorruptImageError, DataConfigError, DatasetNotFoundError, PackedDataError
from vitlab.utils.secrets import redact

log = logging.getLogger(__name__)

#: version of the layout above; a reader refuses any other
PACK_FORMAT = 1
MANIFEST = "vitlab_pack.json"
SPLITS = ("train", "val", "test")
#: env var: a folder where every process appends the (split, index) pairs it reads (sharding tests)
TRACE_ENV = "VITLAB_PACKED_TRACE"
#: the fields ``vitlab.pack`` writes, in order, and the one litdata format each may be declared with: raw image
#: bytes, int64 label and index, and (ImageNet ReaL sets) a 1-D numeric array ``no_header_numpy:<dtype code>``
FIELD_FORMATS = {"image": "bytes", "label": "int", "index": "int", "extra": "no_header_numpy"}
#: litdata's dtype codes (``litdata.constants._NUMPY_DTYPES_MAPPING``) that an ``extra`` may have: numbers and bool
EXTRA_DTYPES = {0: np.int8, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.uint8, 5: np.uint16, 6: np.uint32,
                7: np.uint64, 8: np.float16, 9: np.float32, 10: np.float64, 13: np.bool_}
#: most bytes read from a pack's metadata files (manifest, index.json, labels.npy; a 14M-image labels.npy: 56 MB)
META_MAX_BYTES = 1 << 30
#: a remote pack's chunk cache is trimmed (least recently used chunks first) above this size: litdata's default
CACHE_MAX_BYTES = 100 * 10**9


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
    """A boto3 S3 client that gives up after ``timeout`` seconds, one attempt per request (``AWS_ENDPOINT_URL``
    picks a local server)."""
    # lazy: boto3's import is ~0.5 s of every data=packed command's start-up, and only S3 packs need it
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", config=cfg, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _remote_error(what: str, url: str, e: Exception, timeout: float) -> DatasetNotFoundError:
    return DatasetNotFoundError(redact(
        f"cannot {what} {url} ({type(e).__name__}: {e}) within data.timeout={timeout:g}s. Check the URL, "
        "AWS_ENDPOINT_URL and your credentials"))


def _split_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise DataConfigError(f"data.root={url}: only local folders and s3:// URLs are supported")
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key.strip("/")


def read_remote(url: str, timeout: float, limit: int = META_MAX_BYTES) -> bytes:
    """The bytes of one object (at most ``limit``); an unreachable server or missing object is an error naming
    the URL."""
    bucket, key = _split_url(url)
    try:
        obj = s3_client(timeout).get_object(Bucket=bucket, Key=key)
        if int(obj.get("ContentLength") or 0) > limit:
            raise PackedDataError(f"{url} is {obj['ContentLength']:,} bytes, more than the {limit:,} a pack's "
                                  "metadata file may have: not a pack written by vitlab.pack")
        data = obj["Body"].read(limit + 1)
    except PackedDataError:
        raise
    except Exception as e:  # botocore raises many types: connection, timeout, NoSuchKey, credentials
        raise _remote_error("read", url, e, timeout) from e
    if len(data) > limit:
        raise PackedDataError(f"{url} holds more than {limit:,} bytes: not a pack written by vitlab.pack")
    return data


def download_remote(url: str, dest: Path, nbytes: int, sha256: str, timeout: float) -> None:
    """Download one chunk to ``dest`` (via a temporary file renamed into place) if it has the size and sha256
    the manifest lists; anything else is an error naming the URL."""
    bucket, key = _split_url(url)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    h, n = hashlib.sha256(), 0
    try:
        body = s3_client(timeout).get_object(Bucket=bucket, Key=key)["Body"]
        with open(tmp, "wb") as f:
            while n <= nbytes and (block := body.read(1 << 20)):
                f.write(block)
                h.update(block)
                n += len(block)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise _remote_error("download", url, e, timeout) from e
    if n != nbytes or h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise PackedDataError(f"shard {url} is damaged: {'more than ' if n > nbytes else ''}{n:,} bytes"
                              f"{'' if n != nbytes else ' failing their sha256 check'}, the pack wrote {nbytes:,}; "
                              "copy it again from the original pack, or re-pack")
    os.replace(tmp, dest)


def trim_cache(folder: Path, keep: Path, max_bytes: int = CACHE_MAX_BYTES) -> None:
    """Delete the least recently used chunks of ``folder`` until it holds at most ``max_bytes`` (``keep`` stays).
    A reader that has a deleted chunk open keeps reading it; one that has not downloads it again."""
    files = []
    for e in os.scandir(folder):
        if e.is_file(follow_symlinks=False) and e.name.endswith(".bin"):
            st = e.stat(follow_symlinks=False)
            files.append((max(st.st_atime, st.st_mtime), st.st_size, e.path))
    total = sum(f[1] for f in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            return
        if path != str(keep):
            Path(path).unlink(missing_ok=True)
            total -= size


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
        raise _remote_error("list", url, e, timeout) from e


def read_bytes(root: str, rel: str, timeout: float = 30.0) -> bytes:
    """A pack's metadata file: a regular file (or object) of at most :data:`META_MAX_BYTES`."""
    if is_url(root):
        return read_remote(f"{str(root).rstrip('/')}/{rel}", timeout)
    path = Path(root) / rel
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing")
    return read_image_bytes(path, META_MAX_BYTES, what="pack file")


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
        plain_name(c["filename"], f"{root}/{MANIFEST}")
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


# ---- the chunks: vitlab's own reader of litdata's layout ------------------------------------------------
def plain_name(name: Any, where: str) -> str:
    """``name`` if it names a file inside its folder (no ``/``, ``..`` or absolute path), else an error."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name)):
        raise PackedDataError(f"{where} names a chunk {name!r} outside its split folder: chunk names are plain file "
                              "names; this pack was not written by vitlab.pack (or was altered): refused")
    return name


def check_index(raw: bytes, where: str, info: dict[str, Any]) -> dict[str, str]:
    """The fields of a split -> their declared formats, from its litdata ``index.json`` (``where``), checked before
    any chunk is opened.

    Only what ``vitlab.pack`` writes is accepted: the fields of :data:`FIELD_FORMATS` in order, each declared with
    its one format; no compression, encryption or other item loader; the chunks the manifest lists, by plain
    name. Any other declared serializer (``pickle``, ``json``, ``tensor`` ...) is refused naming the field: no
    library is ever asked to decode a pack's bytes in a way the pack itself chose."""
    try:
        index = json.loads(raw)
        config, chunks = index["config"], index["chunks"]
        fmt, spec = list(config["data_format"]), json.loads(config["data_spec"])
        names = json.loads(spec[1]["context"]) if spec[1]["type"] == "builtins.dict" else None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise PackedDataError(f"{where} is not a litdata index written by vitlab.pack ({type(e).__name__}: {e}); "
                              "re-pack") from e
    expected = list(FIELD_FORMATS)
    if not isinstance(names, list) or names not in (expected[:3], expected) or len(names) != len(fmt):
        raise PackedDataError(f"{where} declares the fields {names!r} ({fmt!r}); vitlab.pack writes {expected[:3]} "
                              "(+ 'extra'): this pack was not written by vitlab.pack (or was altered): refused")
    for name, declared in zip(names, fmt, strict=True):
        ok = declared == FIELD_FORMATS[name]
        if name == "extra":
            kind, _, code = str(declared).partition(":")
            ok = kind == FIELD_FORMATS[name] and code.isdigit() and int(code) in EXTRA_DTYPES
        if not ok:
            raise PackedDataError(
                f"{where}: field {name!r} is declared {declared!r}; vitlab reads a pack's {name!r} only as "
                f"{FIELD_FORMATS[name]!r} (what vitlab.pack writes), and never lets a pack choose its decoder "
                "(a 'pickle' field would run code): refused before reading any of it. Re-pack the source with "
                "python -m vitlab.pack")
    for key in ("compression", "compression_level", "encryption", "ipc_compression", "format"):
        if config.get(key):
            raise PackedDataError(f"{where} declares {key}={config[key]!r}; vitlab.pack writes none: refused")
    if config.get("item_loader", "PyTreeLoader") != "PyTreeLoader":
        raise PackedDataError(f"{where} declares item_loader={config['item_loader']!r}; vitlab.pack writes "
                              "'PyTreeLoader': refused")
    listed = [(c["filename"], c["items"], c["bytes"]) for c in info["chunks"]]
    try:
        found = [(plain_name(c["filename"], where), c["chunk_size"], c["chunk_bytes"]) for c in chunks]
    except (KeyError, TypeError) as e:
        raise PackedDataError(f"{where} has a malformed chunk entry ({type(e).__name__}: {e}); re-pack") from e
    if found != listed:
        raise PackedDataError(f"{where} lists other chunks than {MANIFEST} (names, item counts or sizes differ): the "
                              "split folder was changed after packing; re-pack")
    return dict(zip(names, fmt, strict=True))


def _open_regular(path: str | os.PathLike, what: str) -> tuple[int, int]:
    """(descriptor, size) of a regular file opened without blocking (a FIFO named ``chunk-0.bin`` cannot hang)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PackedDataError(f"cannot open {what} {path} ({e}); copy it again from the original pack, or re-pack") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PackedDataError(f"{what} {path} is not a regular file; copy it again from the original pack, or re-pack")
    return fd, st.st_size


class ChunkFile:
    """One litdata chunk written by ``vitlab.pack``, parsed by vitlab: ``uint32 n``, ``uint32 offsets[n + 1]``,
    then per item ``uint32 size`` per field and the fields' bytes (:data:`FIELD_FORMATS`).

    Every offset and size is checked against the file before it is used: a chunk that is shorter than its item
    table says (truncated, with a manifest that lies about it) or whose table points elsewhere is an error naming
    the chunk, never a short read or a wrong image."""

    def __init__(self, path: str, where: str, items: int, nbytes: int, fields: dict[str, str]) -> None:
        self.where, self.fields = where, tuple(fields)
        self.extra_dtype = np.dtype(EXTRA_DTYPES[int(fields["extra"].split(":")[1])]) if "extra" in fields else None
        self.fd, size = _open_regular(path, "shard")
        try:
            if size != nbytes:
                raise self.damaged(f"{size:,} bytes, the pack wrote {nbytes:,}")
            head = os.pread(self.fd, 4 * (items + 2), 0)
            if len(head) != 4 * (items + 2) or struct.unpack_from("<I", head)[0] != items:
                raise self.damaged(f"its item table does not list the {items} images the pack wrote")
            self.offsets = np.frombuffer(head, "<u4", offset=4).astype(np.int64)
            if self.offsets[0] != len(head) or self.offsets[-1] != size or np.any(np.diff(self.offsets) < 4 * len(fields)):
                raise self.damaged(f"its item table points outside its {size:,} bytes")
        except BaseException:
            os.close(self.fd)
            raise

    def damaged(self, why: str) -> PackedDataError:
        return PackedDataError(f"shard {self.where} is truncated or damaged: {why}; copy it again from the "
                               "original pack, or re-pack")

    def close(self) -> None:
        os.close(self.fd)

    def item(self, k: int) -> dict[str, Any]:
        start, end = int(self.offsets[k]), int(self.offsets[k + 1])
        raw = os.pread(self.fd, end - start, start)
        nf = len(self.fields)
        if len(raw) != end - start:
            raise self.damaged(f"item {k} ends past the end of the file")
        sizes = struct.unpack_from(f"<{nf}I", raw)
        if 4 * nf + sum(sizes) != len(raw) or sizes[1:3] != (8, 8):
            raise self.damaged(f"item {k}'s field sizes {sizes} do not add up to its {len(raw)} bytes")
        out, pos = {}, 4 * nf
        for name, n in zip(self.fields, sizes, strict=True):
            field = memoryview(raw)[pos:pos + n]
            pos += n
            if name == "image":
                out[name] = field
            elif name == "extra":
                if n % self.extra_dtype.itemsize:
                    raise self.damaged(f"item {k}'s extra is {n} bytes, not a whole number of {self.extra_dtype}")
                out[name] = np.frombuffer(field, self.extra_dtype).copy()
            else:
                out[name] = struct.unpack("<q", field)[0]
        return out


# ---- decoding -------------------------------------------------------------------------------------------
def decode(data: bytes | memoryview, draft_min_side: int | None = None, where: str = "packed image",
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image | torch.Tensor:
    """Encoded image -> uint8 CHW tensor (libjpeg-turbo / libpng via torchvision) or RGB PIL image.

    It is ``files.decode_image_bytes``, the one decoder with the header check of ``data.max_image_pixels``:
    shards come from other people too, and a bomb inside one costs no more than a normal image.
    With ``draft_min_side``, a JPEG is decoded at reduced scale (DCT scaling): the pipeline's crop and resize
    then start from fewer pixels and cover the same image region, up to resampling error.
    """
    plan = None if not draft_min_side else lambda w, h: (dct_reduction(min(w, h), draft_min_side), h)
    return decode_image_bytes(data, where, "torchvision", max_image_pixels, plan)


class PackedSplit(Dataset):
    """One split of a pack, by index: ``(image, label[, extra])`` like every other vitlab dataset."""

    #: chunks a process keeps open (a DataLoader worker reads its batches' chunks in turn)
    OPEN_CHUNKS = 8

    def __init__(self, root: str, split: str, info: dict[str, Any], labels: np.ndarray,
                 fields: dict[str, str], cache_dir: str | None = None, timeout: float = 30.0) -> None:
        self.root, self.split, self.info, self.fields = str(root), split, info, dict(fields)
        self.targets = [int(t) for t in labels]
        self.starts = np.cumsum([0] + [int(c["items"]) for c in info["chunks"]]).tolist()
        if self.starts[-1] != len(self.targets):
            raise PackedDataError(f"{self.root}/{split}: the manifest's chunks hold {self.starts[-1]} images, its "
                                  f"labels {len(self.targets)}: the pack is damaged; re-pack")
        self.cache_dir, self.timeout = cache_dir, timeout
        self.draft_min_side: int | None = None  # set by the DataModule from the stage's pipeline
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # set by the DataModule (data.max_image_pixels)
        self.crop: DraftInceptionCrop | None = None  # set for pretrain + data.draft: the crop happens at decode
        self._open: OrderedDict[int, ChunkFile] = OrderedDict()
        self._trace = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self):  # workers open their own chunks
        return {**self.__dict__, "_open": OrderedDict(), "_trace": None}

    def _local_chunk(self, c: dict[str, Any]) -> Path:
        """The chunk's file: in the pack, or (remote pack) downloaded into the cache once."""
        if not is_url(self.root):
            return Path(self.root) / self.split / c["filename"]
        url = f"{self.root.rstrip('/')}/{self.split}/{c['filename']}"
        cache = Path(self.cache_dir or os.path.join(tempfile.gettempdir(), "vitlab_packed_cache"))
        folder = cache / hashlib.sha1(f"{self.root.rstrip('/')}/{self.split}".encode()).hexdigest()[:16]
        dest = folder / c["filename"]
        if not dest.is_file() or dest.stat().st_size != c["bytes"]:
            folder.mkdir(parents=True, exist_ok=True)
            download_remote(url, dest, int(c["bytes"]), c["sha256"], self.timeout)
            trim_cache(folder, dest)
        return dest

    def _chunk(self, j: int) -> ChunkFile:
        chunk = self._open.get(j)
        if chunk is None:
            c = self.info["chunks"][j]
            where = f"{self.root.rstrip('/')}/{self.split}/{c['filename']}"
            for attempt in range(2):  # a cached chunk may be trimmed by another worker in between
                try:
                    chunk = ChunkFile(str(self._local_chunk(c)), where, int(c["items"]), int(c["bytes"]), self.fields)
                    break
                except PackedDataError:
                    if attempt or not is_url(self.root):
                        raise
            self._open[j] = chunk
            if len(self._open) > self.OPEN_CHUNKS:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(j)
        return chunk

    def item(self, i: int) -> dict[str, Any]:
        """The stored fields of image ``i``: ``image`` (the encoded bytes), ``label``, ``index`` [, ``extra``]."""
        j = bisect.bisect_right(self.starts, i) - 1
        return self._chunk(j).item(i - self.starts[j])

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0 or i >= len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images of split {self.split!r}")
        item = self.item(i)
        if int(item["label"]) != self.targets[i]:
            raise PackedDataError(f"{self.root}/{self.split}: image {i} has label {item['label']} in its shard but "
                                  f"{self.targets[i]} in labels.npy; the pack is damaged: re-pack")
        if os.environ.get(TRACE_ENV):
            self._log_read(i)
        where = f"image {i} of {self.root}/{self.split}"
        try:
            if self.crop is not None:
                img = self.crop(item["image"], where, self.max_image_pixels)  # the chunk's bytes, not copied
            else:
                img = decode(item["image"], self.draft_min_side, where, self.max_image_pixels)
        except CorruptImageError:
            raise
        except Exception as e:
            raise CorruptImageError(f"{where} does not decode ({e})") from e
        if "extra" in item:
            return img, self.targets[i], torch.as_tensor(item["extra"])
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
        fields = check_index(read_bytes(self.root, f"{name}/index.json", self.timeout),
                             f"{str(self.root).rstrip('/')}/{name}/index.json", info)
        check_chunks(self.root, name, info, self.verify, self.timeout)
        raw = read_bytes(self.root, f"{name}/labels.npy", self.timeout)
        if hashlib.sha256(raw).hexdigest() != info["labels_sha256"]:
            raise PackedDataError(f"{self.root}/{name}/labels.npy fails its sha256 check; re-pack")
        try:
            labels = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as e:
            raise PackedDataError(f"{self.root}/{name}/labels.npy is not a plain array ({e}); re-pack") from e
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise PackedDataError(f"{self.root}/{name}/labels.npy holds {labels.dtype} {labels.shape}, not int labels")
        if len(labels) != info["count"]:
            raise PackedDataError(f"{self.root}/{name}/labels.npy has {len(labels)} labels, the manifest {info['count']}")
        split_ds = PackedSplit(self.root, name, info, labels, fields, self.cache_dir, self.timeout)
        split_ds.max_image_pixels = self.max_image_pixels
        return split_ds

    def train_transform(self):
        """With ``data.draft`` and the pretrain pipeline, the inception crop runs at decode time
        (:class:`DraftInceptionCrop`); flip and normalisation stay here, after it, as in ``build_transform``."""
        if not (self.draft and self.train_pipeline == "pretrain"):
            return super().train_transform()

        if self.normalize_on_device:
            return FlipNormalize(None, None)
        return FlipNormalize(*resolve_normalization(self.normalization))

    def build_splits(self):
        log_jpeg_backend()
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


_REMOTE_MANIFESTS: dict[tuple[str, float], dict[str, Any] | DatasetNotFoundError] = {}


def config_manifest(root: str, timeout: float) -> dict[str, Any]:
    """:func:`read_manifest` for the config resolvers, which run at every access of ``data.num_classes``,
    ``data.img_size`` ..., some of them in code that tolerates a failure: a remote manifest is read once per
    process and a failure is remembered, so a silent endpoint costs ``data.timeout`` once, not once per access."""
    if not is_url(root):
        return read_manifest(root, timeout)
    if (root, timeout) not in _REMOTE_MANIFESTS:
        try:
            _REMOTE_MANIFESTS[root, timeout] = read_manifest(root, timeout)
        except DatasetNotFoundError as e:
            _REMOTE_MANIFESTS[root, timeout] = e
    got = _REMOTE_MANIFESTS[root, timeout]
    if isinstance(got, DatasetNotFoundError):
        raise got
    return got


def packed_manifest_value(root: str, key: str, timeout: Any = 30.0, img_size: Any = None) -> Any:
    """Config resolver ``${vitlab.packed:<root>,<key>,${.timeout}}``: ``num_classes`` or a source data setting
    (img_size ...), read within ``data.timeout`` seconds.

    ``${vitlab.packed:<root>,eval_img_size,${.timeout},${.img_size}}``: where the source evaluated at its training
    resolution (``eval_img_size: ${.img_size}``, e.g. digits, CIFAR), the packed one follows ``data.img_size`` as
    well, so ``data=packed data.img_size=16`` evaluates at 16 px, as ``data=digits data.img_size=16`` does.
    """
    meta = config_manifest(str(root), float(timeout))
    if key == "num_classes":
        return len(meta["classes"])
    src = meta.get("source", {})
    if key == "eval_img_size" and img_size is not None and src.get("eval_img_size") == src.get("img_size"):
        return int(img_size)
    if key not in src:
        raise DataConfigError(f"the pack in {root} does not record {key!r}; set data.{key} explicitly")
    return src[key]
