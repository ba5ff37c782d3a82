"""CIFAR-10/100 from the official python release (Python 2 pickles written by the test), download, safe unpacking."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_writers import label_from_pixels, tar_folder, write_cifar10, write_cifar100
from vitlab.data import cifar as cifar_mod
from vitlab.data.cifar import CIFARDataModule, load_batch
from vitlab.data.download import md5sum, safe_extract
from vitlab.errors import DataConfigError, DatasetFormatError, DatasetNotFoundError, UnsafeArchiveError
from vitlab.train import train


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=20, n_test=30)
    write_cifar100(root, n_train=200, n_test=100)
    return root


def test_fixture_is_a_python2_pickle_like_the_release(cifar_root):
    raw = (cifar_root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}")  # protocol 2 dict, as cPickle wrote it
    assert b"U\x04data" in raw and b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # py2 str keys, numpy 1 globals
    b = load_batch(cifar_root / "cifar-10-batches-py" / "data_batch_1")
    assert b["data"].shape == (20, 3072) and b["data"].dtype == np.uint8 and len(b["labels"]) == 20


def test_cifar10_sizes_label_order_and_minival(cifar_root):
    dm = CIFARDataModule(root=str(cifar_root), num_classes=10, val_fraction=0.02)
    train_set, val, test = dm.build_splits()
    assert (len(train_set), len(val), len(test)) == (98, 2, 30)
    assert dm.classes[:3] == ["airplane", "automobile", "bird"]
    # every image carries its label in its colour: the loader keeps image and label together
    for ds in (train_set, val, test):
        for i in range(len(ds)):
            img, y = ds[i]
            assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
            assert label_from_pixels(img) == y
    # minival is the tail of the train batches (train[98%:]), in file order
    b5 = load_batch(cifar_root / "cifar-10-batches-py" / "data_batch_5")
    assert val.targets == list(b5["labels"][-2:])
    assert test.targets == [i % 10 for i in range(30)]
    all_train = CIFARDataModule(root=str(cifar_root / "cifar-10-batches-py"), num_classes=10, val_fraction=0)
    tr, va, te = all_train.build_splits()
    assert len(tr) == 100 and va is te


def test_cifar100_fine_and_coarse_labels(cifar_root):
    fine = CIFARDataModule(root=str(cifar_root), variant="cifar100", num_classes=100)
    coarse = CIFARDataModule(root=str(cifar_root), variant="cifar100", num_classes=20, label_mode="coarse")
    f, c = fine.build_splits()[2], coarse.build_splits()[2]
    assert f.targets == list(range(100)) and c.targets == [i // 5 for i in range(100)]
    assert coarse.classes[0] == "coarse_00" and len(fine.classes) == 100
    with pytest.raises(DataConfigError, match=r"data.num_classes=100.*set data.num_classes=20"):
        CIFARDataModule(root=str(cifar_root), variant="cifar100", num_classes=100, label_mode="coarse").build_splits()


def test_pipelines_by_stage_and_separate_eval_resolution(cifar_root):
    dm = CIFARDataModule(root=str(cifar_root), num_classes=10, img_size=48, eval_img_size=64, batch_size=8)
    dm.setup()
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # as Lightning hands it to the model
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape == (8, 3, 64, 64)
    # eval is deterministic, train is augmented (random crop/flip)
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])
    torch.manual_seed(0)
    draws = [dm.train_set[0][0] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    imnet = CIFARDataModule(root=str(cifar_root), num_classes=10, normalization="imagenet")
    imnet.setup()
    ref = CIFARDataModule(root=str(cifar_root), num_classes=10)
    ref.setup()
    raw = ref.test_set.base[0][0].float() / 255
    assert torch.allclose(ref.test_set[0][0], raw * 2 - 1, atol=1e-5)  # the paper's [-1, 1]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(imnet.test_set[0][0], (raw - mean) / std, atol=1e-4)


def test_train_size_subset_is_seeded_and_class_balanced(cifar_root):
    def subset(size, seed=0):
        dm = CIFARDataModule(root=str(cifar_root), num_classes=10, train_size=size, subset_seed=seed)
        dm.setup()
        return dm.train_set.base.indices, dm.train_set.targets

    idx, t = subset(40)
    assert len(idx) == 40 and idx == subset(40)[0] and idx != subset(40, seed=1)[0]
    counts = np.bincount(t, minlength=10)
    assert counts.max() - counts.min() <= 1 or counts.min() == min(np.bincount(subset(None)[1], minlength=10))
    assert len(subset(0.5)[0]) == 49
    with pytest.raises(DataConfigError, match=r"train_size=500 but cifar10's train split has only 98"):
        subset(500)


def test_missing_root_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        CIFARDataModule(root=str(tmp_path / "nope"), num_classes=10).build_splits()
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "cifar-10-batches-py" in msg and "data_batch_1" in msg
    assert "cifar-10-python.tar.gz" in msg and "data.download=true" in msg
    assert not (tmp_path / "nope").exists()  # nothing is created by a failed read


def test_download_without_network_fails_clearly(tmp_path):
    dm = CIFARDataModule(root=str(tmp_path), num_classes=10, download=True,
                         download_url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetNotFoundError) as e:
        dm.build_splits()
    msg = str(e.value)
    assert "could not fetch http://127.0.0.1:9/" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and "cifar-10-batches-py/test_batch" in msg
    assert list(tmp_path.iterdir()) == []  # no partial download is left behind


def test_local_archive_is_md5_checked_then_unpacked(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src, per_batch=5, n_test=10)
    root = tmp_path / "root"
    root.mkdir()
    archive = tar_folder(src / "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    dm = CIFARDataModule(root=str(root), num_classes=10, download=True, download_url="http://127.0.0.1:9/x")
    with pytest.raises(DatasetFormatError, match=r"cifar-10-python.tar.gz has MD5 .*official archive's is c58f"):
        dm.build_splits()
    spec = {**cifar_mod.ARCHIVES["cifar10"], "md5": md5sum(archive)}
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", spec)
    dm = CIFARDataModule(root=str(root), num_classes=10, download=True, download_url="http://127.0.0.1:9/x",
                         val_fraction=0.2)
    tr, va, te = dm.build_splits()
    assert (len(tr), len(va), len(te)) == (20, 5, 10)
    assert (root / "cifar-10-batches-py" / "batches.meta").is_file()


def _tar_with(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


@pytest.mark.parametrize("bad", ["../escape.txt", "/tmp/abs_escape.txt", "link", "hard"])
def test_extraction_refuses_paths_leaving_the_target(tmp_path, bad):
    members = [tarfile.TarInfo("ok/fine.txt")]
    members[0].size = 1
    m = tarfile.TarInfo(bad if bad not in ("link", "hard") else "ok/" + bad)
    if bad == "link":
        m.type, m.linkname = tarfile.SYMTYPE, "../../outside"
    elif bad == "hard":
        m.type, m.linkname = tarfile.LNKTYPE, "../outside"
    else:
        m.size = 1
    members.append(m)
    archive = _tar_with(tmp_path / "evil.tar", members)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists() and not (dest / "ok" / "fine.txt").exists()


def test_corrupt_or_hostile_batches_name_the_file(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=4, n_test=4)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match="data_batch_3 is not a readable CIFAR python pickle"):
        CIFARDataModule(root=str(tmp_path), num_classes=10).build_splits()
    (folder / "data_batch_3").write_bytes(pickle.dumps(os.system, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"data_batch_3: refusing to unpickle posix.system"):
        CIFARDataModule(root=str(tmp_path), num_classes=10).build_splits()
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    b = load_batch(folder / "test_batch")
    b["labels"][2] = 10
    from dataset_writers import py2_pickle

    py2_pickle(b, folder / "test_batch")
    with pytest.raises(DatasetFormatError, match=r"test_batch: label 10 of image 2 is outside \[0, 10\)"):
        CIFARDataModule(root=str(tmp_path), num_classes=10).build_splits()
    (folder / "data_batch_2").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_2 is missing"):
        CIFARDataModule(root=str(tmp_path), num_classes=10).build_splits()


def test_vit_micro_trains_one_epoch_on_cifar10_through_vitlab_train(cifar_root, compose_train):
    cfg = compose_train("data=cifar10", f"data.root={cifar_root}", "model=vit_micro", "trainer.max_epochs=1",
                        "data.batch_size=32")
    assert cfg.model.num_classes == 10 and cfg.model.img_size == 32
    res = train(cfg)
    assert res["data/name"] == "cifar10" and res["data/train_size"] == 98 and res["data/test_size"] == 30
    assert 0.0 <= res["test/acc"] <= 1.0 and np.isfinite(res["train/loss_epoch"])
