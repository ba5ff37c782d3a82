"""Input-pipeline throughput: vitlab's ImageNet loader against plain torchvision ImageFolder + DataLoader.

    python -m vitlab.data.throughput                 # writes JPEGs to a temp dir, prints a table + ratios
    python -m vitlab.data.throughput --root /datasets/imagenet --images 2000 --workers 4
    make bench-data

Both sides run the same pipeline (``vitlab.data.transforms.build_transform``: inception crop + flip
for ``pretrain``, resize + central crop for ``eval``), the same batch size, worker count and
persistent workers, over the same files. What differs is the loading: vitlab decodes JPEGs with
torchvision's libjpeg-turbo straight into uint8 CHW tensors (``data.decoder=auto``); the baseline is
ImageFolder's PIL loader. ``vitlab (decoder=pil)`` isolates the decoder's share. Each figure is the
median over ``--repeats`` full passes after one warm-up pass; per-worker = images/s / workers.
The table goes to stdout and a JSON file whose path is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """``n`` photo-like JPEGs at ImageNet's typical sizes (~400-500 x 330-400, quality 90) in ``train/<wnid>/``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(400, 520)), int(rng.integers(330, 400))
        coarse = rng.normal(128, 45, size=(h // 16 + 1, w // 16 + 1, 3))
        img = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 14, size=(h, w, 3))
        d = root / "train" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:06d}.JPEG", quality=90)
    return root


def _one_pass(loader) -> tuple[int, float]:
    t0, seen = time.perf_counter(), 0
    for x, *_ in loader:
        seen += x.shape[0]
    return seen, time.perf_counter() - t0


def run(root: Path, pipeline: str, img_size: int, batch: int, workers: int, repeats: int) -> list[dict]:
    """Loaders are timed round-robin (one pass each per repeat), so load from other processes hits all alike."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from vitlab.data.folder import FolderDataModule
    from vitlab.data.transforms import build_transform

    tf = build_transform(pipeline, img_size, "paper")
    common = dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0, shuffle=False)
    loaders = {"torchvision ImageFolder (baseline)": DataLoader(ImageFolder(str(root / "train"), transform=tf), **common)}
    for d in ("pil", "auto"):
        loaders[f"vitlab (decoder={d})"] = _vitlab_loader(FolderDataModule, root, tf, d, common)
    n = {name: _one_pass(loader)[0] for name, loader in loaders.items()}  # warm-up: workers, page cache
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, loader in loaders.items():
            seen, dt = _one_pass(loader)
            rates[name].append(seen / dt)
    rows = []
    for name, rs in rates.items():
        rate = statistics.median(rs)
        rows.append({"pipeline": pipeline, "loader": name, "img_per_s": rate, "spread": (max(rs) - min(rs)) / 2,
                     "img_per_s_per_worker": rate / max(1, workers), "images": n[name], "repeats": rs})
    for r in rows:
        r["ratio_vs_baseline"] = r["img_per_s"] / rows[0]["img_per_s"]
    return rows


def _vitlab_loader(cls, root: Path, tf, decoder: str, common: dict):
    from torch.utils.data import DataLoader

    from vitlab.data.base import TransformedDataset

    dm = cls(root=str(root), decoder=decoder, val_fraction=0.5, num_workers=common["num_workers"])
    train, val, _ = dm.build_splits()
    ds = dm.images(train.paths + val.paths, train.targets + val.targets)  # every file, as the baseline reads
    return DataLoader(TransformedDataset(ds, tf), **common)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="an ImageFolder tree with train/<class>/ (default: write JPEGs)")
    p.add_argument("--images", type=int, default=256, help="JPEGs to write when --root is not given")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (0 = in the main process)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pipelines", default="pretrain,eval")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for the JSON file")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per loader worker, as in training
    with tempfile.TemporaryDirectory(prefix="vitlab_bench_data_") as tmp:
        root = a.root or write_jpegs(Path(tmp), a.images)
        rows = [r for pl in a.pipelines.split(",") for r in run(root, pl, a.img_size, a.batch, a.workers, a.repeats)]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), " \
              f"torch {torch.__version__}, {a.workers} worker(s), batch {a.batch}, {a.img_size} px"
    print(f"\nInput pipeline throughput ({machine})\n")
    print("| pipeline | loader | img/s | ± | img/s per worker | vs baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['loader']} | {r['img_per_s']:.1f} | {r['spread']:.1f} | "
              f"{r['img_per_s_per_worker']:.1f} | {r['ratio_vs_baseline']:.2f}x |")
    for pl in dict.fromkeys(r["pipeline"] for r in rows):
        best = [r for r in rows if r["pipeline"] == pl and r["loader"].endswith("auto)")][0]
        print(f"ratio vitlab/baseline ({pl}): {best['ratio_vs_baseline']:.2f}")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"bench_data_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
