"""Inspection of a trained ViT (paper §4.5): real attention, mean attention distance, rollout, the analyze task."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from conftest import compose_cfg
from vitlab.errors import ConfigError
from vitlab.inspection import inspect_vit as V
from vitlab.models import build_model


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return build_model("vit", "micro", num_classes=10, img_size=32, patch_size=8).eval()


def test_recorded_attention_is_softmax_qk(vit):
    """The hook reads exactly softmax(QK^T/sqrt(d)) of every layer, and leaves the model as it was."""
    x = torch.randn(2, 3, 32, 32)
    fused_before = [b.attn.fused_attn for b in vit.blocks]
    with torch.no_grad():
        ref_out = vit(x)
    attn = V.attention_maps(vit, x)
    assert attn.shape == (6, 2, 4, 17, 17)
    assert [b.attn.fused_attn for b in vit.blocks] == fused_before
    with torch.no_grad():
        assert torch.allclose(vit(x), ref_out, atol=1e-5)
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for i, blk in enumerate(vit.blocks):
            a = blk.attn
            qkv = a.qkv(blk.norm1(h)).reshape(2, 17, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
            direct = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(a.head_dim), dim=-1)
            torch.testing.assert_close(attn[i], direct, atol=1e-5, rtol=1e-4)
            h = blk(h)


def test_mean_attention_distance_identity_and_uniform():
    gh, gw, prefix, px = 3, 4, 1, 8.0
    n = gh * gw + prefix
    ident = torch.eye(n).expand(2, 1, 3, n, n)  # [L, B, H, N, N]
    assert torch.allclose(V.mean_attention_distance(ident, (gh, gw), px, prefix), torch.zeros(2, 3))
    uniform = torch.full((1, 1, 2, n, n), 1.0 / n)
    cells = list(itertools.product(range(gh), range(gw)))
    pairwise = sum(math.dist(a, b) for a in cells for b in cells) / len(cells) ** 2
    got = V.mean_attention_distance(uniform, (gh, gw), px, prefix)
    assert torch.allclose(got, torch.full((1, 2), pairwise * px), atol=1e-4)
    with pytest.raises(ValueError, match="expected 12 patches"):
        V.mean_attention_distance(uniform[..., :5, :5], (gh, gw), px, prefix)


def test_rollout_follows_the_residual_formula():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 1, 3, 5, 5), -1)
    r = V.attention_rollout(a)
    eye = torch.eye(5)
    layers = [0.5 * a[i, 0].mean(0) + 0.5 * eye for i in range(2)]
    layers = [m / m.sum(-1, keepdim=True) for m in layers]
    torch.testing.assert_close(r[0], layers[1] @ layers[0])
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 5))
    maps = V.rollout_maps(a, (2, 2), 1)
    assert maps.shape == (1, 2, 2) and float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)


def test_position_similarity_and_filter_pcs(vit):
    gh, gw = V.grid_size(vit)
    # a position embedding that *is* a 2-D grid code: same-row patches must look alike
    with torch.no_grad():
        rows = torch.nn.functional.one_hot(torch.arange(gh).repeat_interleave(gw), 16).float()
        cols = torch.nn.functional.one_hot(torch.arange(gw).repeat(gh), 16).float()
        vit.pos_embed[0, 1:] = torch.cat([rows, cols, torch.zeros(gh * gw, vit.pos_embed.shape[-1] - 32)], -1)
    sim = V.position_similarity(vit)
    assert sim.shape == (gh, gw, gh, gw)
    assert sim[1, 2, 1, 2] == pytest.approx(1.0) and sim[1, 2, 1, 0] == pytest.approx(0.5)
    assert sim[1, 2, 0, 0] == pytest.approx(0.0)
    comps, var = V.patch_embedding_pcs(vit, 28)
    assert comps.shape == (28, 3, 8, 8) and float(comps.min()) >= 0 and float(comps.max()) <= 1
    assert torch.all(var[:-1] >= var[1:]) and float(var.sum()) <= 1 + 1e-6


def test_bit_is_refused_by_name():
    bit = build_model("bit", "micro", num_classes=10, img_size=32)
    with pytest.raises(V.NotAViTError, match="not a Vision Transformer"):
        V.attention_maps(bit, torch.randn(1, 3, 32, 32))


def test_analyze_task_writes_the_four_figures(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from vitlab.analyze import analyze
    from vitlab.train import train

    try:
        train(compose_cfg("train", [
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "logger=none", "data.batch_size=16", "test=false",
        ], tmp_path / "run"))
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
        res = analyze(compose_cfg("analyze", [f"ckpt_path={ckpt}", "num_images=8", "rollout_images=4"], tmp_path / "an"))
        bad = tmp_path / "bit.ckpt"
        torch.save({"vitlab_config": {"model": {"family": "bit"}}}, bad)
        with pytest.raises(ConfigError, match="holds a 'bit' model"):
            analyze(compose_cfg("analyze", [f"ckpt_path={bad}"], tmp_path / "an2"))
    finally:
        GlobalHydra.instance().clear()
    for name in ("filters", "position_similarity", "attention_distance", "rollout"):
        assert (tmp_path / "an" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert len(saved["attention/mean_distance_px"]) == 6 and len(saved["attention/mean_distance_px"][0]) == 4
    assert res["grid"] == [4, 4]
