"""``build_model``: a ``conf/model`` entry -> its family's network (``vitlab.models.registry``).

Each family (``vit.py``, ``bit.py``, ``hybrid.py``, ``convnext.py``) holds its own table of shapes and its
builder; this module only checks what every family shares (class count, dropout rates, activation
checkpointing) and asks the registry for the family named by ``model.family``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vitlab.checks import MAX_CLASSES, check_count
from vitlab.errors import ConfigError, ModelConfigError
from vitlab.models import registry


def build_model(
    family: str,
    variant: str,
    num_classes: int,
    *,
    grad_checkpointing: bool = False,
    head_drop_rate: float = 0.0,
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    **keys: Any,
) -> nn.Module:
    """Build a backbone + head from a ``conf/model`` entry. The other keys (``img_size``, ``patch_size``, ...) go to
    the family's builder, which ignores those it does not take (``name``, ``compile``, ...).

    ``grad_checkpointing`` = timm's activation checkpointing (``set_grad_checkpointing``): blocks recompute
    their activations in the backward pass, trading ~30% more compute for memory (ViT-L/H on one GPU).
    ``head_drop_rate`` is timm's dropout before the classifier, not one of the paper's sites (those are
    ``pos_drop_rate`` and ``proj_drop_rate``).
    """
    fam = registry.get(family)
    try:  # 0 = no head (a backbone: masked patch prediction, few-shot features)
        num_classes = check_count("model.num_classes", num_classes, minimum=0, maximum=MAX_CLASSES, what="classes")
    except ConfigError as e:
        raise ModelConfigError(str(e)) from None
    img, patch = keys.get("img_size"), keys.get("patch_size")
    if fam.pixel_patches and patch and img and int(img) % int(patch):
        raise ModelConfigError(
            f"model.patch_size={patch} does not divide the image size {img} (model.img_size, from data.img_size): "
            f"use a multiple of {patch}, e.g. data.img_size={max(patch, img // patch * patch)}"
        )
    head_drop_rate = float(head_drop_rate or 0.0)
    for key, rate in (("pos_drop_rate", pos_drop_rate), ("proj_drop_rate", proj_drop_rate),
                      ("attn_drop_rate", attn_drop_rate), ("head_drop_rate", head_drop_rate)):
        if rate is not None and not 0.0 <= float(rate) < 1.0:
            raise ModelConfigError(f"model.{key}={rate} must be in [0, 1)")
    if not fam.transformer and (pos_drop_rate or proj_drop_rate or attn_drop_rate):
        raise ModelConfigError(
            f"model.pos_drop_rate={pos_drop_rate}, proj_drop_rate={proj_drop_rate}, attn_drop_rate="
            f"{attn_drop_rate}: these are Transformer dropout sites; a {fam.label} (model.family={family}) has none. "
            "Set them to 0 (the paper trains its ResNets without dropout)."
        )
    net = fam.build(variant=variant, num_classes=int(num_classes), head_drop_rate=head_drop_rate,
                    pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate, **keys)
    return _grad_checkpointing(net, grad_checkpointing)


def _grad_checkpointing(model: nn.Module, enable: bool) -> nn.Module:
    if enable:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ModelConfigError(f"model.grad_checkpointing=true: {type(model).__name__} has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
