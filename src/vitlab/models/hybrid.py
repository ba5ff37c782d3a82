"""The hybrid family (paper §3.1): ResNetV2 stages whose feature map, cut into patch-1 tokens, feeds a ViT.

The transformer is ``vit.build_vit`` with timm's ``HybridEmbed``; the checkpoints are vit_jax's ``R50+ViT-*.npz``,
read by the ViT family's reader (``conv_root`` / ``block{i}/unit{j}`` keys mark a hybrid).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.layers import StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer_hybrid import HybridEmbed
from torch import nn

from vitlab.models import registry, vit
from vitlab.models.bit import stage_depths
from vitlab.models.registry import choice

# The number after the slash of a hybrid's name is its total stride (stem /4, then /2 per stage after the first).
# Depths: vit_jax ``configs/models.py`` (get_r50_b16_config, get_r50_l32_config, get_r26_b32_config).
HYBRID_RESNET_LAYERS: dict[str, tuple[int, ...]] = {
    "r50": (3, 4, 9),  # option (ii): stage 4's blocks moved to stage 3, stride 16 (R50+ViT-B/16, -L/16)
    "r50_s32": (3, 4, 6, 3),  # option (i): the regular ResNet-50's stage-4 output, stride 32 (R50+ViT-B/32, -L/32)
    "r26": (2, 2, 2, 2),  # stride 32 (vit_jax R26+ViT-B_32)
    "micro": (1, 1),  # vitlab's CPU hybrid, stride 8
}


def build(variant: str, num_classes: int, patch_size: int | None = None, img_size: int = 224, in_chans: int = 3,
          hybrid: str | None = None, classifier: str = "token", representation_size: int | None = None,
          head_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
          pos_embed: str = "1d", fused_attn: bool | None = None, pos_drop_rate: float = 0.0,
          proj_drop_rate: float = 0.0, **_: Any) -> nn.Module:
    """``model.hybrid`` names the ResNet (a key of :data:`HYBRID_RESNET_LAYERS`); ``model.variant`` the ViT."""
    patch_size = vit.require_patch(patch_size, "hybrid")
    layers = HYBRID_RESNET_LAYERS[choice("hybrid", hybrid, HYBRID_RESNET_LAYERS)]
    # TF "SAME" padding throughout (stem conv, stem max-pool, strided 3x3 convs), as the official hybrids
    # were trained and as timm ports them (vision_transformer_hybrid._resnetv2, padding_same=True):
    # symmetric padding would run an official R50+ViT checkpoint on a grid shifted by one pixel.
    backbone = ResNetV2(
        layers=layers, num_classes=0, global_pool="", in_chans=in_chans, preact=False, stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
    )
    stride = 4 * 2 ** (len(layers) - 1)  # stem /4, then /2 per stage after the first
    vit.check_patch(int(img_size), stride * patch_size, "model.img_size (hybrid stride x patch)")
    return vit.build_vit(
        variant, patch_size, int(img_size), int(num_classes), in_chans, classifier, representation_size,
        head_drop_rate, attn_drop_rate, drop_path_rate, pos_embed, fused_attn,
        embed_layer=partial(HybridEmbed, backbone=backbone),
        pos_drop_rate=float(pos_drop_rate), proj_drop_rate=float(proj_drop_rate),
    )


def describe(model: nn.Module) -> dict[str, Any]:
    backbone = model.patch_embed.backbone
    return {**vit.describe_tokens(model, "hybrid"),
            "stages": stage_depths(backbone) if hasattr(backbone, "stages") else ()}


FAMILY = registry.register(registry.Family(
    name="hybrid", label="Hybrid (ResNet+ViT)", build=build, variants=vit.VIT_SHAPES,
    owns=lambda m: vit.is_vision_transformer(m, hybrid=True), describe=describe,
    owns_state_dict=lambda sd: any(k.startswith("patch_embed.backbone.") for k in sd),
    transformer=True, fsdp_block=vit.FAMILY.fsdp_block, prelogits_width=vit.prelogits_width,
    formats=(vit.VIT_NPZ,), style=("tab:green", "^", "-"), timm_takes_img_size=True,
))
