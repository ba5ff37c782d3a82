"""Input-pipeline throughput: torchvision ImageFolder vs vitlab's folder loader vs ``data=packed`` shards.

    python -m vitlab.bench.data                      # 2,000 ImageNet-shaped JPEGs, 4 pipelines, a table + ratios
    python -m vitlab.bench.data --images 2000 --workers 1 --configs pretrain:224 --max-side 320
    python -m vitlab.bench.data --listing 100000     # list/index a 100k-file tree vs open its packed copy
    make bench-data

Every loader reads the same JPEGs (written by the bench: ~500x375, quality 90, ImageNet's typical size;
or ``--root``), through the same pipeline (``vitlab.data.transforms.build_transform``), with the same
batch size, workers, persistent workers, seeded shuffled order and ``collate_fn`` (vitlab's
``vitlab.data.base.collate``, the one its training loaders use: ``default_collate`` but for channels-last uint8 images):

- ``torchvision ImageFolder``: the baseline, PIL decoding;
- ``vitlab folder``: ``data=folder`` (libjpeg-turbo into uint8 CHW tensors, ``data.decoder=auto``);
- ``webdataset tar shards``: the same files in WebDataset tars (500 per shard), read by webdataset with the
  same decoder and pipeline as ``packed``: the engine litdata is measured against (skipped if not installed);
- ``packed``: the same files packed by ``vitlab.data.packing`` (original bytes), read as ``data=packed``;
- ``packed, data.draft=true``: reduced-size JPEG decoding where the crop allows it (pretrain: the inception crop
  is drawn on the full-size geometry first; eval/finetune: a >= 2x downsample after the draft);
- ``packed, data.draft=true, data.normalize_on_device=true``: the loader yields uint8 batches, channels-last as the
  crops' resize writes them (FFCV's layout), and the normalisation and the NCHW layout are done on the device after
  transfer (timm's prefetcher, FFCV): the same values, 4x fewer bytes;
- ``--max-side N`` (default 320, 0 = skip): ``packed, pack.max_side=N`` (FFCV's ``max_resolution``: images re-encoded at most N px
  on the long side, quality 90) with both reader options. This changes the stored pixels: the table says so.

Each figure is the median over ``--repeats`` passes after one warm-up pass, the loaders taking turns (in reverse
order every other repeat) so load from other processes hits them alike; per worker = img/s / max(1, workers). Beside wall-clock img/s, each pass
counts the CPU seconds the loader used (the main process and its workers, from /proc): img per CPU-second is
the per-core cost, and it holds on a machine shared with other jobs, where wall-clock rates swing with their
load. The table goes to stdout, then the packed/torchvision ratios (both), then, per ``pipeline:size``, the
original-bytes reader's figure (``packed, data.draft=true, data.normalize_on_device=true`` over torchvision, img/s
per worker and img per CPU-second; the JSON's ``packed_original_vs_torchvision``), then ``wrote <file>.json``: the
JSON file with every number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from vitlab.config import compose_job
from vitlab.data.base import TransformedDataset, collate
from vitlab.data.files import decode_image_bytes
from vitlab.data.folder import FolderDataModule
from vitlab.data.imagenet21k import ImageNet21kDataModule
from vitlab.data.packed import PackedDataModule
from vitlab.data.packing import pack
from vitlab.data.transforms import build_transform

BASELINE = "torchvision ImageFolder"
DEFAULT_CONFIGS = "pretrain:224,finetune:384,pretrain:64,pretrain:32"


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0, size: tuple[int, int] = (500, 375)) -> Path:
    """``n`` photo-like JPEGs of about ``size`` (+-4%, quality 90) in ``train/<wnid>/``; one per class in ``val/``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            w = int(size[0] * rng.uniform(0.96, 1.04))
            h = int(size[1] * rng.uniform(0.96, 1.04))
            coarse = rng.normal(128, 45, size=(h // 16 + 1, w // 16 + 1, 3))
            img = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 14, size=(h, w, 3))
            d = root / split / f"n{i % classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:06d}.JPEG", quality=90)
    return root


