"""The BiT ResNetV2 family (Kolesnikov et al. 2020; the paper's ResNet baselines): shapes, builder, official
``.npz`` reader (google-research/big_transfer), registry entry.

Built with timm's ``ResNetV2`` (GroupNorm + weight-standardised convs), so timm's BiT loader applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import ClassifierHead, StdConv2d
from timm.models.resnetv2 import ResNetV2, _load_weights
from torch import nn

from vitlab.models import checkpoints as ck
from vitlab.models import registry
from vitlab.models.registry import choice


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


class MicroStem(nn.Module):
    """3x3 stride-2 weight-standardised stem without pooling, for 32 px inputs (BiT's 7x7/2 + pool assumes 224 px)."""

    def __init__(self, in_chs: int, out_chs: int, conv_layer) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_bit(
    variant: str,
    num_classes: int,
    in_chans: int = 3,
    head_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    representation_size: int | None = None,
    zero_init_last: bool = True,
) -> nn.Module:
    shape = BIT_SHAPES[choice("variant", variant, BIT_SHAPES)]
    conv = partial(StdConv2d, eps=1e-8)
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

        model.head = ClassifierHead(model.num_features, 0, pool_type="avg")
        model.head.fc = nn.Sequential(
            nn.Linear(model.num_features, representation_size), nn.Tanh(),
            nn.Linear(representation_size, num_classes) if num_classes > 0 else nn.Identity(),
        )
    return model


def build(variant: str, num_classes: int, in_chans: int = 3, head_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
          representation_size: int | None = None, **_: Any) -> nn.Module:
    return build_bit(variant, num_classes, in_chans, head_drop_rate, drop_path_rate, representation_size)


def stage_depths(backbone: nn.Module) -> tuple[int, ...]:
    return tuple(len(s.blocks) for s in backbone.stages)


def describe(model: nn.Module) -> dict[str, Any]:
    return {
        "family": "bit",
        "stem_width": int(model.stem.conv.weight.shape[0]),
        "stem_kernel": int(model.stem.conv.weight.shape[-1]),
        "stages": stage_depths(model),
        "features": int(model.num_features),
    }


def _owns(model: nn.Module) -> bool:
    return isinstance(model, ResNetV2)


# ---------------------------------------------------------------------------------------------------------
# Official .npz files (google-research/big_transfer), through timm's loader
# ---------------------------------------------------------------------------------------------------------

def describe_bit_npz(path: str, files: set[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    p = "resnet/"
    root, norm = f"{p}root_block/standardized_conv2d/kernel", f"{p}group_norm/gamma"
    for key in (root, norm):
        if key not in files:
            raise ck.PretrainedError(f"model.pretrained={path} is not a BiT .npz: no '{key}' key")
    root_shape = ck.npz_dims(path, shapes, root, "kernel, kernel, channels, stem width")
    stages = []
    i = 1
    while any(k.startswith(f"{p}block{i}/") for k in files):
        stages.append(len({k.split("/")[2] for k in files if k.startswith(f"{p}block{i}/")}))
        i += 1
    return {
        "family": "bit",
        "stem_width": int(root_shape[-1]),
        "stem_kernel": int(root_shape[0]),
        "stages": tuple(stages),
        "features": int(ck.npz_dims(path, shapes, norm, "features")[-1]),
    }


def read_bit_npz(path: str, model: nn.Module, keep_head: bool, report: ck.LoadReport,
                 *_: Any) -> dict[str, torch.Tensor]:
    w, files = ck.open_npz(path)
    index, shapes = ck.npz_shapes(path)
    with w:
        ck.check_npz_dtypes(path, index, "resnet/", model, report)
        ck.arch_mismatch(path, ck.describe_model(model), describe_bit_npz(path, files, shapes))
        k_src = int(shapes["resnet/head/conv2d/bias"][-1]) if shapes.get("resnet/head/conv2d/bias") else 0
    return ck.load_with_timm(path, model, _load_weights, "resnet/", k_src)


FAMILY = registry.register(registry.Family(
    name="bit", label="BiT ResNet", build=build, variants=BIT_SHAPES, owns=_owns, describe=describe,
    owns_state_dict=lambda sd: "stem.conv.weight" in sd and any(k.startswith("stages.0.blocks.0.conv1.") for k in sd),
    fsdp_block="timm.models.resnetv2.PreActBottleneck",
    formats=(registry.CheckpointFormat("bit_npz", detect=lambda names: any(n.startswith("resnet/") for n in names),
                                       read=read_bit_npz),),
    style=("tab:orange", "s", "--"),
))
