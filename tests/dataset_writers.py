"""Tiny copies of each dataset's official release, written byte-for-byte in the real format.

Only the tests use them, so they live here and not in the installed package (they were
``vitlab.data.fixtures``). The tests use these instead of stand-ins: the same file names, the same folder
structure, Python 2 pickles for CIFAR, MATLAB files for Flowers and the ImageNet devkit, JPEG/PNG
encodings through PIL. Every image is filled with its class's colour (:func:`class_colour`) plus
noise, so a test can check from the pixels that each image got the right label.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------
# images


def class_colour(label: int) -> tuple[int, int, int]:
    """An RGB colour per class index whose red channel identifies the class (red = 20 + 37 * (label % 6))."""
    return 20 + 37 * (label % 6), 60 + 29 * ((label // 6) % 6), 200 - 23 * ((label // 36) % 8)


def label_from_pixels(img) -> int:
    """Inverse of :func:`class_colour` for classes < 36, read from a decoded image's mean colour."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 3:  # CHW tensor
        a = a.transpose(1, 2, 0)
    r, g = a[..., 0].mean(), a[..., 1].mean()
    return int(round((r - 20) / 37)) + 6 * int(round((g - 60) / 29))


def make_image(label: int, size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    """A ``size`` = (width, height) RGB image: the class colour with mild noise (JPEG keeps the mean)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array(class_colour(label), dtype=np.float64)
    img = base + rng.normal(0, 4, size=(h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def write_image(path: Path, label: int, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".jpeg": "JPEG", ".jpg": "JPEG"}[path.suffix.lower()]
    make_image(label, size, seed).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes: the classic half-copied JPEG."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# ------------------------------------------------------------------------------------------------
# CIFAR: Python 2 pickles, as in the official "python version"


class _Py2Pickler(pickle._Pickler):
    """Pickles ``str``/``bytes`` as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as cPickle did in 2009."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "").replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[type] = save_global


def py2_pickle(obj, path: Path) -> Path:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_images(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows, channel-major as in the release, each its class colour plus noise."""
    out = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        col = np.array(class_colour(int(y)), dtype=np.float64)[:, None, None]
        out[i] = np.clip(col + rng.normal(0, 3, size=(3, 32, 32)), 0, 255).round()
    return out.reshape(len(labels), 3072)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/`` with 5 train batches of ``per_batch`` images, a test batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        py2_pickle({"batch_label": f"training batch {b} of 5", "labels": labels, "data": _cifar_images(labels, rng),
                    "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}, folder / f"data_batch_{b}")
    labels = [i % 10 for i in range(n_test)]
    py2_pickle({"batch_label": "testing batch 1 of 1", "labels": labels, "data": _cifar_images(labels, rng),
                "filenames": [f"test_{i}.png" for i in range(n_test)]}, folder / "test_batch")
    py2_pickle({"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072},
               folder / "batches.meta")
    (folder / "readme.html").write_text("<html>CIFAR-10 python version (vitlab fixture)</html>")
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` with fine (100) and coarse (20) labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    coarse_names = [f"coarse_{i:02d}" for i in range(20)]
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [i % 100 for i in range(n)] if split == "test" else [int(v) for v in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        py2_pickle({"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                    "fine_labels": fine, "coarse_labels": coarse, "data": _cifar_images(fine, rng)}, folder / split)
    py2_pickle({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, folder / "meta")
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    """``archive`` (.tar.gz) holding ``folder`` under its own name, as the official archives do."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


# ------------------------------------------------------------------------------------------------
# image-folder datasets


def write_class_folders(root: Path, classes: Sequence[str], per_class: int | Sequence[int], ext: str = ".JPEG",
                        seed: int = 0, size: tuple[int, int] = (40, 32), prefix: str | None = None) -> list[Path]:
    """``<root>/<class>/<prefix or class>_<i><ext>`` for each class."""
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    paths = []
    for k, (c, n) in enumerate(zip(sorted(classes), counts, strict=True)):
        for i in range(n):
            p = Path(root) / c / f"{prefix or c}_{i}{ext}"
            paths.append(write_image(p, k, size, seed=seed * 100_003 + k * 1009 + i))
    return paths


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n02119789"]


def write_imagenet(
    root: Path,
    wnids: Sequence[str] = WNIDS[:4],
    train_per_class: int = 6,
    val_per_class: int = 2,
    val_layout: str = "folders",
    real: bool = False,
    seed: int = 0,
    size: tuple[int, int] = (48, 40),
) -> dict:
    """An ILSVRC-2012 copy under ``root``; ``val_layout`` is one of

    - ``folders``: ``val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`` (the "sorted" layout most scripts make);
    - ``devkit``: flat ``val/`` + ``ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt, meta.mat}``;
    - ``devkit_tar``: flat ``val/`` + ``ILSVRC2012_devkit_t12.tar.gz`` (as downloaded);
    - ``kaggle``: ``ILSVRC/Data/CLS-LOC/{train,val}`` + ``LOC_val_solution.csv`` + ``LOC_synset_mapping.txt``.

    With ``real`` a ReaL ``real.json`` is written (some images get extra labels, one gets none).
    Returns the val labels (sorted-wnid indices, in file-number order) and the ReaL sets.
    """
    root = Path(root)
    wnids = sorted(wnids)
    base = root / "ILSVRC" / "Data" / "CLS-LOC" if val_layout == "kaggle" else root
    write_class_folders(base / "train", wnids, train_per_class, ".JPEG", seed, size)  # train/<wnid>/<wnid>_<n>.JPEG
    n_val = val_per_class * len(wnids)
    rng = np.random.default_rng(seed + 1)
    val_labels = [int(v) for v in rng.permutation(np.arange(n_val) % len(wnids))]
    names = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(n_val)]
    for i, (name, y) in enumerate(zip(names, val_labels, strict=True)):
        sub = wnids[y] if val_layout == "folders" else ""
        write_image(base / "val" / sub / f"{name}.JPEG", y, size, seed=seed * 7919 + 50_000 + i)
    if val_layout in ("devkit", "devkit_tar"):
        # ILSVRC2012_IDs are NOT in sorted-wnid order in the real devkit (ID 1 is n02119789, kit fox).
        ids = {w: i + 1 for i, w in enumerate(reversed(wnids))}
        _write_devkit(root, wnids, ids, [ids[wnids[y]] for y in val_labels], tarred=val_layout == "devkit_tar")
    elif val_layout == "kaggle":
        lines = ["ImageId,PredictionString"] + [
            f"{n},{wnids[y]} 10 12 30 28 {wnids[y]} 2 3 20 20 " for n, y in zip(names, val_labels, strict=True)
        ]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {w}, synonym\n" for w in wnids))
    elif val_layout != "folders":
        raise ValueError(f"val_layout={val_layout!r}")
    real_sets = None
    if real:
        real_sets = [[y] for y in val_labels]
        real_sets[0] = []  # ReaL drops images whose label raters could not agree on
        if n_val > 1:
            real_sets[1] = sorted({val_labels[1], (val_labels[1] + 1) % len(wnids)})
        (root / "real.json").write_text(json.dumps(real_sets))
    return {"wnids": wnids, "val_labels": val_labels, "real": real_sets, "base": base}


def _write_devkit(root: Path, wnids: Sequence[str], ids: dict, gt: Sequence[int], tarred: bool) -> None:
    from scipy.io import savemat

    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
          ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    rows = [(np.array([[ids[w]]], dtype=np.uint16), np.array([w]), np.array([f"words {w}"]), np.array([f"gloss {w}"]),
             np.array([[0]], dtype=np.uint8), np.zeros((1, 0), dtype=np.uint8), np.array([[0]], dtype=np.uint8),
             np.array([[1300]], dtype=np.uint16)) for w in wnids]
    # a non-leaf synset too, as the real meta.mat has 1,860 entries of which 1,000 are leaves
    rows.append((np.array([[len(wnids) + 1]], dtype=np.uint16), np.array(["n00001740"]), np.array(["entity"]),
                 np.array(["that which is perceived"]), np.array([[len(wnids)]], dtype=np.uint8),
                 np.array([list(ids.values())], dtype=np.uint16), np.array([[19]], dtype=np.uint8),
                 np.array([[0]], dtype=np.uint16)))
    synsets = np.empty((len(rows), 1), dtype=dt)
    for i, r in enumerate(rows):
        synsets[i, 0] = r
    dk = root / "ILSVRC2012_devkit_t12"
    (dk / "data").mkdir(parents=True, exist_ok=True)
    savemat(dk / "data" / "meta.mat", {"synsets": synsets})
    (dk / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in gt))
    (dk / "readme.txt").write_text("ILSVRC2012 devkit (vitlab fixture)\n")
    if tarred:
        tar_folder(dk, root / "ILSVRC2012_devkit_t12.tar.gz")
        import shutil

        shutil.rmtree(dk)


