"""ImageNet (every val layout people have, ReaL labels), ImageNet-21k and user folders, on JPEG fixtures."""

import json
import warnings

import numpy as np
import pytest
import torch

from dataset_writers import WNIDS, label_from_pixels, truncate_file, write_class_folders, write_imagenet
from vitlab.data.folder import FolderDataModule
from vitlab.data.imagenet import ImageNetDataModule
from vitlab.data.imagenet21k import ImageNet21kDataModule
from vitlab.errors import CorruptImageError, DataConfigError, DatasetFormatError, DatasetNotFoundError
from vitlab.modules.classification import ReaLAccuracy
from vitlab.train import train

LAYOUTS = ["folders", "devkit", "devkit_tar", "kaggle"]


@pytest.fixture(scope="module", params=LAYOUTS)
def imagenet(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"imagenet_{request.param}")
    info = write_imagenet(root, WNIDS[:4], train_per_class=6, val_per_class=2, val_layout=request.param, real=True)
    return root, info


def _dm(root, **kw):
    kw.setdefault("num_classes", 4)
    kw.setdefault("img_size", 32)
    kw.setdefault("num_workers", 0)
    return ImageNetDataModule(root=str(root), **kw)


def test_every_val_layout_gives_the_same_labels_in_sorted_wnid_order(imagenet):
    root, info = imagenet
    dm = _dm(root, val_fraction=0.0)
    train_set, val, test = dm.build_splits()
    assert dm.classes == sorted(WNIDS[:4])
    assert len(train_set) == 24 and len(test) == 8
    # test is the official val in file-number order; labels agree with the writer's ground truth
    assert test.targets == info["val_labels"]
    assert [p.rsplit("/", 1)[1] for p in test.paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 9)]
    for ds in (train_set, test):
        for i in range(len(ds)):
            img, y, *_ = ds[i]
            assert label_from_pixels(img) == y  # the decoded pixels belong to the class the loader says


def test_real_labels_reach_test_acc_real(imagenet):
    root, info = imagenet
    dm = _dm(root, batch_size=4)
    dm.setup()
    img, y, real = dm.test_set[1]
    assert img.shape == (3, 32, 32) and real.dtype == torch.bool and real.shape == (4,)
    assert real.nonzero().flatten().tolist() == info["real"][1]
    assert not dm.test_set[0][2].any()  # an image ReaL drops
    x, yb, rb = next(iter(dm.test_dataloader()))
    assert rb.shape == (4, 4)
    # the metric: right if in the set, images without a set left out
    m = ReaLAccuracy()
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    realm = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    m.update(logits, realm)
    assert m.compute().item() == pytest.approx(2 / 3)


def test_minival_is_a_stable_hashed_holdout(imagenet):
    root, _ = imagenet
    a, b = _dm(root, val_fraction=0.3), _dm(root, val_fraction=0.3)
    ta, va, _ = a.build_splits()
    tb, vb, _ = b.build_splits()
    assert va.paths == vb.paths and 0 < len(va) < 24 and len(ta) + len(va) == 24
    assert not set(ta.paths) & set(va.paths)
    c = _dm(root, val_fraction=0.3, split_seed=1)
    assert c.build_splits()[1].paths != va.paths


def test_train_size_fractions_for_data_scaling(imagenet):
    root, _ = imagenet
    sizes = {}
    for frac in (1 / 3, 0.5, 1.0):
        dm = _dm(root, val_fraction=0.0, train_size=frac)
        dm.setup()
        sizes[frac] = len(dm.train_set)
        assert np.bincount(dm.train_set.targets, minlength=4).tolist() == [round(6 * frac)] * 4
    assert list(sizes.values()) == [8, 12, 24]


def test_imagenet_trains_through_vitlab_train_and_logs_test_acc_real(compose_train, tmp_path):
    root = tmp_path / "in"
    write_imagenet(root, WNIDS[:3], train_per_class=4, val_per_class=2, val_layout="devkit", real=True)
    cfg = compose_train("data=imagenet", f"data.root={root}", "data.num_classes=3", "model=vit_micro",
                        "data.img_size=32", "data.num_workers=0", "data.val_fraction=0", "data.batch_size=6",
                        "trainer.max_epochs=1")
    res = train(cfg)
    assert res["data/train_size"] == 12 and res["data/test_size"] == 6 and res["data/real_labels"] is True
    assert 0.0 <= res["test/acc_real"] <= 1.0 and "test/acc" in res


def test_missing_root_and_missing_val_labels_say_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        _dm(tmp_path / "nope").build_splits()
    assert str(tmp_path / "nope") in str(e.value) and "train/<wnid>/*.JPEG" in str(e.value)
    write_imagenet(tmp_path / "in", WNIDS[:2], 2, 1, val_layout="devkit")
    import shutil

    shutil.rmtree(tmp_path / "in" / "ILSVRC2012_devkit_t12")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)flat folder.*ILSVRC2012_devkit_t12.*LOC_val_solution.csv"):
        _dm(tmp_path / "in", num_classes=2).build_splits()
    with pytest.raises(DataConfigError, match=r"has 2 classes but data.num_classes=1000: set data.num_classes=2"):
        ImageNetDataModule(root=str(tmp_path / "in"), val_labels=None).build_splits()


def test_label_files_naming_missing_images_or_unknown_wnids_give_the_line(tmp_path):
    root = tmp_path / "k"
    write_imagenet(root, WNIDS[:2], 2, 2, val_layout="kaggle")
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    (root / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"LOC_val_solution.csv:4: image .*ILSVRC2012_val_00000003.JPEG"):
        _dm(root, num_classes=2).build_splits()
    lines[3] = "ILSVRC2012_val_00000001,n09999999 1 2 3 4"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution.csv:4: wnid n09999999 is not one of the 2"):
        _dm(root, num_classes=2).build_splits()


