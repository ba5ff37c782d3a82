"""ImageNet-21k (fall11 / winter21 releases, unpacked): a folder of wnid sub-folders.

    <root>/<wnid>/*.JPEG          (or <root>/train/<wnid>/*.JPEG with optional val/)

There is no official validation split, so ``data.val_fraction`` of the images (default 2%) is held
out deterministically by hashing each file's ``<wnid>/<file>`` path with ``data.split_seed``: the
same files on any machine, stable when images are added, nothing written into the dataset. The
held-out set serves as both validation and test split. Classes are the sorted wnids, as in the
official ViT checkpoints (21,843 classes for fall11).
"""

from __future__ import annotations

from vitlab.data.folder import FolderDataModule

#: classes of the fall11 release (the paper's ImageNet-21k, 14.2M images)
IMAGENET21K_CLASSES = 21_843


class ImageNet21kDataModule(FolderDataModule):
    name = "imagenet21k"
    default_train_pipeline = "pretrain"
    layout = "  <root>/<wnid>/*.JPEG  (the release's per-synset tars, unpacked; or <root>/train/<wnid>/...)"

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("val_fraction", 0.02)
        kwargs.setdefault("num_classes", IMAGENET21K_CLASSES)
        super().__init__(**kwargs)
