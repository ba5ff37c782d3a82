"""The input-pipeline half of issue #13, on real image files (PNG written with PIL, read by the loaders).

- pretraining inception crop samples area 0.05-1 (vit_jax ``input_pipeline.py``), ``data.train_crop_scale``;
- fine-tuning: train = square resize + random crop + flip (BiT), eval = the whole image resized to the
  resolution, no centre crop (vit_jax ``input_pipeline.py``, BiT); timm's centre crop only by choice;
- the fine-tuning experiments do not keep the pretraining pipeline;
- VTAB-1k images keep their whole field of view (a KITTI-shaped 1242x375 image keeps both ends).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms import v2

import dataset_writers as fx
from vitlab import paper
from vitlab.data.transforms import INCEPTION_CROP_SCALE, build_transform
from vitlab.errors import DataConfigError

RED, BLUE, GREEN, GREY = (255, 0, 0), (0, 0, 255), (0, 255, 0), (128, 128, 128)


def bordered(size: tuple[int, int], border: int) -> Image.Image:
    """A blue image with a red frame ``border`` pixels wide."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = RED
    a[border:h - border, border:w - border] = BLUE
    return Image.fromarray(a)


def two_ends(size: tuple[int, int], end: int) -> Image.Image:
    """Grey, with a red left end and a green right end, each ``end`` pixels wide (objects at the edges)."""
    w, h = size
    a = np.full((h, w, 3), 128, np.uint8)
    a[:, :end] = RED
    a[:, w - end:] = GREEN
    return Image.fromarray(a)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised [-1, 1] CHW (or the train loader's uint8, data.normalize_on_device) back to 0..255 HWC."""
    if x.dtype == torch.uint8:
        return x.permute(1, 2, 0).float()
    return ((x.permute(1, 2, 0) + 1) * 127.5).round()


def _is(px: torch.Tensor, rgb) -> bool:
    return bool(torch.all((px - torch.tensor(rgb, dtype=px.dtype)).abs() < 40))


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """An ImageFolder tree of real PNGs: 300x200 images with a 12 px red border."""
    for c in ("a", "b"):
        for split in ("train", "val"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(2):
                bordered((300, 200), 12).save(d / f"{c}_{i}.png")
    return tmp_path


def _folder_dm(compose_train, root: Path, *extra: str):
    cfg = compose_train("data=folder", f"data.root={root}", "data.img_size=64", "data.num_workers=0", *extra)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    return dm


def test_eval_resizes_the_whole_image_and_keeps_its_border(compose_train, folder_root):
    x = _pixels(_folder_dm(compose_train, folder_root).val_set[0][0])
    assert x.shape == (64, 64, 3)
    for px in (x[0, 32], x[63, 32], x[32, 0], x[32, 63], x[0, 0]):  # all four sides of the frame survive
        assert _is(px, RED)
    assert _is(x[32, 32], BLUE)
    cropped = _pixels(_folder_dm(compose_train, folder_root, "data.eval_resize=center_crop").val_set[0][0])
    assert not _is(cropped[32, 0], RED) and not _is(cropped[32, 63], RED)  # timm's centre crop cuts the frame
    with pytest.raises((DataConfigError, InstantiationException), match="data.eval_resize='middle' is not one of"):
        _folder_dm(compose_train, folder_root, "data.eval_resize=middle")


def test_pretraining_inception_crop_samples_area_down_to_5_percent(compose_train, folder_root):
    assert INCEPTION_CROP_SCALE == (0.05, 1.0)  # vit_jax input_pipeline.py: area_range=(0.05, 1.0)
    crop = [t for t in _folder_dm(compose_train, folder_root).train_transform().transforms
            if isinstance(t, v2.RandomResizedCrop)][0]
    assert tuple(crop.scale) == (0.05, 1.0)
    torch.manual_seed(0)
    from torchvision.transforms import RandomResizedCrop

    img = torch.zeros(3, 200, 300)
    areas = [np.prod(RandomResizedCrop.get_params(img, crop.scale, crop.ratio)[2:]) / (200 * 300) for _ in range(400)]
    assert 0.045 < min(areas) < 0.08  # below timm's 0.08 floor (aspect rounding aside)
    timm_like = _folder_dm(compose_train, folder_root, "data.train_crop_scale=[0.08,1.0]").train_transform()
    assert tuple([t for t in timm_like.transforms if isinstance(t, v2.RandomResizedCrop)][0].scale) == (0.08, 1.0)
    with pytest.raises((DataConfigError, InstantiationException), match=r"train_crop_scale=\[0.5, 0.1\] must satisfy"):
        _folder_dm(compose_train, folder_root, "data.train_crop_scale=[0.5,0.1]")


def test_bit_finetune_pipeline_resizes_the_whole_image_square_then_crops():
    tf = build_transform("finetune", 64, crop_pct=0.875)
    resize = [t for t in tf.transforms if isinstance(t, v2.Resize)][0]
    assert list(resize.size) == [73, 73]  # the whole image to a square above the resolution (BiT), not the short side
    ops = {type(t) for t in tf.transforms}
    assert {v2.RandomCrop, v2.RandomHorizontalFlip} <= ops and v2.RandomResizedCrop not in ops
    torch.manual_seed(0)
    x = _pixels(tf(bordered((600, 200), 40)))  # 3:1 image: a short-side resize would drop two thirds of it
    assert x.shape == (64, 64, 3) and _is(x[32, 32], BLUE)
    assert _is(x[:, :2].reshape(-1, 3).mean(0), RED) or _is(x[:, -2:].reshape(-1, 3).mean(0), RED)


@pytest.mark.parametrize("name", ["finetune_imagenet", "finetune_cifar10", "finetune_cifar100", "finetune_pets",
                                  "finetune_flowers102"])
def test_finetune_recipes_train_as_vit_jax(compose_train, name):
    """vit_jax input_pipeline.py for fine-tuning: inception crop (area 0.05-1, ratio 3/4-4/3) to 384 + flip,
    batches with drop_remainder=True; eval resizes the whole image to 384 x 384 (issue 22)."""
    cfg = compose_train(f"experiment=paper/{name}", "model.pretrained=/nowhere/ViT-B_16.npz")
    ft = paper.FINETUNE
    assert cfg.data.train_pipeline == "paper_finetune" and cfg.data.eval_pipeline == "eval"
    assert list(cfg.data.train_crop_scale) == ft["crop_scale"] == [0.05, 1.0]
    assert cfg.data.drop_last is ft["drop_remainder"] is True
    assert cfg.data.eval_resize == ft["eval_resize"] and cfg.data.img_size == ft["img_size"] == 384
    train = build_transform(cfg.data.train_pipeline, 384, scale=cfg.data.train_crop_scale)
    crop = [t for t in train.transforms if isinstance(t, v2.RandomResizedCrop)][0]
    assert (tuple(crop.size), crop.scale, crop.ratio) == ((384, 384), (0.05, 1.0), pytest.approx((3 / 4, 4 / 3)))
    assert v2.RandomHorizontalFlip in {type(t) for t in train.transforms}
    evaluate = build_transform(cfg.data.eval_pipeline, 384, eval_resize=cfg.data.eval_resize)
    assert v2.CenterCrop not in {type(t) for t in evaluate.transforms}


def test_finetune_recipe_datamodule_drops_the_last_partial_batch(compose_train):
    from hydra.utils import instantiate

    cfg = compose_train("experiment=paper/finetune_cifar10", "data=digits", "model.pretrained=x.npz",
                        "data.train_pipeline=paper_finetune", "data.img_size=16", "data.global_batch_size=null",
                        "data.batch_size=100", "data.val_fraction=0.02")
    dm = instantiate(cfg.data)
    dm.setup()
    n = len(dm.train_set)
    assert n % 100 and len(dm.train_dataloader()) == n // 100  # a full batch every step


def test_fewshot_pipeline_is_big_visions_resize_256_central_crop_224():
    tf = build_transform("fewshot", 224)
    ops = [t for t in tf.transforms if isinstance(t, (v2.Resize, v2.CenterCrop))]
    assert [type(t) for t in ops] == [v2.Resize, v2.CenterCrop]
    assert list(ops[0].size) == [256, 256] and list(ops[1].size) == [224, 224]
    small = [t for t in build_transform("fewshot", 32).transforms if isinstance(t, v2.Resize)][0]
    assert list(small.size) == [37, 37]  # scaled: 32 * 256 / 224


def test_vtab_kitti_shaped_images_keep_both_ends(tmp_path, compose_train):
    """VTAB-1k's structured tasks count/measure objects anywhere in the frame: no crop may cut 1242x375 images."""
    d = fx.write_vtab_task(tmp_path / "vtab", "kitti", 4, n_train=4, n_val=2, n_test=2, ext=".png")
    for p in d.rglob("*.png"):
        two_ends((1242, 375), 60).save(p)  # a KITTI frame: ~5% of the width at each end
    cfg = compose_train("data=vtab", f"data.root={tmp_path / 'vtab'}", "data.task=kitti", "data.img_size=64",
                        "data.num_workers=0", "model.img_size=64")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    for x in (dm.train_set[0][0], dm.val_set[0][0], dm.test_set[0][0]):
        px = _pixels(x)
        assert px.shape == (64, 64, 3)
        assert _is(px[:, 0], RED) and _is(px[:, 63], GREEN)  # both ends, top to bottom
        assert _is(px[32, 32], GREY)
