"""Masked patch prediction (paper §4.6): corruption statistics, colour targets, training, and fine-tuning after it."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab.modules.mpp import (
    KEEP,
    MASK,
    RANDOM,
    MaskedPatchPredictionModule,
    corruption_plan,
    mean_colour_targets,
)

MODEL = {"family": "vit", "variant": "micro", "patch_size": 8, "img_size": 32, "num_classes": 10, "name": "vit_micro"}
OPTIM = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0, "warmup": 0, "decay": "constant"}


def test_corruption_statistics_50_80_10_10():
    g = torch.Generator().manual_seed(0)
    corrupted, action = corruption_plan(4000, 16, generator=g)
    assert torch.all(corrupted.sum(1) == 8)  # exactly half of every image's patches
    c = action[corrupted]
    frac = {name: (c == a).float().mean().item() for name, a in (("mask", MASK), ("random", RANDOM), ("keep", KEEP))}
    assert frac["mask"] == pytest.approx(0.8, abs=0.01)
    assert frac["random"] == pytest.approx(0.1, abs=0.01) and frac["keep"] == pytest.approx(0.1, abs=0.01)
    assert torch.all(action[~corrupted] == KEEP)
    # every position is equally likely to be corrupted
    per_pos = corrupted.float().mean(0)
    assert torch.all((per_pos - 0.5).abs() < 0.04)


def test_corrupt_replaces_with_mask_token_or_another_patch_of_the_same_image():
    m = MaskedPatchPredictionModule(MODEL, OPTIM)
    tokens = torch.randn(64, 16, 128)
    out, corrupted = m.corrupt(tokens, torch.Generator().manual_seed(1))
    is_mask = (out == m.mask_token.detach()).all(-1)
    same = (out == tokens).all(-1)
    assert torch.all(~corrupted <= same)  # uncorrupted patches untouched
    assert torch.all(is_mask <= corrupted)
    other = corrupted & ~is_mask & ~same
    assert other.any()
    for b, n in other.nonzero()[:50].tolist():  # a random patch is another patch of the same image
        matches = (tokens[b] == out[b, n]).all(-1)
        assert matches.any() and not matches[n]


def test_mean_colour_targets_are_3_bit_rgb_classes():
    img = -torch.ones(2, 3, 16, 16)  # black everywhere (paper normalisation: [-1, 1])
    img[0, :, :8, :8] = 1.0  # white patch -> 511
    img[0, 0, :8, 8:] = 1.0  # red patch -> 7 * 64 = 448
    img[1, 2] = 0.0  # mid blue everywhere -> level 4
    t = mean_colour_targets(img, 8)
    assert t.shape == (2, 4)
    assert t[0].tolist() == [511, 448, 0, 0] and t[1].tolist() == [4, 4, 4, 4]
    assert t.max() < 512 and t.min() >= 0


def test_mpp_learns_and_refuses_bad_settings():
    torch.manual_seed(0)
    m = MaskedPatchPredictionModule(MODEL, OPTIM)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    first = m._step((x, None), g())[0].item()
    for _ in range(20):
        loss = m._step((x, None), g())[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0  # it fits the colour targets of a fixed batch
    with pytest.raises(ValueError, match="needs a ViT"):
        MaskedPatchPredictionModule({**MODEL, "family": "bit"}, OPTIM)
    with pytest.raises(ValueError, match="mask_frac"):
        MaskedPatchPredictionModule(MODEL, OPTIM, mask_frac=0.95, random_frac=0.1)
    with pytest.raises(TypeError, match="loss"):  # a classification key: conf/module/mpp.yaml has none
        MaskedPatchPredictionModule(MODEL, OPTIM, loss="sigmoid")


@pytest.mark.slow  # end to end through the CLI; kept out of the default suite's 20-minute budget (make test-slow)
def test_mpp_demo_runs_end_to_end(cli, tmp_path):
    """experiment=mpp_demo, shrunk: MPP pretraining -> fine-tune at 48 px (from its checkpoint) vs scratch."""
    r = cli("vitlab.train", "experiment=mpp_demo", "demo.pretrain_size=60", "demo.finetune_size=50", "demo.pretrain_epochs=1",
            "demo.finetune_epochs=1", "demo.fewshot_shots=[1]", "demo.fewshot_max_eval=50", "demo.fewshot_every_n_epochs=1",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
            "hydra.sweep.dir=sweep", timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "pretraining (masked patch prediction, self-supervised) on shapes" in r.stdout
    assert "fine-tuned on digits from the pretrained checkpoint: test acc" in r.stdout
    assert "mpp_head.weight" in out and "mask_token" in out and "1+4x4 -> 1+6x6" in out  # dropped + resized
    s = json.loads((tmp_path / "sweep" / "transfer_summary.json").read_text())
    assert s["pretrain_stage"] == "mpp_pretrain" and 0 <= s["finetune_test_acc"] <= 1 and "gain" in s
    pre = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert 0 <= pre["test/acc"] <= 1 and "fewshot/digits_1shot" in pre


def test_mpp_checkpoint_is_a_backbone_for_fewshot_and_finetuning(tmp_path):
    import lightning as L
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from vitlab.models import build_model
    from vitlab.models.pretrained import load_pretrained
    from vitlab.runs.probe import load_backbone

    m = MaskedPatchPredictionModule(MODEL, OPTIM)
    dl = DataLoader(TensorDataset(torch.rand(4, 3, 32, 32) * 2 - 1, torch.arange(4)), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, train_dataloaders=dl)
    trainer.save_checkpoint(tmp_path / "mpp.ckpt")
    net, cfg = load_backbone(OmegaConf.create({"ckpt_path": str(tmp_path / "mpp.ckpt")}))
    assert cfg["num_classes"] == 0 and torch.equal(net.blocks[0].attn.qkv.weight, m.net.blocks[0].attn.qkv.weight)
    report = load_pretrained(build_model("vit", "micro", 10, img_size=48, patch_size=8), tmp_path / "mpp.ckpt")
    assert {"mask_token", "mpp_head.weight", "mpp_head.bias"} <= set(report.dropped) and report.resized
