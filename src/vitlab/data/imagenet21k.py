"""ImageNet-21k (fall11 / winter21 releases, unpacked): a folder of wnid sub-folders.

    <root>/<wnid>/*.JPEG          (or <root>/train/<wnid>/*.JPEG with optional val/)

There is no official validation split, so ``data.val_fraction`` of the images (default 2%) is held
out deterministically by hashing each file's ``<wnid>/<file>`` path with ``data.split_seed``: the
same files on any machine, stable when images are added, nothing written into the dataset. The
held-out set serves as both validation and test split. Classes are the sorted wnids, as in the
official ViT checkpoints (21,843 classes for fall11).

Listing 14M files takes minutes and loads a shared file system's metadata servers, so the index (paths,
labels, classes) is cached (``data.index_cache=true``, in ``data.cache_dir``; never inside the dataset).
The cache is keyed by the folder's real path and checked against a signature of the tree: the (mtime, size)
of the folder and of every class folder. Adding, removing or renaming an image changes its class folder's
mtime, so a changed tree is listed again. Not seen: changes inside sub-folders of a class folder (the release
has none). For many nodes and object storage, pack the tree once instead (``python -m vitlab.pack``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

from vitlab.data.files import scan_class_folders
from vitlab.data.folder import FolderDataModule

#: classes of the fall11 release (the paper's ImageNet-21k, 14.2M images)
IMAGENET21K_CLASSES = 21_843
log = logging.getLogger(__name__)

#: version of the cached index's layout; another version is listed again
INDEX_VERSION = 1


def tree_signature(directory: Path) -> str:
    """sha1 of (name, mtime_ns, size) of ``directory`` and of each entry in it: one stat per class folder."""
    h = hashlib.sha1()
    st = os.stat(directory)
    h.update(f".:{st.st_mtime_ns}:{st.st_size}\n".encode())
    for e in sorted(os.scandir(directory), key=lambda e: e.name):
        try:
            st = e.stat()
        except OSError:
            continue
        h.update(f"{e.name}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return h.hexdigest()


class ImageNet21kDataModule(FolderDataModule):
    name = "imagenet21k"
    default_train_pipeline = "pretrain"
    layout = "  <root>/<wnid>/*.JPEG  (the release's per-synset tars, unpacked; or <root>/train/<wnid>/...)"

    def __init__(self, index_cache: bool = False, cache_dir: str | None = None, **kwargs) -> None:
        kwargs.setdefault("val_fraction", 0.02)
        kwargs.setdefault("num_classes", IMAGENET21K_CLASSES)
        super().__init__(**kwargs)
        self.index_cache = bool(index_cache)
        self.cache_dir = Path(cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vitlab")
                              ).expanduser() / "imagenet21k_index"

    def index_file(self, directory: Path, classes: list[str] | None, root: Path | None) -> Path:
        key = f"{INDEX_VERSION}|{os.path.realpath(directory)}|{os.path.realpath(root or directory)}|{classes}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json.gz"

    def scan(self, directory: Path, classes: list[str] | None = None, root: Path | None = None):
        """The folder's index from the cache when the tree's signature still matches, else listed (and cached).

        The warnings of the listing (skipped links, unreadable folders) are stored with it and shown again."""
        if not self.index_cache:
            return super().scan(directory, classes, root)
        path, sig, prefix = self.index_file(directory, classes, root), tree_signature(directory), str(directory) + os.sep
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = None
        if cached and cached.get("version") == INDEX_VERSION and cached.get("signature") == sig:
            for msg in cached["warnings"]:
                warnings.warn(msg, stacklevel=2)
            log.info("%s: index of %d images from the cache %s", directory, len(cached["paths"]), path)
            return [prefix + p for p in cached["paths"]], cached["targets"], cached["classes"]
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            paths, targets, found = scan_class_folders(directory, classes, root=root)
        for w in seen:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        rel = [p[len(prefix):] if p.startswith(prefix) else p for p in paths]
        entry = {"version": INDEX_VERSION, "directory": str(directory), "signature": sig, "classes": list(found),
                 "targets": [int(t) for t in targets], "paths": rel, "warnings": [str(w.message) for w in seen],
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
                json.dump(entry, f)
            os.replace(tmp, path)
            log.info("%s: listed %d images in %.1fs; index cached in %s", directory, len(paths),
                     time.perf_counter() - t0, path)
        except OSError as e:  # a read-only cache: the run goes on, listing again next time
            warnings.warn(f"cannot write the index cache {path} ({e}); set data.cache_dir to a writable folder",
                          stacklevel=2)
        return paths, targets, found
