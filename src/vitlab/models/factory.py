"""Build the paper's backbones through timm from one table of shapes.

The paper's shapes (Table 1) and BiT's ResNetV2 depths/widths live here and nowhere else; model
configs in ``conf/model/`` only name a variant.  Everything is built with timm's own classes
(``VisionTransformer``, ``ResNetV2`` with GroupNorm + weight-standardised convs, ``HybridEmbed``),
so timm's weight loaders and position-embedding resampling apply unchanged.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from vitlab.errors import ModelConfigError


@dataclass(frozen=True)
class ViTShape:
    depth: int
    width: int
    mlp: int
    heads: int


# Paper Table 1 (B/L/H) and DeiT/timm (Ti/S); ``micro`` is vitlab's CPU model.
VIT_SHAPES: dict[str, ViTShape] = {
    "micro": ViTShape(depth=6, width=128, mlp=256, heads=4),
    "Ti": ViTShape(depth=12, width=192, mlp=768, heads=3),
    "S": ViTShape(depth=12, width=384, mlp=1536, heads=6),
    "B": ViTShape(depth=12, width=768, mlp=3072, heads=12),
    "L": ViTShape(depth=24, width=1024, mlp=4096, heads=16),
    "H": ViTShape(depth=32, width=1280, mlp=5120, heads=16),
}


@dataclass(frozen=True)
class BiTShape:
    layers: tuple[int, ...]
    width_factor: int
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    stem_type: str = "fixed"


# BiT (Kolesnikov et al. 2020): ResNetV2 depth x width multiplier; ``micro`` is vitlab's CPU model.
BIT_SHAPES: dict[str, BiTShape] = {
    "micro": BiTShape(layers=(1, 1, 1, 1), width_factor=1, channels=(128, 256, 512, 512), stem_chs=32, stem_type="micro"),
    "r50x1": BiTShape(layers=(3, 4, 6, 3), width_factor=1),
    "r50x2": BiTShape(layers=(3, 4, 6, 3), width_factor=2),
    "r50x3": BiTShape(layers=(3, 4, 6, 3), width_factor=3),
    "r101x1": BiTShape(layers=(3, 4, 23, 3), width_factor=1),
    "r101x3": BiTShape(layers=(3, 4, 23, 3), width_factor=3),
    "r152x1": BiTShape(layers=(3, 8, 36, 3), width_factor=1),
    "r152x2": BiTShape(layers=(3, 8, 36, 3), width_factor=2),
    "r152x4": BiTShape(layers=(3, 8, 36, 3), width_factor=4),
    "r200x3": BiTShape(layers=(3, 24, 36, 3), width_factor=3),  # ResNet-200 (He et al. 2016b), Table 6 row
}

# Hybrid backbones (paper §3.1): ResNetV2 stages feeding a ViT with patch size 1; the number after the slash
# of a hybrid's name is its total stride (stem /4, then /2 per stage after the first). Depths: vit_jax
# ``configs/models.py`` (get_r50_b16_config, get_r50_l32_config, get_r26_b32_config).
HYBRID_RESNET_LAYERS: dict[str, tuple[int, ...]] = {
    "r50": (3, 4, 9),  # option (ii): stage 4's blocks moved to stage 3, stride 16 (R50+ViT-B/16, -L/16)
    "r50_s32": (3, 4, 6, 3),  # option (i): the regular ResNet-50's stage-4 output, stride 32 (R50+ViT-B/32, -L/32)
    "r26": (2, 2, 2, 2),  # stride 32 (vit_jax R26+ViT-B_32)
    "micro": (1, 1),  # vitlab's CPU hybrid, stride 8
}

FAMILIES = ("vit", "bit", "hybrid")
CLASSIFIERS = ("token", "gap")


def _choice(name: str, value: Any, choices) -> Any:
    if value not in choices:
        raise ModelConfigError(f"model.{name}={value!r} is not one of {sorted(choices)}")
    return value


def _check_patch(img_size: int, patch_size: int, what: str = "model.img_size") -> None:
    if patch_size <= 0 or img_size <= 0:
        raise ModelConfigError(f"{what}={img_size} and model.patch_size={patch_size} must be positive")
    if img_size % patch_size:
        raise ModelConfigError(
            f"model.patch_size={patch_size} does not divide {what}={img_size}: choose an image size that is a "
            f"multiple of the patch size (e.g. data.img_size={max(patch_size, (img_size // patch_size) * patch_size)})"
            " or another patch size"
        )


class MicroStem(nn.Module):
    """3x3 stride-2 weight-standardised stem without pooling, for 32 px inputs (BiT's 7x7/2 + pool assumes 224 px)."""

    def __init__(self, in_chs: int, out_chs: int, conv_layer) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _with_representation(model: nn.Module, num_features: int, representation_size: int | None, num_classes: int):
    """Paper §3.1: pretraining head = MLP with one tanh hidden layer ("pre-logits"); fine-tuning = one linear."""
    if not representation_size:
        return model
    model.head = nn.Sequential(
        OrderedDict(
            pre_logits=nn.Sequential(nn.Linear(num_features, representation_size), nn.Tanh()),
            head=nn.Linear(representation_size, num_classes) if num_classes > 0 else nn.Identity(),
        )
    )
    return model


def build_vit(
    variant: str,
    patch_size: int,
    img_size: int,
    num_classes: int,
    in_chans: int = 3,
    classifier: str = "token",
    representation_size: int | None = None,
    head_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pos_embed: str = "learn",
    fused_attn: bool | None = None,
    hybrid: str | None = None,
    weight_init: str = "",
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
) -> nn.Module:
    """A timm ``VisionTransformer`` of the paper's shapes (or an R+ViT hybrid when ``hybrid`` names a backbone).

    Dropout sites (paper App. B.1, vit_jax ``models_vit.py``): ``pos_drop_rate`` right after adding the
    position embeddings; ``proj_drop_rate`` after every dense layer except the qkv projections, i.e. after the
    attention output projection and after both MLP layers (timm's ``proj_drop`` sites). ``attn_drop_rate`` is
    dropout on the attention weights (0 in the paper); ``head_drop_rate`` is timm's dropout before the
    classifier, which the paper does not use.
    """
    from timm.models.vision_transformer import VisionTransformer

    shape = VIT_SHAPES[_choice("variant", variant, VIT_SHAPES)]
    _choice("classifier", classifier, CLASSIFIERS)
    _choice("pos_embed", pos_embed, ("learn", "none"))
    if shape.width % shape.heads:
        raise ModelConfigError(f"width {shape.width} is not divisible by {shape.heads} heads")
    kwargs: dict[str, Any] = dict(
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=shape.width,
        depth=shape.depth,
        num_heads=shape.heads,
        mlp_ratio=shape.mlp / shape.width,
        global_pool="token" if classifier == "token" else "avg",
        class_token=classifier == "token",
        fc_norm=False,  # paper: the head reads the final LayerNorm output for both classifiers
        pos_embed=pos_embed,
        drop_rate=head_drop_rate,
        pos_drop_rate=pos_drop_rate,
        proj_drop_rate=proj_drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        weight_init=weight_init,
    )
    if hybrid is not None:
        from timm.layers import StdConv2dSame
        from timm.models.resnetv2 import ResNetV2
        from timm.models.vision_transformer_hybrid import HybridEmbed

        layers = HYBRID_RESNET_LAYERS[_choice("hybrid", hybrid, HYBRID_RESNET_LAYERS)]
        # TF "SAME" padding throughout (stem conv, stem max-pool, strided 3x3 convs), as the official hybrids
        # were trained and as timm ports them (vision_transformer_hybrid._resnetv2, padding_same=True):
        # symmetric padding would run an official R50+ViT checkpoint on a grid shifted by one pixel.
        backbone = ResNetV2(
            layers=layers, num_classes=0, global_pool="", in_chans=in_chans, preact=False, stem_type="same",
            conv_layer=partial(StdConv2dSame, eps=1e-8),
        )
        stride = 4 * 2 ** (len(layers) - 1)  # stem /4, then /2 per stage after the first
        _check_patch(img_size, stride * patch_size, "model.img_size (hybrid stride x patch)")
        kwargs.update(patch_size=patch_size, embed_layer=partial(HybridEmbed, backbone=backbone))
    else:
        _check_patch(img_size, patch_size)
        kwargs.update(patch_size=patch_size)
    model = VisionTransformer(**kwargs)
    if fused_attn is not None:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(fused_attn)
    return _with_representation(model, shape.width, representation_size, num_classes)


def _std_conv():
    from timm.layers import StdConv2d

    return StdConv2d


def build_bit(
    variant: str,
    num_classes: int,
    in_chans: int = 3,
    head_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    representation_size: int | None = None,
    zero_init_last: bool = True,
) -> nn.Module:
    from timm.models.resnetv2 import ResNetV2

    shape = BIT_SHAPES[_choice("variant", variant, BIT_SHAPES)]
    conv = partial(_std_conv(), eps=1e-8)
    stem_type = "fixed" if shape.stem_type == "micro" else shape.stem_type
    model = ResNetV2(
        layers=list(shape.layers),
        channels=shape.channels,
        num_classes=num_classes,
        in_chans=in_chans,
        width_factor=shape.width_factor,
        stem_chs=shape.stem_chs,
        stem_type=stem_type,
        conv_layer=conv,
        drop_rate=head_drop_rate,
        drop_path_rate=drop_path_rate,
        zero_init_last=zero_init_last,
    )
    if shape.stem_type == "micro":
        model.stem = MicroStem(in_chans, shape.stem_chs * shape.width_factor, conv)
    if representation_size:
        # ResNetV2's classifier is a 1x1 conv on the pooled map; swap in the paper's pre-logits MLP.
        from timm.layers import ClassifierHead

        model.head = ClassifierHead(model.num_features, 0, pool_type="avg")
        model.head.fc = nn.Sequential(
            nn.Linear(model.num_features, representation_size), nn.Tanh(),
            nn.Linear(representation_size, num_classes) if num_classes > 0 else nn.Identity(),
        )
    return model


def build_model(
    family: str,
    variant: str,
    num_classes: int,
    img_size: int = 224,
    patch_size: int | None = None,
    in_chans: int = 3,
    classifier: str = "token",
    representation_size: int | None = None,
    head_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pos_embed: str = "learn",
    fused_attn: bool | None = None,
    hybrid: str | None = None,
    grad_checkpointing: bool = False,
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    drop_rate: float | None = None,
    **ignored: Any,
) -> nn.Module:
    """Build a backbone + head from a ``conf/model`` entry (extra keys such as ``name`` are ignored).

    ``grad_checkpointing`` = timm's activation checkpointing (``set_grad_checkpointing``): blocks recompute
    their activations in the backward pass, trading ~30% more compute for memory (ViT-L/H on one GPU).
    ``drop_rate`` is the old name of ``head_drop_rate`` (timm's dropout before the classifier, not one of the
    paper's sites: those are ``pos_drop_rate`` and ``proj_drop_rate``); it still works, with a warning.
    """
    _choice("family", family, FAMILIES)
    if num_classes is None or int(num_classes) < 0:
        raise ModelConfigError(f"model.num_classes={num_classes!r} must be a non-negative int")
    head_drop_rate = _head_drop_rate(head_drop_rate, drop_rate)
    for key, rate in (("pos_drop_rate", pos_drop_rate), ("proj_drop_rate", proj_drop_rate),
                      ("attn_drop_rate", attn_drop_rate), ("head_drop_rate", head_drop_rate)):
        if rate is not None and not 0.0 <= float(rate) < 1.0:
            raise ModelConfigError(f"model.{key}={rate} must be in [0, 1)")
    if family == "bit":
        if pos_drop_rate or proj_drop_rate or attn_drop_rate:
            raise ModelConfigError(
                f"model.pos_drop_rate={pos_drop_rate}, proj_drop_rate={proj_drop_rate}, attn_drop_rate="
                f"{attn_drop_rate}: these are Transformer dropout sites; a BiT ResNet (model.family=bit) has none. "
                "Set them to 0 (the paper trains its ResNets without dropout)."
            )
        return _grad_checkpointing(
            build_bit(variant, num_classes, in_chans, head_drop_rate, drop_path_rate, representation_size),
            grad_checkpointing)
    if patch_size is None:
        raise ModelConfigError(f"model.patch_size is required for family={family!r}")
    return _grad_checkpointing(build_vit(
        variant, int(patch_size), int(img_size), int(num_classes), in_chans, classifier, representation_size,
        head_drop_rate, attn_drop_rate, drop_path_rate, pos_embed, fused_attn, hybrid if family == "hybrid" else None,
        pos_drop_rate=float(pos_drop_rate), proj_drop_rate=float(proj_drop_rate),
    ), grad_checkpointing)


def _head_drop_rate(head_drop_rate: float, drop_rate: float | None) -> float:
    """``model.drop_rate`` (deprecated) -> ``model.head_drop_rate``; both set differently is an error."""
    if drop_rate is None or float(drop_rate) == float(head_drop_rate or 0.0):
        return float(head_drop_rate or 0.0)
    if head_drop_rate:
        raise ModelConfigError(
            f"model.drop_rate={drop_rate} and model.head_drop_rate={head_drop_rate} both set the head dropout: "
            "keep model.head_drop_rate only (drop_rate is its old name)"
        )
    warnings.warn(
        f"model.drop_rate={drop_rate} is the old name of model.head_drop_rate (dropout before the classifier only). "
        "The paper's dropout sites are model.pos_drop_rate and model.proj_drop_rate.",
        FutureWarning, stacklevel=3,
    )
    return float(drop_rate)


def _grad_checkpointing(model: nn.Module, enable: bool) -> nn.Module:
    if enable:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ModelConfigError(f"model.grad_checkpointing=true: {type(model).__name__} has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
