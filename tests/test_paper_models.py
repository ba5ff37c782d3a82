"""The model half of issue #13: each paper detail checked against the reference it names.

- dropout sites of App. B.1 (after adding position embeddings; after every dense layer but qkv), train only;
- pre-logits head and head bias init when pretraining, replaced as a whole when fine-tuning (§3.1, §3.2);
- R50+ViT hybrids equal timm's port of the official hybrid (TF "SAME" padding), given the same weights;
- position embeddings resized as vit_jax's ``scipy.ndimage.zoom(order=1)``;
- Table 6's BiT and hybrid sizes, with parameter counts equal to timm's builders of the same networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vitlab.errors import ModelConfigError
from vitlab.models import build_model, count_params
from vitlab.models.checkpoints import resize_pos_embed
from vitlab.models.hybrid import HYBRID_RESNET_LAYERS
from vitlab.models.pretrained import load_pretrained

# ---------------------------------------------------------------------------------------------------
# Row 2: dropout sites
# ---------------------------------------------------------------------------------------------------


def _active_dropouts(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]


def test_vit_b16_dropout_sites_are_the_papers(compose_train):
    """App. B.1: after adding position embeddings, and after every dense layer except qkv: 1 + 3 x 12 = 37."""
    cfg = compose_train("model=vit_b16", "model.pos_drop_rate=0.1", "model.proj_drop_rate=0.1",
                        "model.num_classes=1000", "model.img_size=224")
    with torch.device("meta"):
        m = build_model(**cfg.model)
    sites = _active_dropouts(m)
    expected = ["pos_drop"] + [f"blocks.{i}.{s}" for i in range(12) for s in ("attn.proj_drop", "mlp.drop1", "mlp.drop2")]
    assert sorted(sites) == sorted(expected) and len(sites) == 37
    assert all(m.p == 0.1 for n, m in m.named_modules() if n in sites)
    assert all(blk.attn.attn_drop.p == 0 for blk in m.blocks)  # attention-weight dropout: 0 in every paper model
    assert m.head_drop.p == 0  # timm's head dropout is not a paper site


def test_each_dropout_follows_a_dense_layer_never_qkv():
    """The call order in a real forward: every active dropout comes right after proj / fc1(+GELU) / fc2 / pos add."""
    m = build_model("vit", "micro", 10, img_size=32, patch_size=8, pos_drop_rate=0.1, proj_drop_rate=0.1).train()
    calls: list[str] = []
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Linear, nn.Dropout)) and not (isinstance(mod, nn.Dropout) and mod.p == 0):
            mod.register_forward_hook(lambda _m, _i, _o, name=name: calls.append(name))
    m(torch.randn(2, 3, 32, 32))
    assert calls[0] == "pos_drop"
    for i, c in enumerate(calls):
        if c.endswith(("proj_drop", "drop1", "drop2")):
            before = calls[i - 1]
            assert before.rsplit(".", 1)[1] in ("proj", "fc1", "fc2"), (c, before)
        if c.endswith("qkv"):
            assert calls[i + 1].endswith("attn.proj"), calls[i + 1]  # no dropout between qkv and the out-projection


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    m = build_model("vit", "micro", 10, img_size=32, patch_size=8, pos_drop_rate=0.1, proj_drop_rate=0.1)
    plain = build_model("vit", "micro", 10, img_size=32, patch_size=8)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
        torch.testing.assert_close(m(x), plain.eval()(x))


def test_head_drop_rate_is_the_head_dropout_and_resnets_refuse_vit_sites():
    m = build_model("vit", "micro", 10, img_size=32, patch_size=8, head_drop_rate=0.2)
    assert _active_dropouts(m) == ["head_drop"]
    with pytest.raises(ModelConfigError, match=r"pos_drop_rate=0.1.*family=bit"):
        build_model("bit", "micro", 10, pos_drop_rate=0.1)
    with pytest.raises(ModelConfigError, match=r"proj_drop_rate=1.5 must be in \[0, 1\)"):
        build_model("vit", "micro", 10, img_size=32, patch_size=8, proj_drop_rate=1.5)


# ---------------------------------------------------------------------------------------------------
# Row 3: pre-logits head and head bias init; replaced as a whole when fine-tuning
# ---------------------------------------------------------------------------------------------------


def test_pretraining_head_keys_reach_the_module_and_fine_tuning_replaces_the_whole_head(compose_train, tmp_path):
    from vitlab.runs.assemble import build_module

    cfg = compose_train("model=vit_micro", "model.representation_size=128", "module.head_bias_init=-10",
                        "module.loss=sigmoid")
    net = build_module(cfg).net
    assert isinstance(net.head.pre_logits[1], nn.Tanh) and net.head.pre_logits[0].out_features == 128 == net.embed_dim
    assert torch.all(net.head.head.bias == -10) and not torch.all(net.head.pre_logits[0].bias == -10)
    path = tmp_path / "pretrained.pth"
    torch.save({k: v for k, v in net.state_dict().items()}, path)

    ft = build_model("vit", "micro", 5, img_size=32, patch_size=8)
    report = load_pretrained(ft, path)
    assert sorted(report.dropped) == ["head.head.bias", "head.head.weight", "head.pre_logits.0.bias",
                                      "head.pre_logits.0.weight"]
    assert isinstance(ft.head, nn.Linear) and report.new == ["head.bias", "head.weight"]
    assert torch.count_nonzero(ft.head.weight) == 0 and torch.count_nonzero(ft.head.bias) == 0  # not -10
    torch.testing.assert_close(ft.blocks[0].mlp.fc1.weight, net.blocks[0].mlp.fc1.weight)


# ---------------------------------------------------------------------------------------------------
# Row 4: hybrids = timm's port of the official R50+ViT (TF SAME padding)
# ---------------------------------------------------------------------------------------------------


def _fill(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0  # norm scales near 1
            p.copy_(scale + 0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_hybrid_backbone_uses_same_padding_and_vit_jax_depths():
    from timm.layers import StdConv2d, StdConv2dSame

    m = build_model("hybrid", "micro", 10, img_size=32, patch_size=1, hybrid="micro")
    convs = [x for x in m.patch_embed.backbone.modules() if isinstance(x, nn.Conv2d)]
    assert convs and all(isinstance(c, StdConv2dSame) for c in convs)
    assert not any(type(c) is StdConv2d for c in convs)
    # vit_jax configs/models.py: R50+ViT-B_16 (3, 4, 9); R26+ViT-B_32 (2, 2, 2, 2); R50+ViT-L_32 (3, 4, 6, 3)
    assert HYBRID_RESNET_LAYERS["r50"] == (3, 4, 9)
    assert HYBRID_RESNET_LAYERS["r26"] == (2, 2, 2, 2)
    assert HYBRID_RESNET_LAYERS["r50_s32"] == (3, 4, 6, 3)


def test_hybrid_r50_backbone_equals_timms_port():
    """The part the fix changes, quickly: vitlab's R50 (3,4,9) stem + stages = timm's ``_resnetv2`` backbone."""
    from timm.models.vision_transformer_hybrid import _resnetv2

    with torch.device("meta"):
        ref = _resnetv2((3, 4, 9))
        ours = build_model("hybrid", "B", 10, img_size=64, patch_size=1, hybrid="r50").patch_embed.backbone
    ref = _fill(ref.to_empty(device="cpu"))
    ours = ours.to_empty(device="cpu").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.shape == b.shape == (2, 1024, 4, 4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_r50_vit_b16_logits_equal_timm_vit_base_r50_s16_384(compose_train):
    """The whole config: model=r50_vit_b16 given timm's vit_base_r50_s16_384 weights gives its logits (~15 s)."""
    import timm

    cfg = compose_train("model=r50_vit_b16", "model.num_classes=10", "model.img_size=64")
    with torch.device("meta"):
        ref = timm.create_model("vit_base_r50_s16_384", pretrained=False, img_size=64, num_classes=10)
        ours = build_model(**cfg.model)
    ref = _fill(ref.to_empty(device="cpu"))
    ours = ours.to_empty(device="cpu").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Row 5: position-embedding resize = scipy.ndimage.zoom(order=1) (vit_jax checkpoint.py)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), [(14, 24), (4, 6), (24, 14), (7, 3)])
