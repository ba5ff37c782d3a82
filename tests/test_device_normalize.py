"""data.normalize_on_device (issue 15, "faster per core"): the train loader yields uint8 images and the last two
pipeline steps (ToDtype + Normalize) run on the batch after it reaches the device, as timm's prefetcher and FFCV
do. The values a model sees must not change: bit for bit on CPU, so a run trains exactly as without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.sampler import seeded_rng
from vitlab.data.transforms import PIPELINES, FlipNormalize, build_transform, normalize_batch


def _photo(h: int = 75, w: int = 100) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("normalization", ["paper", "imagenet"])
def test_uint8_pipeline_then_normalize_batch_equals_the_float_pipeline(pipeline, normalization):
    img = _photo()
    full = build_transform(pipeline, 32, normalization)
    raw = build_transform(pipeline, 32, normalization, normalize=False)
    batch_f, batch_u = [], []
    for seed in range(3):
        with seeded_rng(seed):
            batch_f.append(full(img))
        with seeded_rng(seed):
            batch_u.append(raw(img))
    u = torch.stack(batch_u)
    assert u.dtype == torch.uint8 and type(u) is torch.Tensor  # a plain tensor: 4x fewer bytes to collate and copy
    assert torch.equal(normalize_batch(u, normalization), torch.stack(batch_f))


def test_drafted_crop_flip_only_then_normalize_batch_equals_the_fused_normalisation():
    img = torch.from_numpy(np.asarray(_photo())).permute(2, 0, 1).contiguous()
    fused, flip_only = FlipNormalize((0.5,) * 3, (0.5,) * 3), FlipNormalize(None, None)
    for seed in range(4):
        with seeded_rng(seed):
            a = fused(img)
        with seeded_rng(seed):
            b = flip_only(img)
        assert b.dtype == torch.uint8
        torch.testing.assert_close(normalize_batch(b[None])[0], a, rtol=0, atol=1e-6)  # fused multiply-add: ~1e-7


def test_a_run_with_normalize_on_device_trains_exactly_like_one_without(compose_train, tmp_path):
    """The datamodule's on_after_batch_transfer hook normalises each training batch; the model sees the same floats,
    so on CPU the two runs end with the same metrics. Without the hook the uint8 batch would not reach a conv at all."""
    from vitlab.train import train

    common = ("model=vit_micro", "data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=6",
              "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "data.batch_size=32")
    cfg_u = compose_train(*common, "data.normalize_on_device=true", out=tmp_path / "uint8")
    from hydra.utils import instantiate

    dm = instantiate(cfg_u.data)
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].dtype == torch.uint8  # the option took effect
    a = train(cfg_u)
    b = train(compose_train(*common, "data.normalize_on_device=false", out=tmp_path / "float"))
    keys = [k for k in ("train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc") if k in a]
    assert len(keys) >= 4, sorted(a)
    for key in keys:
        assert a[key] == b[key], (key, a[key], b[key])