def pack_tree(root: Path, out: Path, workers: int, max_side: int | None = None, splits: str = "[train,val]") -> float:
    """Pack ``root`` (a folder tree) into ``out`` with vitlab's packer; the seconds it took."""
    overrides = ["data=folder", f"data.root={root}", f"out={out}", f"pack.splits={splits}",
                 f"pack.num_workers={workers}", "pack.part_size=2000"]
    if max_side:
        overrides.append(f"pack.max_side={max_side}")
    t0 = time.perf_counter()
    try:
        pack(compose_job("pack", overrides, out.parent / f".{out.name}-job"))
    finally:
        GlobalHydra.instance().clear()
    return time.perf_counter() - t0


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by this process (all its threads) and by ``pids`` (Linux /proc)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of proc(5))
    return total


def _one_pass(loader) -> tuple[int, float, float]:
    """Images, wall seconds and CPU seconds (main process + the loader's persistent workers) of one epoch."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []
    pids = [w.pid for w in workers]
    c0, t0, seen = _cpu_seconds(pids), time.perf_counter(), 0
    for x, *_ in loader:
        seen += x.shape[0]
    return seen, time.perf_counter() - t0, _cpu_seconds(pids) - c0


WDS_ROW = "webdataset tar shards"


def write_wds(root: Path, out: Path, per_shard: int = 500) -> list[str] | None:
    """The train images of ``root`` as WebDataset tar shards (``<key>.jpg`` + ``<key>.cls``, the format timm and
    OpenCLIP read): the shard paths, or None when webdataset is not installed."""
    try:
        import webdataset as wds  # optional: the dev extra installs it (its row of make bench-data)
    except ImportError:
        return None

    out.mkdir(parents=True, exist_ok=True)
    folder = ImageFolder(str(root / "train"))
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, (path, label) in enumerate(folder.samples):
            sink.write({"__key__": f"{i:08d}", "jpg": Path(path).read_bytes(), "cls": label})
    return sorted(str(f) for f in out.glob("train-*.tar"))


def wds_dataset(shards: list[str], tf):
    """WebDataset's reader on ``shards``: shards split over DataLoader workers, a 1,000-sample shuffle buffer, and
    the same decoder (``decode_image_bytes``, libjpeg-turbo) and pipeline as the packed reader's plain row."""
    import webdataset as wds  # optional: the dev extra installs it (its row of make bench-data)

    def sample(s):
        return tf(decode_image_bytes(s["jpg"], s["__key__"], "torchvision")), int(s["cls"])

    return (wds.WebDataset(shards, shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
            .shuffle(1000, rng=random.Random(0)).map(sample))


def loaders_for(root: Path, packs: dict[str, Path], pipeline: str, img_size: int, batch: int, workers: int,
                wds_shards: list[str] | None = None) -> dict:
    """The loaders to compare for one (pipeline, resolution); the same transform object serves the plain ones."""
    tf = build_transform(pipeline, img_size, "paper")

    def loader(ds):
        g = torch.Generator().manual_seed(0)  # the same shuffled order on every side
        return DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                          shuffle=True, generator=g, collate_fn=collate)

    out = {BASELINE: loader(ImageFolder(str(root / "train"), transform=tf))}
    folder = FolderDataModule(root=str(root), num_workers=workers)
    out["vitlab folder"] = loader(TransformedDataset(folder.build_splits()[0], tf))
    if wds_shards:
        out[WDS_ROW] = DataLoader(wds_dataset(wds_shards, tf), batch_size=batch, num_workers=workers,
                                  persistent_workers=workers > 0, collate_fn=collate)
    for name, pack_root in packs.items():
        # (data.draft, data.normalize_on_device): a re-encoded pack is shown with its best reader only
        for draft, on_device in ((False, False), (True, False), (True, True)) if name == "packed" else ((True, True),):
            dm = PackedDataModule(root=str(pack_root), img_size=img_size, eval_img_size=img_size, train_pipeline=pipeline,
                                  normalization="paper", num_workers=workers, draft=draft,
                                  normalize_on_device=on_device)
            train = dm.build_splits()[0]
            label = ", ".join([name, *(["data.draft=true"] if draft else []),
                               *(["data.normalize_on_device=true"] if on_device else [])])
            out[label] = loader(TransformedDataset(train, dm.train_transform() if draft or on_device else tf))
    return out


