"""The transfer datasets in their release layouts: Oxford-IIIT Pet, Flowers-102 (.mat files), VTAB-1k."""

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from dataset_writers import label_from_pixels, write_flowers102, write_pets, write_vtab_task
from vitlab.data.catalog import VTAB_GROUPS, VTAB_TASKS
from vitlab.data.flowers102 import Flowers102DataModule
from vitlab.data.pets import PetsDataModule
from vitlab.data.vtab import VTABDataModule
from vitlab.errors import DataConfigError, DatasetFormatError, DatasetNotFoundError
from vitlab.train import train

PAPER_VTAB_CLASSES = {  # PAPER.md, VTAB-1k class counts
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5, "clevr_count": 8,
    "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}


def _check_pixels(ds):
    for i in range(len(ds)):
        img, y = ds[i]
        assert label_from_pixels(img) == y, ds.paths[i]


# ---- Oxford-IIIT Pet --------------------------------------------------------------------------


def test_pets_release_layout_labels_and_minival(tmp_path):
    write_pets(tmp_path, trainval_per_class=10, test_per_class=3)
    dm = PetsDataModule(root=str(tmp_path), num_classes=4, val_fraction=0.2, num_workers=0)
    tr, va, te = dm.build_splits()
    assert dm.classes == ["Abyssinian", "american_bulldog", "beagle", "Bengal"]  # class id order (alphabetical)
    assert len(tr) + len(va) == 40 and len(te) == 12 and 0 < len(va) < 40
    assert not set(tr.paths) & set(va.paths)
    for ds in (tr, va, te):
        _check_pixels(ds)
    assert PetsDataModule(root=str(tmp_path), num_classes=4, val_fraction=0.2).build_splits()[1].paths == va.paths
    # torchvision's unpack location works too
    write_pets(tmp_path / "tv" / "oxford-iiit-pet", trainval_per_class=2, test_per_class=1)
    assert len(PetsDataModule(root=str(tmp_path / "tv"), num_classes=4, val_fraction=0).build_splits()[0]) == 8


def test_pets_bad_lines_missing_images_and_class_counts(tmp_path):
    write_pets(tmp_path, trainval_per_class=2, test_per_class=1)
    with pytest.raises(DataConfigError, match=r"4 of data.num_classes=37 classes.*set data.num_classes=4"):
        PetsDataModule(root=str(tmp_path)).build_splits()
    (tmp_path / "images" / "beagle_2.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"trainval.txt:\d+: image .*beagle_2.jpg listed on this line"):
        PetsDataModule(root=str(tmp_path), num_classes=4).build_splits()
    test_txt = tmp_path / "annotations" / "test.txt"
    test_txt.write_text(test_txt.read_text() + "Bengal_1 38 1 2\n")
    with pytest.raises(DatasetFormatError, match=r"test.txt:5: class id 38 is outside 1..4"):
        PetsDataModule(root=str(tmp_path), num_classes=4, check_files=False).build_splits()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)nope.*images/<Breed>_<n>.jpg"):
        PetsDataModule(root=str(tmp_path / "nope")).build_splits()


# ---- Flowers-102 ------------------------------------------------------------------------------


def test_flowers_mat_files_give_official_splits(tmp_path):
    info = write_flowers102(tmp_path, num_classes=4, per_split=(3, 2, 2))
    m = loadmat(tmp_path / "setid.mat")
    assert set(m) >= {"trnid", "valid", "tstid"} and m["trnid"].shape == (1, 12)
    dm = Flowers102DataModule(root=str(tmp_path), num_classes=4, num_workers=0, val_fraction=0.0)
    tr, va, te = dm.build_splits()
    assert (len(tr), len(va), len(te)) == (12, 8, 8)
    assert tr.paths[0].endswith(f"jpg/image_{info['trnid'][0]:05d}.jpg")
    assert tr.targets == [int(info["labels"][i - 1]) for i in info["trnid"]]
    for ds in (tr, va, te):
        _check_pixels(ds)
    tv = Flowers102DataModule(root=str(tmp_path), num_classes=4, train_split="trainval", val_fraction=0.0).build_splits()[0]
    assert len(tv) == 20


def test_flowers_validates_on_a_dev_split_of_train_by_default(tmp_path):
    """Paper App. B.1.1: the lr is chosen on 10% of train, not on the official val split (issue 13 row 8)."""
    from dataset_writers import write_flowers102

    info = write_flowers102(tmp_path, num_classes=4, per_split=(10, 2, 2))
    tr, va, te = Flowers102DataModule(root=str(tmp_path), num_classes=4).build_splits()
    official_train = {f"image_{i:05d}.jpg" for i in info["trnid"]}
    names = lambda ds: {p.rsplit("/", 1)[-1] for p in ds.paths}  # noqa: E731
    assert names(tr) | names(va) == official_train and not names(tr) & names(va)
    assert 0 < len(va) < 12 and len(tr) + len(va) == 40 and len(te) == 8
    again = Flowers102DataModule(root=str(tmp_path), num_classes=4).build_splits()[1]
    assert names(again) == names(va)  # deterministic


def test_flowers_bad_mat_contents_are_named(tmp_path):
    write_flowers102(tmp_path, num_classes=3, per_split=(2, 1, 1))
    with pytest.raises(DataConfigError, match=r"imagelabels.mat has 3 classes but data.num_classes=102"):
        Flowers102DataModule(root=str(tmp_path)).build_splits()
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 99]]), "valid": np.array([[2]]), "tstid": np.array([[3]])})
    with pytest.raises(DatasetFormatError, match=r"setid.mat: trnid has image id 99, outside 1..12"):
        Flowers102DataModule(root=str(tmp_path), num_classes=3).build_splits()
    (tmp_path / "setid.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"setid.mat is missing"):
        Flowers102DataModule(root=str(tmp_path), num_classes=3).build_splits()


# ---- VTAB-1k ----------------------------------------------------------------------------------


def test_vtab_task_table_matches_the_paper():
    assert {t: k for t, (_, k) in VTAB_TASKS.items()} == PAPER_VTAB_CLASSES
    assert [len(VTAB_GROUPS[g]) for g in ("natural", "specialized", "structured")] == [7, 4, 8]
    assert VTAB_GROUPS["specialized"] == ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]