# ------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet, Oxford Flowers-102, VTAB-1k

PET_BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("beagle", 2)]


def write_pets(root: Path, breeds: Sequence[tuple[str, int]] = PET_BREEDS, trainval_per_class: int = 5,
               test_per_class: int = 2, seed: int = 0) -> Path:
    """``<root>/images/<Breed>_<n>.jpg`` + ``<root>/annotations/{list,trainval,test}.txt`` (official layout).

    Lines are ``<image> <class id 1..37> <species 1 cat / 2 dog> <breed id within species>``; class ids
    follow the alphabetical (case-insensitive) breed order, as in the release. Cats are capitalised.
    """
    root = Path(root)
    order = sorted(breeds, key=lambda b: b[0].lower())
    species_count = {1: 0, 2: 0}
    rows = {"trainval": [], "test": []}
    for cid, (breed, species) in enumerate(order, start=1):
        species_count[species] += 1
        n = 0
        for split, count in (("trainval", trainval_per_class), ("test", test_per_class)):
            for _ in range(count):
                n += 1
                name = f"{breed}_{n}"
                write_image(root / "images" / f"{name}.jpg", cid - 1, (44, 36), seed=seed * 977 + cid * 101 + n)
                rows[split].append(f"{name} {cid} {species} {species_count[species]}")
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n"
    (ann / "trainval.txt").write_text("\n".join(rows["trainval"]) + "\n")
    (ann / "test.txt").write_text("\n".join(rows["test"]) + "\n")
    (ann / "list.txt").write_text(header + "\n".join(sorted(rows["trainval"] + rows["test"])) + "\n")
    (ann / "trimaps").mkdir(exist_ok=True)
    return root


