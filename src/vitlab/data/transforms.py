"""The paper's input pipelines, named once (big_vision style) and chosen by stage.

- ``pretrain``: inception crop + horizontal flip (paper App. B.1, pretraining).
- ``finetune``: resize to the fine-tune resolution, random crop + flip (paper §3.2 / App. B.1.1).
- ``eval``: resize, then central crop.
- ``translate``: pad-and-random-crop, no flip; for digits and other data where flips change the class.
- ``none``: only resize + normalise.

Every pipeline takes a PIL image or a uint8 CHW tensor and returns a normalised float tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

# Normalisation presets: the paper maps pixels to [-1, 1]; timm's ImageNet weights expect mean/std.
NORMALIZATION = {
    "paper": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

PIPELINES = ("pretrain", "finetune", "eval", "translate", "none")


def resolve_normalization(normalization: str | dict) -> tuple[Sequence[float], Sequence[float]]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise ValueError(f"data.normalization={normalization!r} is not one of {sorted(NORMALIZATION)} or a {{mean, std}} mapping")
        return NORMALIZATION[normalization]
    return tuple(normalization["mean"]), tuple(normalization["std"])


def build_transform(
    pipeline: str,
    img_size: int,
    normalization: str | dict = "paper",
    resize_size: int | None = None,
    crop_pct: float = 0.875,
    scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    pad: int = 2,
) -> v2.Compose:
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {PIPELINES}")
    mean, std = resolve_normalization(normalization)
    steps: list = [v2.ToImage()]
    if pipeline == "pretrain":
        steps.append(v2.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif pipeline == "finetune":
        # big_vision/vit_jax fine-tuning: resize a little above the target, random crop back to it.
        steps += [v2.Resize(resize_size or int(round(img_size / crop_pct)), antialias=True), v2.RandomCrop(img_size)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif pipeline == "eval":
        steps += [v2.Resize(resize_size or int(round(img_size / crop_pct)), antialias=True), v2.CenterCrop(img_size)]
    elif pipeline == "translate":
        steps += [v2.Resize(img_size, antialias=True), v2.RandomCrop(img_size, padding=pad, padding_mode="edge")]
    else:
        steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)
