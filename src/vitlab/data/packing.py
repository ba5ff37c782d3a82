"""Packing any vitlab dataset into litdata shards that ``data=packed`` streams (issue 15); ``vitlab.pack`` is its CLI.

    python -m vitlab.pack data=digits out=shards/digits
    python -m vitlab.pack data=imagenet data.root=/datasets/imagenet out=/shards/imagenet pack.max_side=512
    python -m vitlab.train data=packed data.root=shards/digits

Why: a 14M-file tree takes minutes to list and loads a shared filesystem's metadata servers; a few
hundred 64 MB shards do not, and object storage serves them. The generic path is the DataModule's own
``build_splits()``: file datasets give their file list (the original bytes are copied, checked to
decode), in-memory ones (digits, shapes, CIFAR) their samples (stored as lossless PNG). ReaL label
sets and other per-image extras travel with each image.

Source files go through the readers' own guards (``vitlab.data.files``): regular files only, at most
``data.max_file_bytes``, and ``data.max_image_pixels`` checked on the header before decoding; a file refused
there is named and skipped like a corrupt one. ``out=`` is locked for the pack's life (``vitlab.utils.run_owner``):
a second pack into the same folder is refused naming the first one's pid.

Safety: each split is cut into parts of ``pack.part_size`` images; a part is written to a temporary
folder by one worker and renamed into place when complete, so an interrupted pack resumes from its
finished parts and never leaves a half-written shard that reads as valid. ``vitlab_pack.json`` (sizes
and sha256 of every chunk, counts, classes, options, vitlab version) is written last.

Why litdata's ``BinaryWriter`` per part and not ``litdata.optimize``: ``optimize`` interleaves workers'
outputs and resumes only through its own checkpoints; here every part keeps the input order (labels
and seeded subsets line up without reading images back) and a part is the unit of resumption.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from litdata.streaming.writer import BinaryWriter
from omegaconf import DictConfig
from PIL import Image

import vitlab
from vitlab.data.files import ImageListDataset, decode_image_bytes, read_image_bytes
from vitlab.data.packed import (
    MANIFEST,
    PACK_FORMAT,
    SPLITS,
    check_index,
    class_table_diff,
    class_table_hash,
    sha256_file,
)
from vitlab.errors import CorruptImageError, PackError
from vitlab.utils import run_owner
from vitlab.utils.plain import to_plain

log = logging.getLogger("vitlab.pack")

STATE = ".pack_state.json"
#: a chunk file as :func:`finalize_split` names it (part number + litdata's chunk name)
CHUNK_NAME = re.compile(r"p\d{5}-chunk-\d+-\d+\.bin")
#: the source settings ``data=packed`` defaults to (same pipelines and sizes as the dataset it came from)
SOURCE_KEYS = ("name", "img_size", "eval_img_size", "train_pipeline", "eval_pipeline", "crop_pct", "normalization")


# ---- what goes into a shard ---------------------------------------------------------------------------
def _to_pil(img):
    if isinstance(img, Image.Image):
        return img.convert("RGB")

    if isinstance(img, torch.Tensor):
        arr = img.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.transpose(1, 2, 0)
        arr = np.ascontiguousarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        return Image.fromarray(arr.astype(np.uint8))
    return Image.fromarray(img)


def _check_decodes(raw: bytes, name: str, max_image_pixels: int) -> tuple[int, int]:
    """Decode ``raw`` as training reads it (``files.decode_image_bytes``: the pixel count its header declares is
    checked against ``data.max_image_pixels`` first; JPEGs at 1/8 scale here, every DCT block is still read, so
    truncation shows) or raise naming it; the image's full size, the one ``pack.max_side`` compares."""
    size = []

    def eighth(w: int, h: int) -> tuple[int, int]:  # called once with the header's size, after the pixel check
        size.append((w, h))
        return (8 if min(w, h) >= 8 else 1), h  # every row: truncation anywhere shows

    decode_image_bytes(raw, name, "pil", max_image_pixels, eighth)
    return size[0]


def _reencode(im, opts: dict[str, Any]) -> bytes:
    im = im.convert("RGB")
    side = opts.get("max_side")
    if side and max(im.size) > side:
        s = side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(opts.get("quality") or 90))
    return buf.getvalue()


def _needs_reencode(size: tuple[int, int], opts: dict[str, Any]) -> bool:
    return opts.get("quality") is not None or bool(opts.get("max_side") and max(size) > opts["max_side"])