def test_vtab_lists_splits_and_protocol(tmp_path, compose_train):
    write_vtab_task(tmp_path, "dtd", 47, n_train=8, n_val=4, n_test=6, ext=".png")
    dm = VTABDataModule(root=str(tmp_path), task="dtd", num_workers=0, img_size=32)
    tr, va, te = dm.build_splits()
    assert (len(tr), len(va), len(te)) == (12, 4, 6) and dm.num_classes == 47 and dm.group == "natural"
    assert set(va.paths) <= set(tr.paths)  # train800val200 contains val200 (final protocol run)
    for ds in (tr, te):
        _check_pixels(ds)
    tr800 = VTABDataModule(root=str(tmp_path), task="dtd", train_split="train800").build_splits()[0]
    assert len(tr800) == 8 and not set(tr800.paths) & set(va.paths)
    cfg = compose_train("data=vtab", "data.task=smallnorb_azi", f"data.root={tmp_path}")
    assert cfg.data.num_classes == 18 and cfg.model.num_classes == 18 and cfg.data.name == "vtab_smallnorb_azi"
    with pytest.raises(DataConfigError, match=r"data.task='cifar10' is not a VTAB-1k task; choose one of caltech101"):
        VTABDataModule(root=str(tmp_path), task="cifar10")


def test_vtab_bad_lines_name_file_and_line(tmp_path):
    d = write_vtab_task(tmp_path, "kitti", 4, n_train=4, n_val=2, n_test=2)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)data.root=.*vtab-missing does not exist.*<root>/kitti/\{train800.txt"):
        VTABDataModule(root=str(tmp_path / "vtab-missing"), task="kitti").build_splits()
    lines = (d / "test.txt").read_text().splitlines()
    (d / "test.txt").write_text("\n".join([*lines, "images/test/000000.jpg 4"]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"test.txt:3: label 4 is outside \[0, 4\)"):
        VTABDataModule(root=str(tmp_path), task="kitti").build_splits()
    (d / "test.txt").write_text("\n".join([*lines, "images/test/gone.jpg 1"]) + "\n")
    with pytest.raises(DatasetNotFoundError, match=r"test.txt:3: image .*gone.jpg listed on this line does not exist"):
        VTABDataModule(root=str(tmp_path), task="kitti").build_splits()
    (d / "test.txt").write_text("images/test/000000.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"test.txt:1: expected '<image path> <int label>'"):
        VTABDataModule(root=str(tmp_path), task="kitti").build_splits()
    with pytest.raises(DatasetNotFoundError, match="tasks found in .*: \\['kitti'\\]"):
        VTABDataModule(root=str(tmp_path), task="svhn").build_splits()


def test_vit_micro_trains_on_a_vtab_task_through_vitlab_train(tmp_path, compose_train):
    write_vtab_task(tmp_path, "eurosat", 10, n_train=10, n_val=4, n_test=6)
    cfg = compose_train("data=vtab", "data.task=eurosat", f"data.root={tmp_path}", "model=vit_micro",
                        "data.img_size=32", "data.num_workers=0", "data.batch_size=7", "trainer.max_epochs=1")
    res = train(cfg)
    assert res["data/vtab_task"] == "eurosat" and res["data/train_size"] == 14 and res["data/test_size"] == 6
    assert 0.0 <= res["test/acc"] <= 1.0