def run(root: Path, packs: dict[str, Path], pipeline: str, img_size: int, batch: int, workers: int,
        repeats: int, wds_shards: list[str] | None = None) -> list[dict]:
    """Loaders are timed round-robin (one pass each per repeat), in reverse order every other repeat (A..F F..A), so
    load from other processes, and a drift in it, hits all alike: in a fixed order the first loader and the last one
    would always run at the two ends of a round."""
    loaders = loaders_for(root, packs, pipeline, img_size, batch, workers, wds_shards)
    n = {name: _one_pass(ld)[0] for name, ld in loaders.items()}  # warm-up: workers, page cache
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    per_cpu: dict[str, list[float]] = {name: [] for name in loaders}
    for rep in range(repeats):
        for name, ld in list(loaders.items())[::1 if rep % 2 == 0 else -1]:
            seen, dt, cpu = _one_pass(ld)
            rates[name].append(seen / dt)
            per_cpu[name].append(seen / max(cpu, 1e-9))
    rows = []
    for name, rs in rates.items():
        rate = statistics.median(rs)
        rows.append({"pipeline": pipeline, "img_size": img_size, "loader": name, "img_per_s": rate,
                     "spread": (max(rs) - min(rs)) / 2, "img_per_s_per_worker": rate / max(1, workers),
                     "img_per_cpu_s": statistics.median(per_cpu[name]), "images": n[name], "repeats": rs,
                     "repeats_per_cpu_s": per_cpu[name]})
    for r in rows:
        r["ratio_vs_baseline"] = r["img_per_s"] / rows[0]["img_per_s"]
        r["cpu_ratio_vs_baseline"] = r["img_per_cpu_s"] / rows[0]["img_per_cpu_s"]
    return rows


#: the original-bytes pack read with both reader options: the row behind ``packed_original_vs_torchvision``
ORIGINAL_ROW = "packed, data.draft=true, data.normalize_on_device=true"


def original_vs_torchvision(rows: list[dict], workers: int) -> dict[str, dict]:
    """Per ``pipeline:img_size``: the original-bytes packed reader (:data:`ORIGINAL_ROW`) over torchvision
    ImageFolder, in img/s per worker and in img per CPU-second (issue 23's figure: >= 2.0x and >= 1.5x at pretrain:224)."""
    out = {}
    for r in rows:
        if r["loader"] == ORIGINAL_ROW:
            out[f"{r['pipeline']}:{r['img_size']}"] = {
                "loader": r["loader"], "img_per_s_per_worker": r["ratio_vs_baseline"],
                "img_per_cpu_s": r["cpu_ratio_vs_baseline"], "workers": workers, "images": r["images"]}
    return out