def encode_item(ds, i: int, opts: dict[str, Any]) -> tuple[bytes, int, Any, str]:
    """(encoded image, label, extra or None, name for messages) of sample ``i`` of a raw split."""
    if isinstance(ds, ImageListDataset):
        name = ds.paths[i]
        raw = read_image_bytes(name, ds.max_file_bytes)  # a FIFO, a device or an oversized file: refused unread
        if _needs_reencode(_check_decodes(raw, name, ds.max_image_pixels), opts):
            raw = _reencode(Image.open(io.BytesIO(raw)), opts)
        extra = ds.extras(i) if ds.extras is not None else None
        label = ds.targets[i]
    else:
        name = f"sample {i}"
        img, label, *rest = ds[i]
        im = _to_pil(img)
        if _needs_reencode(im.size, opts):
            raw = _reencode(im, opts)
        else:
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=1)  # lossless: the same pixels as the in-memory dataset
            raw = buf.getvalue()
        extra = rest[0] if rest else None
    if extra is not None:
        extra = np.asarray(extra.numpy() if hasattr(extra, "numpy") else extra)
    return raw, int(label), extra, name


# ---- one part = one worker's job ------------------------------------------------------------------------
_JOB: dict[str, Any] = {}  # the splits and options, inherited by the forked workers (no pickling of datasets)


def pack_part(split: str, part: int, start: int, end: int, split_dir: str) -> dict[str, Any]:
    """Write samples [start, end) of ``split`` to ``<split_dir>/.parts/p<part>`` via a temporary folder."""
    ds, opts = _JOB["splits"][split], _JOB["opts"]
    final = Path(split_dir) / ".parts" / f"p{part:05d}"
    tmp = Path(split_dir) / ".parts" / f".tmp-p{part:05d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = BinaryWriter(str(tmp), chunk_bytes=opts["chunk_bytes"])
    labels, skipped, k = [], [], 0
    for i in range(start, end):
        try:
            raw, label, extra, _ = encode_item(ds, i, opts)
        except CorruptImageError as e:
            skipped.append(str(e))
            continue
        item = {"image": raw, "label": label, "index": i}
        if extra is not None:
            item["extra"] = extra
        writer[k] = item
        labels.append(label)
        k += 1
    writer.done()
    chunks = []
    index_file = tmp / "0.index.json"
    config = None
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        config = index["config"]
        for c in index["chunks"]:
            chunks.append({**c, "sha256": sha256_file(tmp / c["filename"]), "bytes": os.path.getsize(tmp / c["filename"])})
        index_file.unlink()
    if sum(c["chunk_size"] for c in chunks) != len(labels):
        raise RuntimeError(f"part {part} of {split}: litdata wrote {sum(c['chunk_size'] for c in chunks)} items, "
                           f"expected {len(labels)}")
    result = {"part": part, "start": start, "end": end, "labels": labels, "skipped": skipped, "chunks": chunks,
              "config": config}
    (tmp / "part.json").write_text(json.dumps(result))
    os.replace(tmp, final)  # atomic: a part folder without a tmp prefix is complete
    return result


# ---- the whole pack ---------------------------------------------------------------------------------------
def check_source(out: Path, source_root: str | None) -> None:
    """Refuse an ``out=`` inside the source dataset, or a source inside ``out=``."""
    if source_root not in (None, "", "???") and "://" not in str(source_root):
        src = Path(str(source_root)).expanduser().resolve()
        if src == out or src in out.parents:
            raise PackError(f"out={out} is inside the source dataset {src} (data.root): shards must not be written "
                            "into the dataset they are read from; choose a folder outside it")
        if out in src.parents:
            raise PackError(f"the source dataset {src} is inside out={out}: choose an out= folder outside the data")
    if out.exists() and not out.is_dir():
        raise PackError(f"out={out} is a file; choose a folder")


def remove_pack(out: Path) -> None:
    """Delete what ``vitlab.pack`` writes in ``out``, and nothing else: each split's chunks (by their names),
    ``index.json``, ``labels.npy`` and unfinished parts, the manifest and the pack state. Other files stay, and
    so does a split folder that holds them."""
    for split in SPLITS:
        d = out / split
        if d.is_symlink() or not d.is_dir():
            continue
        for e in d.iterdir():
            if e.name == ".parts" and e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            elif e.name in ("index.json", "index.json.tmp", "labels.npy") or CHUNK_NAME.fullmatch(e.name):
                if not e.is_dir() or e.is_symlink():
                    e.unlink()
        if not any(d.iterdir()):
            d.rmdir()
    for name in (MANIFEST, MANIFEST + ".tmp", STATE):
        (out / name).unlink(missing_ok=True)


