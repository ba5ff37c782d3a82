"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"): the modern CNN baseline users compare ViTs against.

Not in the paper. Built with timm's ``ConvNeXt`` class from the shapes below, which are those of timm's
``convnext_tiny`` / ``convnext_small`` / ``convnext_base`` builders (tests/test_models.py compares the parameter
counts with ``timm.create_model``); ``micro`` is vitlab's CPU model. Checkpoints: timm ``.pth`` / ``.safetensors``
or a vitlab ``.ckpt`` (``model.pretrained``); there is no official ``.npz`` layout.

This file is the whole family: adding it touched no other Python file (the registry finds it by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.models.convnext import ConvNeXt
from torch import nn

from vitlab.models import registry
from vitlab.models.registry import choice


@dataclass(frozen=True)
class ConvNeXtShape:
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    #: the stem's patchify stride (4 in the paper; 2 for 32 px inputs, so the last stage still sees 2x2)
    stem_patch: int = 4


# Liu et al. 2022, §3 "ConvNeXt variants" (= timm convnext.py: convnext_tiny, convnext_small, convnext_base model_args).
CONVNEXT_SHAPES: dict[str, ConvNeXtShape] = {
    "micro": ConvNeXtShape(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), stem_patch=2),
    "T": ConvNeXtShape(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "S": ConvNeXtShape(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "B": ConvNeXtShape(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def build(variant: str, num_classes: int, in_chans: int = 3, head_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
          representation_size: int | None = None, **_: Any) -> nn.Module:
    """``representation_size`` is timm's ``head_hidden_size``: a hidden pre-logits layer before the classifier (GELU in
    timm's ConvNeXt head, where the paper's ViT pretraining heads use tanh)."""
    shape = CONVNEXT_SHAPES[choice("variant", variant, CONVNEXT_SHAPES)]
    return ConvNeXt(in_chans=in_chans, num_classes=num_classes, depths=shape.depths, dims=shape.dims,
                    patch_size=shape.stem_patch, drop_rate=head_drop_rate, drop_path_rate=drop_path_rate,
                    head_hidden_size=representation_size or None)


def _owns(model: nn.Module) -> bool:
    return isinstance(model, ConvNeXt)


def describe(model: nn.Module) -> dict[str, Any]:
    return {
        "family": "convnext",
        "stem_width": int(model.stem[0].weight.shape[0]),
        "stem_patch": int(model.stem[0].weight.shape[-1]),
        "stages": tuple(len(s.blocks) for s in model.stages),
        "features": int(model.num_features),
    }


FAMILY = registry.register(registry.Family(
    name="convnext", label="ConvNeXt", build=build, variants=CONVNEXT_SHAPES, owns=_owns, describe=describe,
    owns_state_dict=lambda sd: any(k.startswith("stages.") and k.endswith(".conv_dw.weight") for k in sd),
    fsdp_block="timm.models.convnext.ConvNeXtBlock", style=("tab:purple", "P", ":"),
))
