"""What every on-disk dataset shares: configs, pipelines by stage, the subset knob, loader defaults, decoders, bench."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.transforms import v2

import dataset_writers as fx
from vitlab import CONF_DIR
from vitlab.data.files import load_image

REAL_DATASETS = ["cifar10", "cifar100", "imagenet", "imagenet21k", "folder", "pets", "flowers102", "vtab"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One tiny release-format copy per dataset, and the overrides that point a config at it."""
    t = tmp_path_factory.mktemp("datasets")
    fx.write_cifar10(t / "cifar", per_batch=12, n_test=10)
    fx.write_cifar100(t / "cifar", n_train=100, n_test=100)
    fx.write_imagenet(t / "imagenet", fx.WNIDS[:3], train_per_class=8, val_per_class=2, val_layout="devkit", real=True)
    fx.write_class_folders(t / "i21k", ["n00004475", "n00005787", "n00006024"], 8, ".JPEG")
    fx.write_class_folders(t / "folder" / "train", ["a", "b", "c"], 8, ".png")
    fx.write_pets(t / "pets", trainval_per_class=8, test_per_class=2)
    fx.write_flowers102(t / "flowers", num_classes=3, per_split=(8, 2, 2))
    fx.write_vtab_task(t / "vtab", "dtd", 47, n_train=24, n_val=6, n_test=6)
    return {
        "cifar10": [f"data.root={t / 'cifar'}"],
        "cifar100": [f"data.root={t / 'cifar'}"],
        "imagenet": [f"data.root={t / 'imagenet'}", "data.num_classes=3", "data.val_fraction=0"],
        "imagenet21k": [f"data.root={t / 'i21k'}", "data.num_classes=3"],
        "folder": [f"data.root={t / 'folder'}"],
        "pets": [f"data.root={t / 'pets'}", "data.num_classes=4", "data.val_fraction=0"],
        "flowers102": [f"data.root={t / 'flowers'}", "data.num_classes=3"],
        "vtab": [f"data.root={t / 'vtab'}", "data.task=dtd"],
    }


def _dm(compose_train, roots, name, *extra):
    cfg = compose_train(f"data={name}", *roots[name], "data.img_size=32", "data.num_workers=0", *extra)
    return cfg, instantiate(cfg.data, _convert_="all")


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_every_config_documents_itself_and_loads_its_fixture(name, roots, compose_train):
    text = (Path(CONF_DIR) / "data" / f"{name}.yaml").read_text()
    assert text.startswith("# ") and "Run: python -m vitlab.train" in text and "data.root" in text
    cfg, dm = _dm(compose_train, roots, name)
    assert cfg.model.num_classes == cfg.data.num_classes == dm.num_classes
    dm.setup()
    x, y, *_ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # as Lightning hands it to the model
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and int(y.max()) < dm.num_classes
    assert len(dm.train_set) > 0 and len(dm.val_set) > 0 and len(dm.test_set) > 0


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_train_size_is_seeded_class_balanced_and_refuses_too_many(name, roots, compose_train):
    _, full = _dm(compose_train, roots, name)
    full.setup()
    n = len(full.train_set)
    size = n // 2
    _, a = _dm(compose_train, roots, name, f"data.train_size={size}")
    _, b = _dm(compose_train, roots, name, f"data.train_size={size}")
    _, c = _dm(compose_train, roots, name, f"data.train_size={size}", "data.subset_seed=1")
    for dm in (a, b, c):
        dm.setup()
    assert len(a.train_set) == size and a.train_set.base.indices == b.train_set.base.indices
    assert a.train_set.base.indices != c.train_set.base.indices
    full_counts = np.bincount(full.train_set.targets)
    counts = np.bincount(a.train_set.targets, minlength=len(full_counts))
    not_exhausted = counts < full_counts  # a class with too few images gives its share to the others
    assert counts.max() - counts[not_exhausted].min(initial=counts.max()) <= 1
    from vitlab.errors import DataConfigError

    _, too_many = _dm(compose_train, roots, name, f"data.train_size={n + 1}")
    with pytest.raises(DataConfigError, match=rf"train_size={n + 1} but .* has only {n} examples"):
        too_many.setup()


def _ops(transform) -> list[type]:
    return [type(t) for t in transform.transforms]


