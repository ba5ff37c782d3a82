"""Oxford-IIIT Pet (37 breeds) in its official release layout (images.tar.gz + annotations.tar.gz unpacked).

    <root>/images/<Breed_name>_<n>.jpg
    <root>/annotations/trainval.txt, test.txt   lines: <image> <class id 1..37> <species> <breed id>

(``<root>/oxford-iiit-pet/`` as torchvision unpacks it works too.) Train is trainval (3,680 images)
minus a held-out ``data.val_fraction`` minival (the paper picks the fine-tuning lr on 10%); test is
test.txt (3,669 images). Class index = class id - 1, i.e. alphabetical breed order.
"""

from __future__ import annotations

from pathlib import Path

from vitlab.data.files import HeldOutFileDataModule, holdout_mask
from vitlab.errors import DataConfigError, DatasetFormatError, DatasetNotFoundError


def read_pets_list(path: Path, images: Path, num_classes: int, check_files: bool = True):
    """(paths, labels, {label: breed}) from trainval.txt / test.txt; errors name the file and line."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing: unpack annotations.tar.gz into {path.parent.parent}")
    paths, labels, names = [], [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            name, cid = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise DatasetFormatError(f"{path}:{n}: expected '<image> <class id> <species> <breed id>', got {line!r}") from None
        if not 1 <= cid <= num_classes:
            raise DatasetFormatError(f"{path}:{n}: class id {cid} is outside 1..{num_classes} in {line!r}")
        img = images / f"{name}.jpg"
        if check_files and not img.is_file():
            raise DatasetNotFoundError(f"{path}:{n}: image {img} listed on this line does not exist")
        paths.append(str(img))
        labels.append(cid - 1)
        names.setdefault(cid - 1, name.rsplit("_", 1)[0])
    if not paths:
        raise DatasetFormatError(f"{path} lists no images")
    return paths, labels, names


class PetsDataModule(HeldOutFileDataModule):
    name = "pets"
    num_classes = 37
    default_train_pipeline = "finetune"
    layout = (
        "  <root>/images/<Breed>_<n>.jpg\n"
        "  <root>/annotations/trainval.txt and test.txt  (Oxford-IIIT Pet's images.tar.gz + annotations.tar.gz)"
    )

    def build_splits(self):
        root = self.root_dir()
        if not (root / "annotations").is_dir() and (root / "oxford-iiit-pet").is_dir():
            root = root / "oxford-iiit-pet"
        for d in ("images", "annotations"):
            if not (root / d).is_dir():
                raise DatasetNotFoundError(f"{root / d} is missing. data=pets expects under data.root={self.root}:\n{self.layout}")
        k = int(self.num_classes)
        paths, labels, names = read_pets_list(root / "annotations" / "trainval.txt", root / "images", k, self.check_files)
        tpaths, tlabels, tnames = read_pets_list(root / "annotations" / "test.txt", root / "images", k, self.check_files)
        found = sorted(set(labels) | set(tlabels))
        if found[-1] + 1 != k or len(found) != k:
            missing = sorted(set(range(k)) - set(found))
            raise DataConfigError(
                f"{root / 'annotations'} has images of {len(found)} of data.num_classes={k} classes "
                f"(no image of class ids {[m + 1 for m in missing][:10]}): set data.num_classes={found[-1] + 1} "
                "for a partial copy, or use the full release"
            )
        self.classes = [({**tnames, **names}).get(i, str(i)) for i in range(k)]
        test = self.images(tpaths, tlabels)
        if self.val_fraction == 0.0:
            return self.images(paths, labels), test, test
        held = holdout_mask([Path(p).name for p in paths], self.val_fraction, self.split_seed)
        pick = lambda keep: [x for x, h in zip(paths, held, strict=True) if h == keep]  # noqa: E731
        lab = lambda keep: [y for y, h in zip(labels, held, strict=True) if h == keep]  # noqa: E731
        return self.images(pick(False), lab(False)), self.images(pick(True), lab(True)), test
