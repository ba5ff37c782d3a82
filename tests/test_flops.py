"""Compute accounting: published GMACs, training FLOPs, and train/exaflops in a real run."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab import metrics as M
from vitlab.callbacks.compute import ComputeTracker
from vitlab.inspection.flops import (
    count_flops,
    flops_stats,
    model_config_flops,
)
from vitlab.models import build_model


@pytest.mark.parametrize(
    ("cfg", "published_gmacs"),
    [
        (dict(family="vit", variant="B", patch_size=16), 17.58),  # paper / timm: ViT-B/16 @ 224
        (dict(family="bit", variant="r50x1"), 4.23),  # BiT-R50x1 @ 224
        (dict(family="vit", variant="H", patch_size=14), 167.4),  # timm vit_huge_patch14_224
    ],
)
def test_forward_gmacs_match_published(cfg, published_gmacs):
    fc = model_config_flops({**cfg, "num_classes": 1000, "img_size": 224})
    assert fc.gmacs == pytest.approx(published_gmacs, rel=0.02)
    # backward costs about twice the forward: training ~ 3x forward
    assert 2.8 < fc.train_flops / fc.forward_flops < 3.2


def test_flops_follow_resolution_and_patch():
    base = dict(family="vit", variant="Ti", num_classes=10)
    b16_224 = model_config_flops({**base, "patch_size": 16, "img_size": 224})
    b16_384 = model_config_flops({**base, "patch_size": 16, "img_size": 384})
    b32_224 = model_config_flops({**base, "patch_size": 32, "img_size": 224})
    # 576 vs 196 tokens: more than 2.9x the cost (attention grows quadratically); /32 patches cost ~4x less
    assert b16_384.forward_flops / b16_224.forward_flops > 2.9
    assert 3.5 < b16_224.forward_flops / b32_224.forward_flops < 4.5


def test_live_model_counts_like_config_and_stays_intact():
    model = build_model("vit", "micro", num_classes=10, img_size=32, patch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    live = count_flops(model, 32)
    assert live.forward_flops == model_config_flops(
        dict(family="vit", variant="micro", patch_size=8, num_classes=10, img_size=32)).forward_flops
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # counted on a meta copy
    assert next(model.parameters()).device.type == "cpu"


def test_flops_stats_keys_and_failure_is_a_warning(caplog):
    stats = flops_stats(dict(family="bit", variant="micro", num_classes=10, img_size=32, name="bit_micro"))
    assert set(stats) == {"model/gmacs", "model/gflops", "model/train_gflops"}
    assert stats["model/gflops"] == pytest.approx(2 * stats["model/gmacs"], rel=1e-3)
    assert flops_stats(dict(family="vit", variant="nope", patch_size=8, num_classes=10, name="bad")) == {}
    assert "FLOP counting failed for model bad" in caplog.text


def test_compute_tracker_state_roundtrip():
    ct = ComputeTracker(train_flops_per_image=3e9)
    ct.images_seen = 1000
    other = ComputeTracker()
    other.load_state_dict(ct.state_dict())
    assert (other.images_seen, other.train_flops_per_image) == (1000, 3e9)


def test_train_run_logs_exaflops_and_gflops(compose_train, tmp_path):
    """A real (tiny) run: every logger gets model/gflops; train/exaflops = images seen x train FLOPs/image."""
    from vitlab.train import train

    cfg = compose_train("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                        "trainer.limit_test_batches=1", "logger=csv", "data.batch_size=16")
    res = train(cfg)
    out = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert out["model/gmacs"] == res["model/gmacs"] > 0
    assert out[M.TRAIN_IMAGES_SEEN] == 3 * 16
    expected = 48 * out["model/train_gflops"] * 1e9 / 1e18
    assert out[M.TRAIN_EXAFLOPS] == pytest.approx(expected, rel=1e-3)
    hparams = (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert "model/gflops" in hparams and "model/params" in hparams


# ---------------------------------------------------------------------------------------------------------
# Table 6: exaFLOPs of the JFT-300M pretraining runs = train FLOPs per image x images seen / 1e18
# ---------------------------------------------------------------------------------------------------------

#: paper §4.1: JFT-300M has 303M high-resolution images (one epoch)
JFT_IMAGES = 303e6
_V, _H = dict(family="vit"), dict(family="hybrid", patch_size=1)
#: (model config, epochs, Table 6 exaFLOPs)
TABLE6_VIT_HYBRID = {
    "ViT-B/32": ({**_V, "variant": "B", "patch_size": 32}, 7, 55),
    "ViT-B/16": ({**_V, "variant": "B", "patch_size": 16}, 7, 224),
    "ViT-L/32": ({**_V, "variant": "L", "patch_size": 32}, 7, 196),
    "ViT-L/16 (7)": ({**_V, "variant": "L", "patch_size": 16}, 7, 783),
    "ViT-L/16 (14)": ({**_V, "variant": "L", "patch_size": 16}, 14, 1567),
    "ViT-H/14": ({**_V, "variant": "H", "patch_size": 14}, 14, 4262),
    "R50x1+ViT-B/32": ({**_H, "variant": "B", "hybrid": "r50_s32"}, 7, 106),
    "R50x1+ViT-B/16": ({**_H, "variant": "B", "hybrid": "r50"}, 7, 274),
    "R50x1+ViT-L/32": ({**_H, "variant": "L", "hybrid": "r50_s32"}, 7, 246),
    "R50x1+ViT-L/16 (14)": ({**_H, "variant": "L", "hybrid": "r50"}, 14, 1668),
}
TABLE6_RESNET = {
    "ResNet50x1": ("r50x1", 7, 50), "ResNet50x2": ("r50x2", 7, 199), "ResNet101x1": ("r101x1", 7, 96),
    "ResNet152x1": ("r152x1", 7, 141), "ResNet152x2 (7)": ("r152x2", 7, 563), "ResNet152x2 (14)": ("r152x2", 14, 1126),
    "ResNet200x3": ("r200x3", 14, 3306),
}
QUICK = {"ViT-B/32", "R50x1+ViT-B/16", "ResNet50x1"}  # the rest: make test-slow (ViT-H and R200x3 count for seconds)


def _exaflops(cfg: dict, epochs: int) -> float:
    fc = model_config_flops({**cfg, "num_classes": 1000, "img_size": 224})
    return fc.train_flops * JFT_IMAGES * epochs / 1e18


def _maybe_slow(rows: dict) -> list:
    return [pytest.param(k, marks=[] if k in QUICK else [pytest.mark.slow]) for k in rows]


@pytest.mark.parametrize("row", _maybe_slow(TABLE6_VIT_HYBRID))
def test_table6_exaflops_vit_and_hybrid_rows_within_2_percent(row):
    cfg, epochs, paper = TABLE6_VIT_HYBRID[row]
    assert _exaflops(cfg, epochs) == pytest.approx(paper, rel=0.02)


def test_table6_hybrid_l16_rows_disagree_with_each_other():
    """Table 6 gives R50x1+ViT-L/16 859 exaFLOPs at 7 epochs and 1668 at 14: not 2x (1718). One per-image count
    cannot be within 2% of both; vitlab's is within 0.2% of the 14-epoch row and 2.7% under the 7-epoch one."""
    cfg = {**_H, "variant": "L", "hybrid": "r50"}
    assert _exaflops(cfg, 14) == pytest.approx(1668, rel=0.02)
    assert _exaflops(cfg, 7) == pytest.approx(859, rel=0.03)
    assert 1668 / 859 < 1.95