def test_resize_pos_embed_equals_scipy_zoom_order1(old, new):
    from scipy import ndimage

    pe = torch.randn(1, 1 + old * old, 16, generator=torch.Generator().manual_seed(old))
    out = resize_pos_embed(pe, (new, new), 1)
    grid = pe[0, 1:].reshape(old, old, 16).double().numpy()
    ref = ndimage.zoom(grid, (new / old, new / old, 1), order=1)  # vit_jax checkpoint.py, verbatim
    np.testing.assert_allclose(out[0, 1:].reshape(new, new, 16).double().numpy(), ref, atol=1e-5, rtol=0)
    assert torch.equal(out[:, :1], pe[:, :1])  # the [class] token's embedding is untouched
    assert torch.equal(resize_pos_embed(pe, (old, old), 1), pe)  # identity at the same size
    timm_way = resize_pos_embed(pe, (new, new), 1, method="timm")  # the option: a different convention
    assert (timm_way - out).abs().max() > 0.1


def test_fine_tuning_at_higher_resolution_resizes_like_vit_jax(tmp_path):
    from scipy import ndimage

    src = _fill(build_model("vit", "micro", 10, img_size=32, patch_size=8))  # 4x4 grid
    path = tmp_path / "src.pth"
    torch.save(src.state_dict(), path)
    grid = src.pos_embed[0, 1:].detach().reshape(4, 4, -1).double().numpy()
    ref = ndimage.zoom(grid, (6 / 4, 6 / 4, 1), order=1)
    dst = build_model("vit", "micro", 10, img_size=48, patch_size=8)  # 6x6 grid
    report = load_pretrained(dst, path)
    assert "corners aligned (vit_jax)" in report.resized[0]
    np.testing.assert_allclose(dst.pos_embed[0, 1:].detach().reshape(6, 6, -1).double().numpy(), ref, atol=1e-5)
    timm_dst = build_model("vit", "micro", 10, img_size=48, patch_size=8)
    load_pretrained(timm_dst, path, pos_embed_resize="timm")
    assert not torch.allclose(timm_dst.pos_embed, dst.pos_embed, atol=1e-3)
    with pytest.raises(ValueError, match="pos_embed_resize='nearest'"):
        load_pretrained(build_model("vit", "micro", 10, img_size=48, patch_size=8), path, pos_embed_resize="nearest")