# ---- listing a big tree vs opening its packed copy ------------------------------------------------------------
def write_tree(root: Path, n: int, per_class: int = 500) -> Path:
    """``n`` tiny (but valid) JPEGs in ``<root>/<class>/`` folders of ``per_class``: one encoded image, n hard copies."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    for i in range(n):
        d = root / f"n{i // per_class:08d}"
        if i % per_class == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"img_{i:07d}.JPEG", "wb") as f:
            f.write(data)
    return root


def listing(n: int, workers: int, tmp: Path) -> dict:
    """Seconds to list + index an ``n``-file tree (``data=folder`` / ``data=imagenet21k``: walk, sort, hash the
    hold-out), the same with vitlab's index cache warm, and to open its packed copy (manifest, labels, chunk sizes)."""
    root = tmp / "tree"
    t0 = time.perf_counter()
    write_tree(root, n)
    written = time.perf_counter() - t0
    classes = len(os.listdir(root))
    res = {"files": n, "classes": classes, "write_s": written}

    def index(cache_dir: Path | None) -> float:
        t = time.perf_counter()
        dm = ImageNet21kDataModule(root=str(root), num_classes=classes, num_workers=0,
                                   index_cache=cache_dir is not None, cache_dir=str(cache_dir) if cache_dir else None)
        train, val, _ = dm.build_splits()
        assert len(train) + len(val) == n
        return time.perf_counter() - t

    res["list_index_s"] = index(None)
    cache = tmp / "index_cache"
    res["list_index_cold_cache_s"] = index(cache)
    res["list_index_warm_cache_s"] = index(cache)
    res["pack_s"] = pack_tree(root, tmp / "tree_packed", workers)
    t = time.perf_counter()
    dm = PackedDataModule(root=str(tmp / "tree_packed"), num_workers=0)
    train, val, _ = dm.build_splits()
    res["open_packed_s"] = time.perf_counter() - t
    assert len(train) + len(val) == n
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="an ImageFolder tree with train/<class>/ (default: write JPEGs)")
    p.add_argument("--images", type=int, default=2000, help="JPEGs to write when --root is not given")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="pipeline:img_size,... (pretrain, finetune, eval, none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (0 = in the main process)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-side", type=int, default=320,
                   help="also pack with pack.max_side=N (FFCV's max_resolution; re-encoded: other pixels); 0 = skip")
    p.add_argument("--pack-workers", type=int, default=None, help="processes for packing (default: all cores)")
    p.add_argument("--listing", type=int, default=0, help="also time listing an N-file tree vs opening its pack")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for the JSON file")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per loader worker, as in training
    pack_workers = a.pack_workers or len(os.sched_getaffinity(0))
    result: dict = {"rows": [], "packs": {}}
    with tempfile.TemporaryDirectory(prefix="vitlab_bench_data_") as tmp:
        tmp = Path(tmp)
        root = a.root or write_jpegs(tmp / "jpegs", a.images)
        packs = {"packed": tmp / "packed"}
        result["packs"]["packed"] = {"options": "original bytes", "pack_s": pack_tree(root, packs["packed"], pack_workers)}
        if a.max_side:
            name = f"packed, pack.max_side={a.max_side}"
            packs[name] = tmp / "packed_small"
            result["packs"][name] = {"options": f"pack.max_side={a.max_side} pack.quality=90 (re-encoded: other pixels)",
                                     "pack_s": pack_tree(root, packs[name], pack_workers, a.max_side)}
        shards = write_wds(root, tmp / "wds")
        result["packs"][WDS_ROW] = {"options": "original bytes, 500 images per tar" if shards else
                                    "skipped: pip install webdataset (the dev extra) to add its row", "pack_s": 0.0}
        for cfg in a.configs.split(","):
            pipeline, size = cfg.split(":")
            result["rows"] += run(root, packs, pipeline, int(size), a.batch, a.workers, a.repeats, shards)
        if a.listing:
            result["listing"] = listing(a.listing, pack_workers, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} core(s), torch {torch.__version__}, " \
              f"{a.workers} worker(s), batch {a.batch}"
    print(f"\nInput pipeline throughput ({machine})\n")
    for name, info in result["packs"].items():
        print(f"- {name}: {info['options']}" + (f", packed in {info['pack_s']:.1f}s with {pack_workers} process(es)"
                                                 if info["pack_s"] else ""))
    print("\n| pipeline | px | loader | img/s | ± | img/s per worker | vs torchvision | img per CPU-s | vs torchvision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['pipeline']} | {r['img_size']} | {r['loader']} | {r['img_per_s']:.1f} | {r['spread']:.1f} | "
              f"{r['img_per_s_per_worker']:.1f} | {r['ratio_vs_baseline']:.2f}x | {r['img_per_cpu_s']:.1f} | "
              f"{r['cpu_ratio_vs_baseline']:.2f}x |")
    print()
    for r in result["rows"]:
        if r["loader"].startswith("packed"):
            print(f"ratio {r['loader']}/torchvision ({r['pipeline']} {r['img_size']} px): {r['ratio_vs_baseline']:.2f} "
                  f"img/s, {r['cpu_ratio_vs_baseline']:.2f} img per CPU-second")
    result["packed_original_vs_torchvision"] = original_vs_torchvision(result["rows"], a.workers)
    print()
    for cfg, fig in result["packed_original_vs_torchvision"].items():
        print(f"packed_original_vs_torchvision {cfg}: {fig['img_per_s_per_worker']:.2f}x img/s per worker, "
              f"{fig['img_per_cpu_s']:.2f}x img per CPU-second ({fig['loader']}, {fig['images']} images)")
    if "listing" in result:
        li = result["listing"]
        print(f"\nlisting {li['files']:,} files in {li['classes']} class folders: list + index {li['list_index_s']:.2f}s "
              f"(index cache: {li['list_index_cold_cache_s']:.2f}s cold, {li['list_index_warm_cache_s']:.2f}s warm); "
              f"open the packed copy {li['open_packed_s']:.3f}s (packing took {li['pack_s']:.1f}s)")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"bench_data_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(a).items()}, **result},
                               indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
