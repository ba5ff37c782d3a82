"""Compute accounting: published GMACs, training FLOPs, and train/exaflops in a real run."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab import metrics as M
from vitlab import paper
from vitlab.callbacks.compute import ComputeTracker
from vitlab.inspection.flops import (
    count_flops,
    flops_stats,
    model_config_flops,
    table6_rows,
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

#: Table 6's rows whose count is checked in the default suite; the rest: make test-slow (ViT-H and R200x3 count
#: for seconds)
QUICK = {("vit_b32", 7), ("r50_vit_b16", 7), ("bit_r50x1", 7)}
#: R50+ViT-L/16 at 7 epochs: Table 6's 7- and 14-epoch numbers for it (859, 1668) are not 1:2, so one per-image
#: count cannot be within 2% of both (test_table6_hybrid_l16_rows_disagree_with_each_other)
INCONSISTENT = {("r50_vit_l16", 7)}


def _exaflops(model: str, epochs: int) -> float:
    (row,) = table6_rows([(model, epochs)])  # the conf/model/<model>.yaml a run builds; what `... flops table6` prints
    return row["exaflops"]


@pytest.mark.parametrize("key", [pytest.param(k, id=f"{k[0]}-{k[1]}ep", marks=[] if k in QUICK else [pytest.mark.slow])
                                 for k in paper.TABLE6 if k not in INCONSISTENT])
def test_table6_exaflops_within_2_percent(key):
    """Every model of Table 6 (ViT, BiT ResNet, hybrid) as its config builds it: training FLOPs per image x 303M
    images x epochs. The ResNet rows were 3-4% high while the padding taps of the 3x3/7x7 convolutions were
    counted; XLA (the paper's TPU cost analysis) skips them, and every row now lands within 1.3%."""
    assert _exaflops(*key) == pytest.approx(paper.TABLE6[key]["exaflops"], rel=0.02)


def test_table6_hybrid_l16_rows_disagree_with_each_other():
    """Table 6 gives R50x1+ViT-L/16 859 exaFLOPs at 7 epochs and 1668 at 14: not 2x (1718). One per-image count
    cannot be within 2% of both; vitlab's is within 0.1% of the 14-epoch row and 3.0% under the 7-epoch one."""
    seven, fourteen = paper.TABLE6[("r50_vit_l16", 7)]["exaflops"], paper.TABLE6[("r50_vit_l16", 14)]["exaflops"]
    assert _exaflops("r50_vit_l16", 14) == pytest.approx(fourteen, rel=0.02)
    assert _exaflops("r50_vit_l16", 7) == pytest.approx(seven, rel=0.035)
    assert fourteen / seven < 1.95


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
