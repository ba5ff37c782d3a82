import pytest
import torch

from vitlab.errors import ModelConfigError
from vitlab.models import BIT_SHAPES, VIT_SHAPES, build_model, count_params

# Published counts at 1000 classes, 224 px, no representation layer (timm / the paper).
PUBLISHED_M = {"vit_b16": 86.57, "vit_l16": 304.33, "vit_h14": 632.05, "bit_r50x1": 25.55,
               "vit_b32": 88.22, "vit_l32": 306.54, "vit_ti16": 5.72, "vit_s16": 22.05, "r50_vit_b16": 98.66}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_param_counts_match_published(compose_train, name):
    cfg = compose_train(f"model={name}", "model.num_classes=1000", "model.img_size=224")
    with torch.device("meta"):
        model = build_model(**cfg.model)
    assert round(count_params(model) / 1e6, 2) == pytest.approx(PUBLISHED_M[name], abs=0.01)


def test_paper_shapes_table():
    assert (VIT_SHAPES["B"].depth, VIT_SHAPES["B"].width, VIT_SHAPES["B"].mlp, VIT_SHAPES["B"].heads) == (12, 768, 3072, 12)
    assert (VIT_SHAPES["L"].depth, VIT_SHAPES["L"].width, VIT_SHAPES["L"].mlp, VIT_SHAPES["L"].heads) == (24, 1024, 4096, 16)
    assert (VIT_SHAPES["H"].depth, VIT_SHAPES["H"].width, VIT_SHAPES["H"].mlp, VIT_SHAPES["H"].heads) == (32, 1280, 5120, 16)
    assert BIT_SHAPES["r50x1"].layers == (3, 4, 6, 3)


def test_bit_uses_groupnorm_and_weight_standardisation():
    from timm.layers import GroupNormAct, StdConv2d

    m = build_model("bit", "micro", num_classes=10)
    kinds = {type(x) for x in m.modules()}
    assert GroupNormAct in kinds and StdConv2d in kinds
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


@pytest.mark.parametrize("name", ["vit_micro", "bit_micro", "hybrid_micro"])
def test_micro_models_forward_on_digits_size(compose_train, name):
    cfg = compose_train(f"model={name}")
    model = build_model(**cfg.model)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_overrides_reach_the_model(compose_train):
    cfg = compose_train("model=vit_micro", "model.patch_size=4", "model.classifier=gap", "model.representation_size=32",
                        "model.num_classes=7", "model.head_drop_rate=0.1")
    m = build_model(**cfg.model)
    assert m.patch_embed.patch_size == (4, 4)
    assert m.cls_token is None and m.global_pool == "avg"
    assert m.head.pre_logits[0].out_features == 32
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_patch_that_does_not_divide_the_image_names_both():
    with pytest.raises(ModelConfigError, match=r"patch_size=14 does not divide model.img_size=32"):
        build_model("vit", "H", num_classes=10, img_size=32, patch_size=14)


def test_unknown_variant_lists_choices():
    with pytest.raises(ModelConfigError, match=r"variant='XL'.*'B'"):
        build_model("vit", "XL", num_classes=10, img_size=32, patch_size=8)


@pytest.mark.parametrize(("pos", "at"), [("1d", "stem"), ("none", "stem"), ("2d", "stem"), ("relative", "stem"),
                                         ("1d", "every_layer"), ("1d", "every_layer_shared"), ("2d", "every_layer"),
                                         ("2d", "every_layer_shared")])
def test_table8_position_embeddings_train(pos, at):
    """App. D.4 / Table 8: every cell of the ablation is a model.pos_embed x model.pos_embed_at option that learns."""
    from vitlab import paper

    assert (pos, at) in paper.TABLE8
    m = build_model("vit", "micro", num_classes=10, patch_size=8, img_size=32, pos_embed=pos, pos_embed_at=at)
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    names = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    want = {"1d": "pos_embed" if at == "stem" else "pos_1d", "2d": "pos_x", "relative": "bias", "none": None}[pos]
    assert want is None or any(want in n for n in names)
    if pos == "none":
        assert m.pos_embed is None
    if pos == "2d":  # X and Y embeddings of D/2 each
        assert m.pos_x.shape[-1] + m.pos_y.shape[-1] == m.embed_dim
    layers = len(m.blocks) if at == "every_layer" else 1
    if pos == "1d" and at != "stem":
        assert m.pos_1d.shape[0] == layers


def test_pos_embed_at_every_layer_needs_an_absolute_embedding():
    with pytest.raises(ModelConfigError, match="needs model.pos_embed=1d or 2d"):
        build_model("vit", "micro", num_classes=10, patch_size=8, img_size=32, pos_embed="relative",
                    pos_embed_at="every_layer")