def check_out(out: Path, overwrite: bool) -> str:
    """Refuse an ``out=`` that would write over someone else's files; 'new' | 'resume' | 'overwrite' (an earlier
    pack there, to be removed by :func:`remove_pack`)."""
    if not out.exists() or not any(e.name != run_owner.LOCK_NAME for e in out.iterdir()):
        return "new"
    ours = (out / STATE).is_file() or (out / MANIFEST).is_file()
    if overwrite and ours:
        return "overwrite"
    if not ours:
        raise PackError(f"out={out} exists, is not empty and was not written by vitlab.pack: choose a new or empty "
                        "folder (pack.overwrite=true only replaces an earlier pack)")
    if (out / MANIFEST).is_file():
        raise PackError(f"out={out} already holds a finished pack ({MANIFEST}); set pack.overwrite=true to pack again")
    return "resume"


def source_config(dm, data_cfg: dict[str, Any]) -> dict[str, Any]:
    src = {"name": dm.name, "img_size": dm.img_size, "eval_img_size": dm.eval_img_size,
           "train_pipeline": dm.train_pipeline, "eval_pipeline": dm.eval_pipeline, "crop_pct": dm.crop_pct,
           "normalization": dm.normalization, "root": str(dm.root) if dm.root is not None else None}
    return {**src, "data": data_cfg}


def _state_diff(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in ("options", "source", "classes", "sizes", "format"):
        if old.get(key) != new.get(key):
            if key == "classes":
                return f"the class table changed since the interrupted pack: {class_table_diff(old[key], new[key])}"
            return f"{key} changed since the interrupted pack: was {old.get(key)}, now {new.get(key)}"
    return None


def finalize_split(split_dir: Path, parts: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Move the parts' chunks into the split folder, write litdata's index.json and labels.npy; the split's manifest entry."""
    chunks, labels, skipped, config = [], [], [], None
    for p in sorted(parts, key=lambda r: r["part"]):
        pdir = split_dir / ".parts" / f"p{p['part']:05d}"
        for c in p["chunks"]:
            name = f"p{p['part']:05d}-{c['filename']}"
            if (pdir / c["filename"]).is_file():
                os.replace(pdir / c["filename"], split_dir / name)
            chunks.append({**c, "filename": name})
        labels += p["labels"]
        skipped += p["skipped"]
        config = config or p["config"]
    lit = {"chunks": [{k: c[k] for k in ("chunk_bytes", "chunk_size", "dim", "filename") if k in c} for c in chunks],
           "config": config, "updated_at": str(time.time())}
    if config is None:
        raise PackError(f"{split_dir.name}: no readable image in the split: nothing to pack")
    (split_dir / "index.json.tmp").write_text(json.dumps(lit, sort_keys=True))
    os.replace(split_dir / "index.json.tmp", split_dir / "index.json")
    buf = io.BytesIO()
    np.save(buf, np.asarray(labels, dtype=np.int32))
    (split_dir / "labels.npy").write_bytes(buf.getvalue())
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes)).tolist() if labels else []
    entry = {"count": len(labels), "class_counts": counts, "labels_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
             "classes_sha256": class_table_hash(classes), "skipped": len(skipped), "skipped_examples": skipped[:100],
             "chunks": [{"filename": c["filename"], "items": c["chunk_size"], "bytes": c["bytes"], "sha256": c["sha256"]}
                        for c in chunks]}
    check_index(json.dumps(lit).encode(), str(split_dir / "index.json"), entry)  # what data=packed will accept
    return entry


def pack(cfg: DictConfig) -> dict[str, Any]:
    """Pack ``cfg.data`` into ``cfg.out``; return the manifest."""
    if cfg.get("out") in (None, "", "???"):
        raise PackError("out= is not set: python -m vitlab.pack data=<dataset> out=<folder for the shards>")
    out = Path(str(cfg.out)).expanduser().resolve()
    p = to_plain(cfg.pack)
    opts = {"max_side": p.get("max_side"), "quality": p.get("quality"), "chunk_bytes": p.get("chunk_bytes", "64MB"),
            "part_size": int(p.get("part_size", 10_000))}
    if opts["max_side"] is not None and int(opts["max_side"]) <= 0:
        raise PackError(f"pack.max_side={opts['max_side']} must be a positive int (or null: keep sizes)")
    if opts["quality"] is not None and not 1 <= int(opts["quality"]) <= 100:
        raise PackError(f"pack.quality={opts['quality']} must be in [1, 100] (or null: keep the original bytes)")
    data_cfg = to_plain(cfg.data)
    dm = instantiate(cfg.data, _convert_="all", num_workers=0)
    check_source(out, getattr(dm, "root", None))
    check_out(out, bool(p.get("overwrite", False)))  # before the lock: a foreign folder gets no lock file either
    run_owner.acquire(out, key="out", task="vitlab.pack")  # one pack at a time in out=
    try:
        return _pack(out, dm, data_cfg, p, opts)
    finally:
        run_owner.release(out)