def write_flowers102(root: Path, num_classes: int = 4, per_split: tuple[int, int, int] = (3, 2, 2), seed: int = 0) -> dict:
    """``<root>/jpg/image_%05d.jpg``, ``imagelabels.mat`` (``labels``, 1-based) and ``setid.mat``
    (``trnid``/``valid``/``tstid``, 1-based image ids), as the official release ships them."""
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    per_class = sum(per_split)
    labels = rng.permutation(np.repeat(np.arange(1, num_classes + 1), per_class))
    for i, y in enumerate(labels, start=1):
        write_image(root / "jpg" / f"image_{i:05d}.jpg", int(y) - 1, (50, 40), seed=seed * 31 + i)
    ids = {"trnid": [], "valid": [], "tstid": []}
    for c in range(1, num_classes + 1):
        mine = np.flatnonzero(labels == c) + 1
        a, b, _ = per_split
        ids["trnid"] += mine[:a].tolist()
        ids["valid"] += mine[a:a + b].tolist()
        ids["tstid"] += mine[a + b:].tolist()
    savemat(root / "imagelabels.mat", {"labels": labels[None, :].astype(np.float64)})
    savemat(root / "setid.mat", {k: np.array(sorted(v), dtype=np.uint16)[None, :] for k, v in ids.items()})
    return {"labels": labels - 1, **{k: sorted(v) for k, v in ids.items()}}


def write_vtab_task(root: Path, task: str, num_classes: int, n_train: int = 8, n_val: int = 2, n_test: int = 4,
                    ext: str = ".jpg", seed: int = 0) -> Path:
    """``<root>/<task>/images/...`` + ``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt``
    (``<relative path> <label>`` lines), the VTAB-1k layout PyTorch fine-tuning work uses; here with
    ``n_train``/``n_val``/``n_test`` images instead of 800/200/all."""
    d = Path(root) / task
    rows = {}
    k = min(num_classes, 36)
    for split, n in (("train800", n_train), ("val200", n_val), ("test", n_test)):
        rows[split] = []
        for i in range(n):
            y = i % k
            rel = f"images/{split}/{i:06d}{ext}"
            write_image(d / rel, y, (32, 32), seed=seed * 13 + 1000 * len(rows) + i)
            rows[split].append(f"{rel} {y}")
    for split in ("train800", "val200", "test"):
        (d / f"{split}.txt").write_text("\n".join(rows[split]) + "\n")
    (d / "train800val200.txt").write_text("\n".join(rows["train800"] + rows["val200"]) + "\n")
    return d