def test_pipelines_are_chosen_by_stage(roots, compose_train):
    _, imnet = _dm(compose_train, roots, "imagenet")
    assert v2.RandomResizedCrop in _ops(imnet.train_transform()) and v2.RandomHorizontalFlip in _ops(imnet.train_transform())
    assert not {v2.CenterCrop, v2.RandomResizedCrop} & set(_ops(imnet.eval_transform()))  # paper eval: square resize
    _, timm_eval = _dm(compose_train, roots, "imagenet", "data.eval_resize=center_crop")
    assert v2.CenterCrop in _ops(timm_eval.eval_transform())
    _, ft = _dm(compose_train, roots, "imagenet", "data.train_pipeline=finetune", "data.img_size=48", "data.eval_img_size=64")
    ops = _ops(ft.train_transform())
    assert v2.RandomCrop in ops and v2.RandomHorizontalFlip in ops and v2.RandomResizedCrop not in ops
    ft.setup()
    assert ft.train_set[0][0].shape == (3, 48, 48) and ft.test_set[0][0].shape == (3, 64, 64)
    _, cifar = _dm(compose_train, roots, "cifar10")
    assert cifar.train_pipeline == "finetune"
    _, vtab = _dm(compose_train, roots, "vtab")  # no flips: they would change dsprites/smallnorb orientation labels
    assert not {v2.RandomHorizontalFlip, v2.RandomResizedCrop, v2.RandomCrop} & set(_ops(vtab.train_transform()))
    _, norm = _dm(compose_train, roots, "folder", "data.normalization=imagenet")
    n = [t for t in norm.eval_transform().transforms if isinstance(t, v2.Normalize)][0]
    assert list(n.mean) == [0.485, 0.456, 0.406]


def test_loader_defaults_fit_the_machine(roots, compose_train):
    cfg = compose_train("data=imagenet", *roots["imagenet"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    loader = dm.train_dataloader()
    assert cfg.data.num_workers == "auto" and loader.num_workers == dm.num_workers >= 0
    assert loader.pin_memory == torch.cuda.is_available()
    if loader.num_workers > 0:
        assert loader.persistent_workers


def test_both_decoders_read_the_same_pixels(tmp_path):
    p = fx.write_image(tmp_path / "a.JPEG", 3, (64, 48))
    fast, pil = load_image(p, "auto"), load_image(p, "pil")
    assert isinstance(fast, torch.Tensor) and fast.shape == (3, 48, 64) and fast.dtype == torch.uint8
    ref = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1)
    assert (fast.int() - ref.int()).abs().float().mean() < 1.0
    g = tmp_path / "gray.jpg"
    fx.make_image(0, (20, 10)).convert("L").save(g)
    assert load_image(g, "auto").shape == (3, 10, 20)  # grayscale JPEGs come out RGB like PIL's convert


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_translate_crop_is_torchvisions_edge_padded_random_crop(dtype):
    """The translate pipeline's crop (torch's replicate pad, no float round trip) draws and returns exactly what
    ``v2.RandomCrop(padding_mode="edge")`` does, for every offset."""
    from torchvision import tv_tensors

    from vitlab.data.transforms import EdgePadRandomCrop

    ref, fast = v2.RandomCrop(16, padding=3, padding_mode="edge"), EdgePadRandomCrop(16, 3)
    seen = set()
    for seed in range(400):
        img = tv_tensors.Image((torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255).to(dtype))
        torch.manual_seed(seed)
        a = ref(img)
        torch.manual_seed(seed)
        b = fast(img)
        assert type(b) is type(a) and b.dtype == dtype and torch.equal(a, b), seed
        torch.manual_seed(seed)
        seen.add(tuple(ref.make_params([img])[k] for k in ("top", "left")))
    assert len(seen) == 49  # every (top, left) in 0..6 x 0..6: the edges and corners are covered


@pytest.mark.parametrize("scale", [(0.05, 1.0), (0.08, 1.0), (0.9, 1.0)])
def test_inception_crop_box_draws_torchvisions_boxes(scale):
    """The packed reader draws its crop from the JPEG header with InceptionCropBox: for a seed, the box v2's
    RandomResizedCrop draws, fallback central crops of extreme shapes included, and the RNG left in the same state."""
    from vitlab.data.transforms import INCEPTION_CROP_RATIO, InceptionCropBox

    ours, theirs = InceptionCropBox(scale), v2.RandomResizedCrop(224, scale=scale, ratio=INCEPTION_CROP_RATIO)
    for seed, (h, w) in enumerate([(375, 500), (500, 333), (224, 224), (1, 900), (900, 3), (64, 48)] * 20):
        torch.manual_seed(seed)
        p = theirs.make_params([torch.empty(3, h, w)])
        after = torch.rand(1)
        torch.manual_seed(seed)
        assert ours(h, w) == (p["top"], p["left"], p["height"], p["width"]), (seed, h, w)
        assert torch.equal(torch.rand(1), after)