def _pack(out: Path, dm, data_cfg: dict[str, Any], p: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    mode = check_out(out, bool(p.get("overwrite", False)))  # again, now that this process owns out=
    if mode == "overwrite":
        log.info("pack.overwrite=true: removing the earlier pack's files from %s", out)
        remove_pack(out)
        mode = "new"
    train, val, test = dm.build_splits()
    num_classes = int(dm.num_classes)
    classes = [str(c) for c in (getattr(dm, "classes", None) or range(num_classes))]
    raw = {"train": train, "val": val}
    aliases = {}
    if test is val:
        aliases["test"] = "val"  # e.g. a folder without test/: the test split is the validation split
    else:
        raw["test"] = test
    splits = {s: raw[s] for s in SPLITS if s in raw and s in p.get("splits", SPLITS)}
    sizes = {s: len(ds) for s, ds in splits.items()}
    state = {"format": PACK_FORMAT, "options": opts, "source": source_config(dm, data_cfg), "classes": classes,
             "sizes": sizes, "vitlab_version": vitlab.__version__}
    out.mkdir(parents=True, exist_ok=True)
    if mode == "resume":
        old = json.loads((out / STATE).read_text())
        why = _state_diff(old, state)
        if why:
            raise PackError(f"out={out} holds an interrupted pack of another dataset or with other options ({why}): "
                            "run the same command as before, or pack.overwrite=true to start over")
        log.info("resuming the interrupted pack in %s", out)
    else:
        (out / STATE).write_text(json.dumps(state, indent=1))

    workers = p.get("num_workers", "auto")
    workers = len(os.sched_getaffinity(0)) if workers in ("auto", None) else max(1, int(workers))
    jobs, done = [], {s: [] for s in splits}
    for s, ds in splits.items():
        sdir = out / s
        (sdir / ".parts").mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, len(ds), opts["part_size"])):
            pj = sdir / ".parts" / f"p{part:05d}" / "part.json"
            if pj.is_file():
                done[s].append(json.loads(pj.read_text()))
            else:
                jobs.append((s, part, start, min(start + opts["part_size"], len(ds)), str(sdir)))
    n_done = sum(len(v) for v in done.values())
    log.info("packing %s into %s: %s images, %d part(s) to write (%d done before), %d worker(s)",
             dm.name, out, sizes, len(jobs), n_done, workers)
    _JOB.update(splits=splits, opts=opts)
    t0 = time.perf_counter()
    if workers == 1 or len(jobs) <= 1:
        for j in jobs:
            done[j[0]].append(pack_part(*j))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as pool:
            futures = {pool.submit(pack_part, *j): j for j in jobs}
            for k, f in enumerate(as_completed(futures), 1):
                r = f.result()
                done[futures[f][0]].append(r)
                log.info("part %d/%d done (%s p%05d)", k, len(jobs), futures[f][0], r["part"])
    manifest = {"format": PACK_FORMAT, "vitlab_version": vitlab.__version__, "classes": classes,
                "source": state["source"], "options": opts, "aliases": aliases, "splits": {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for s in splits:
        manifest["splits"][s] = finalize_split(out / s, done[s], classes)
        for r in manifest["splits"][s]["skipped_examples"]:
            log.warning("skipped a corrupt image in %s: %s", s, r)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)  # last: only now does the folder read as a pack
    (out / STATE).unlink(missing_ok=True)
    for s in splits:
        shutil.rmtree(out / s / ".parts", ignore_errors=True)
    n = {s: manifest["splits"][s]["count"] for s in splits}
    skipped = sum(manifest["splits"][s]["skipped"] for s in splits)
    print(f"packed {dm.name} into {out}: {n} images, {skipped} corrupt image(s) skipped, "
          f"{time.perf_counter() - t0:.1f}s with {workers} worker(s)")
    return manifest