# ---------------------------------------------------------------------------------------------------
# Row 14: Table 6's model sizes, parameter counts = timm's builders of the same networks
# ---------------------------------------------------------------------------------------------------


def _timm_reference(name: str) -> nn.Module:
    import timm
    from timm.models.resnetv2 import _create_resnetv2_bit

    bit = {"bit_r50x2": ([3, 4, 6, 3], 2), "bit_r152x1": ([3, 8, 36, 3], 1), "bit_r200x3": ([3, 24, 36, 3], 3)}
    if name in bit:  # timm's BiT recipe (resnetv2_*_bit), at the depth/width timm has no weights for
        layers, wf = bit[name]
        return _create_resnetv2_bit("resnetv2_50x1_bit", pretrained=False, layers=layers, width_factor=wf)
    hybrid = {  # timm's hybrid builders; B/32 and L/16 swap the transformer of the /32 and /16 ports
        "r50_vit_b16": ("vit_base_r50_s16_224", {}),
        "r50_vit_l32": ("vit_large_r50_s32_224", {}),
        "r50_vit_b32": ("vit_large_r50_s32_224", dict(embed_dim=768, depth=12, num_heads=12)),
        "r50_vit_l16": ("vit_base_r50_s16_224", dict(embed_dim=1024, depth=24, num_heads=16)),
    }
    arch, kw = hybrid[name]
    return timm.create_model(arch, pretrained=False, num_classes=1000, img_size=224, **kw)


@pytest.mark.parametrize(("name", "params_m"), [
    ("bit_r50x2", 97.99), ("bit_r152x1", 60.19), ("bit_r200x3", 568.63),
    ("r50_vit_b16", 98.66), ("r50_vit_b32", 110.95), ("r50_vit_l16", 316.48), ("r50_vit_l32", 328.99),
])
def test_table6_models_match_timm(compose_train, name, params_m):
    cfg = compose_train(f"model={name}", "model.num_classes=1000", "model.img_size=224")
    with torch.device("meta"):
        ours, ref = build_model(**cfg.model), _timm_reference(name)
    assert count_params(ours) == count_params(ref)
    assert round(count_params(ours) / 1e6, 2) == pytest.approx(params_m, abs=0.01)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