@pytest.mark.parametrize("row", _maybe_slow(TABLE6_RESNET))
def test_table6_exaflops_resnet_rows_within_2_percent(row):
    """They were 3-4% high while the padding taps of the 3x3/7x7 convolutions were counted; XLA (the paper's TPU
    cost analysis) skips them. Every row now lands within 0.7%."""
    variant, epochs, paper = TABLE6_RESNET[row]
    assert _exaflops(dict(family="bit", variant=variant), epochs) == pytest.approx(paper, rel=0.02)


@pytest.mark.parametrize(("n", "k", "stride", "pad", "dilation"),
                         [(56, 3, 1, 1, 1), (56, 3, 2, 1, 1), (224, 7, 2, 3, 1), (7, 3, 1, 1, 1), (9, 3, 1, 2, 2),
                          (224, 16, 16, 0, 1), (5, 1, 1, 0, 1)])
def test_training_convolutions_count_only_in_bound_taps_like_xla(n, k, stride, pad, dilation):
    """Reference: convolving an all-ones input with an all-ones kernel writes, at each output position, how many
    kernel taps land inside the input; their sum is what XLA's HandleConvolution counts per channel pair."""
    from vitlab.inspection.flops import TRAIN_FORMULAS, aten

    ones = torch.ones(1, 1, n, n)
    ref = torch.nn.functional.conv2d(ones, torch.ones(1, 1, k, k), stride=stride, padding=pad, dilation=dilation)
    cin, cout, batch = 3, 5, 2
    x, w, out = (batch, cin, n, n), (cout, cin, k, k), (batch, cout, *ref.shape[-2:])
    conv = dict(stride=[stride] * 2, padding=[pad] * 2, dilation=[dilation] * 2)
    fwd = TRAIN_FORMULAS[aten.convolution](x, w, None, conv["stride"], conv["padding"], conv["dilation"], False,
                                           [0, 0], 1, out_shape=out)
    assert fwd == 2 * batch * cin * cout * int(ref.sum())
    bwd = TRAIN_FORMULAS[aten.convolution_backward](out, x, w, None, conv["stride"], conv["padding"],
                                                    conv["dilation"], False, [0, 0], 1, [True, True, False])
    assert bwd == 2 * fwd
    if pad == 0:  # no padding: the same count as torch's (and fvcore's) full-window count
        from torch.utils.flop_counter import conv_flop_count
        assert fwd == conv_flop_count(x, w, out)


def test_padding_taps_are_skipped_in_training_flops_only():
    """model/gmacs keep the published convention (R50x1 4.23 GMACs, padding counted); the training count that
    feeds train/exaflops skips padding, so a ResNet trains for less than 3x its forward, a ViT for ~3x."""
    r50 = model_config_flops(dict(family="bit", variant="r50x1", num_classes=1000, img_size=224))
    vit = model_config_flops(dict(family="vit", variant="B", patch_size=32, num_classes=1000, img_size=224))
    assert r50.train_flops / r50.forward_flops < 2.95 < vit.train_flops / vit.forward_flops


def test_weight_standardisation_is_a_per_step_cost_not_per_image():
    """BiT standardises its conv weights once per step: the per-image training FLOPs are the marginal cost of an
    image in a batch, so a batch of n costs n x train_flops + the per-step weight work."""
    from vitlab.inspection.flops import _to_meta, _train_step_flops

    model = _to_meta(build_model("bit", "micro", num_classes=10)).train()
    x = torch.empty(1, 3, 32, 32, device="meta")
    one, three = _train_step_flops(model, x), _train_step_flops(model, x.expand(3, -1, -1, -1))
    per_image = count_flops(model, 32).train_flops
    assert per_image == (three - one) // 2
    assert one - per_image > 0  # the weight standardisation (forward + backward) that batch-1 counting charged per image