def test_real_json_with_out_of_range_labels_names_the_entry(tmp_path):
    info = write_imagenet(tmp_path, WNIDS[:2], 2, 1, val_layout="folders", real=True)
    real = info["real"]
    real[1] = [0, 7]
    (tmp_path / "real.json").write_text(json.dumps(real))
    with pytest.raises(DatasetFormatError, match=r"real.json: entry 1 \(ILSVRC2012_val_00000002.JPEG\) has label\(s\) \[7\]"):
        _dm(tmp_path, num_classes=2).build_splits()


def test_corrupt_jpeg_is_named_or_skipped_with_a_warning(tmp_path):
    write_imagenet(tmp_path, WNIDS[:2], 3, 1, val_layout="folders")
    bad = sorted((tmp_path / "train" / WNIDS[0]).iterdir())[1]
    truncate_file(bad, 0.4)
    dm = _dm(tmp_path, num_classes=2, val_fraction=0.0)
    dm.setup()
    with pytest.raises(CorruptImageError, match=rf"cannot decode image {bad}.*data.skip_corrupt=true"):
        for i in range(len(dm.train_set)):
            dm.train_set[i]
    (tmp_path / "train" / WNIDS[1] / "junk.JPEG").write_bytes(b"not a jpeg at all")
    dm = _dm(tmp_path, num_classes=2, val_fraction=0.0, skip_corrupt=True, batch_size=7)
    dm.setup()
    with pytest.warns(UserWarning) as rec:
        x, y = next(iter(dm.train_dataloader()))
    msgs = [str(w.message) for w in rec if "skip_corrupt" in str(w.message)]
    assert x.shape[0] == 7 and len(msgs) == 2
    assert any(str(bad) in m for m in msgs) and any("junk.JPEG" in m and "2 corrupt" in m for m in msgs)


def test_nothing_is_written_inside_the_dataset_root(tmp_path):
    write_imagenet(tmp_path, WNIDS[:2], 2, 1, val_layout="devkit_tar", real=True)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    dm = _dm(tmp_path, num_classes=2, val_fraction=0.5)
    dm.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        next(iter(dm.train_dataloader())), next(iter(dm.test_dataloader()))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_imagenet21k_heldout_split_is_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "i21k"
    wnids = ["n00004475", "n00005787", "n00006024"]
    write_class_folders(root, wnids, 20, ".JPEG", size=(24, 20))
    dm = ImageNet21kDataModule(root=str(root), num_classes=3, val_fraction=0.2, num_workers=0)
    tr, va, te = dm.build_splits()
    assert va is te and len(tr) + len(va) == 60 and 4 <= len(va) <= 24
    assert not set(tr.paths) & set(va.paths)
    assert ImageNet21kDataModule(root=str(root), num_classes=3, val_fraction=0.2).build_splits()[1].paths == va.paths
    # adding images never moves existing ones between splits
    write_class_folders(tmp_path / "extra", wnids, 3, ".JPEG", prefix="new", size=(24, 20))
    for w in wnids:
        for p in (tmp_path / "extra" / w).iterdir():
            p.rename(root / w / p.name)
    va2 = ImageNet21kDataModule(root=str(root), num_classes=3, val_fraction=0.2).build_splits()[1]
    assert set(va.paths) <= set(va2.paths)


def test_folder_layouts_and_class_count_from_the_tree(tmp_path, compose_train):
    write_class_folders(tmp_path / "split" / "train", ["cat", "dog", "emu"], 4, ".png")
    write_class_folders(tmp_path / "split" / "val", ["cat", "dog", "emu"], 2, ".jpg")
    dm = FolderDataModule(root=str(tmp_path / "split"), num_workers=0, img_size=32)
    tr, va, te = dm.build_splits()
    assert dm.num_classes == 3 and dm.classes == ["cat", "dog", "emu"] and (len(tr), len(va)) == (12, 6) and te is va
    write_class_folders(tmp_path / "split" / "val", ["zebra"], 1, ".jpg")
    with pytest.raises(DatasetFormatError, match=r"class folder\(s\) \['zebra'\] that the train split does not have"):
        FolderDataModule(root=str(tmp_path / "split")).build_splits()
    write_class_folders(tmp_path / "flat", ["a", "b"], 10, ".jpg")
    cfg = compose_train("data=folder", f"data.root={tmp_path / 'flat'}", "data.img_size=32", "data.num_workers=0")
    assert cfg.data.num_classes == 2 and cfg.model.num_classes == 2
    dm = FolderDataModule(root=str(tmp_path / "flat"), val_fraction=0.3)
    tr, va, te = dm.build_splits()
    assert len(tr) + len(va) == 20 and va is te and len(va) > 0
    with pytest.raises(Exception, match=r"(?s)data.root=.*nope does not exist.*<root>/<class>/<image>"):
        _ = compose_train("data=folder", f"data.root={tmp_path / 'nope'}").data.num_classes


def test_a_corrupt_image_read_in_a_worker_process_still_names_the_file(tmp_path):
    write_imagenet(tmp_path, WNIDS[:2], 2, 1, val_layout="folders")
    bad = sorted((tmp_path / "val" / WNIDS[0]).iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    dm = _dm(tmp_path, num_classes=2, val_fraction=0.0, num_workers=1, batch_size=2)
    dm.setup()
    with pytest.raises(CorruptImageError, match=rf"cannot decode image {bad}"):
        list(dm.test_dataloader())
