"""The paper's input pipelines, named once (big_vision style) and chosen by stage.

- ``pretrain``: inception crop (area ``data.train_crop_scale``, default 0.05-1 as vit_jax's
  ``input_pipeline.py``: ``sample_distorted_bounding_box(area_range=(0.05, 1.0))``, aspect ratio 3/4-4/3, that
  op's default) to ``img_size`` + horizontal flip.
- ``paper_finetune``: the paper's fine-tuning train pipeline, vit_jax ``input_pipeline.py`` for fine-tuning: the
  same inception crop (area 0.05-1, ratio 3/4-4/3) to the fine-tuning resolution + flip. The paper recipes
  (``experiment=paper/finetune_<data>``) use it.
- ``finetune``: BiT's fine-tuning train pipeline (big_transfer ``bit_hyperrule``): resize the whole image to a
  square a little above the resolution (``img_size / crop_pct``), random crop back to it, flip.
- ``fewshot``: big_vision's few-shot features, ``resize(256) | central_crop(224)`` (``configs/common_fewshot.py``),
  scaled to any resolution: resize the whole image to ``round(img_size * 256 / 224)`` square, central crop
  ``img_size`` (32 px: 37 then 32).
- ``eval``: ``data.eval_resize=square`` (default; vit_jax ``input_pipeline.py`` and BiT): resize the whole
  image to ``img_size x img_size``, no crop. ``center_crop``: timm's convention, resize the short side to
  ``img_size / crop_pct`` and take the central crop (cuts the sides of a non-square image).
- ``translate``: square resize + pad-and-random-crop, no flip; for digits and other data where flips change the class.
- ``none``: only resize (the whole image to ``img_size x img_size``) + normalise: every pixel of the field of
  view stays (VTAB's counting and distance tasks need the whole image).

Every pipeline takes a PIL image or a uint8 CHW tensor and returns a normalised float tensor, or, with
``normalize=False`` (``data.normalize_on_device``), the uint8 CHW tensor before the last two steps:
:func:`normalize_batch` then runs them on the whole batch once it is on the device, with the same ops, so the
values are the same (bit for bit on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Normalisation presets: the paper maps pixels to [-1, 1]; timm's ImageNet weights expect mean/std.
NORMALIZATION = {
    "paper": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

PIPELINES = ("pretrain", "paper_finetune", "finetune", "fewshot", "eval", "translate", "none")
#: ``data.eval_resize``: square = the paper's / vit_jax's / BiT's eval resize; center_crop = timm's
EVAL_RESIZE = ("square", "center_crop")
#: inception-crop area range, vit_jax ``input_pipeline.py`` (area_range=(0.05, 1.0)); timm/torchvision use 0.08
INCEPTION_CROP_SCALE: tuple[float, float] = (0.05, 1.0)
#: inception-crop aspect ratios: tf.image.sample_distorted_bounding_box's default (0.75, 1.33), as vit_jax calls it
INCEPTION_CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
#: big_vision few-shot preprocessing ``resize(256) | central_crop(224)``: the resize is 256/224 of the crop
FEWSHOT_RESIZE_RATIO = 256 / 224


def resolve_normalization(normalization: str | dict) -> tuple[Sequence[float], Sequence[float]]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise ValueError(f"data.normalization={normalization!r} is not one of {sorted(NORMALIZATION)} or a {{mean, std}} mapping")
        return NORMALIZATION[normalization]
    return tuple(normalization["mean"]), tuple(normalization["std"])


def check_crop_scale(scale: Sequence[float]) -> tuple[float, float]:
    """``data.train_crop_scale``: the inception crop's (min, max) fraction of the image area."""
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"data.train_crop_scale={scale!r} must be two numbers [min, max], e.g. [0.05, 1.0]") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"data.train_crop_scale={[lo, hi]} must satisfy 0 < min <= max <= 1 (area fractions)")
    return lo, hi


def build_transform(
    pipeline: str,
    img_size: int,
    normalization: str | dict = "paper",
    resize_size: int | None = None,
    crop_pct: float = 0.875,
    scale: Sequence[float] = INCEPTION_CROP_SCALE,
    flip: bool = True,
    pad: int = 2,
    eval_resize: str = "square",
    normalize: bool = True,
) -> v2.Compose:
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {PIPELINES}")
    if eval_resize not in EVAL_RESIZE:
        raise ValueError(f"data.eval_resize={eval_resize!r} is not one of {list(EVAL_RESIZE)}")
    scale = check_crop_scale(scale)
    mean, std = resolve_normalization(normalization)
    square = (img_size, img_size)
    steps: list = [v2.ToImage()]
    if pipeline in ("pretrain", "paper_finetune"):  # vit_jax: the same inception crop + flip for both
        steps.append(v2.RandomResizedCrop(img_size, scale=scale, ratio=INCEPTION_CROP_RATIO, antialias=True))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif pipeline == "fewshot":
        r = int(round(img_size * FEWSHOT_RESIZE_RATIO))
        steps += [v2.Resize((r, r), antialias=True), v2.CenterCrop(img_size)]
    elif pipeline == "finetune":
        # BiT fine-tuning: the whole image to a square a little above the target, random crop back to it.
        r = resize_size or int(round(img_size / crop_pct))
        steps += [v2.Resize((r, r), antialias=True), v2.RandomCrop(img_size)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif pipeline == "eval" and eval_resize == "center_crop":
        steps += [v2.Resize(resize_size or int(round(img_size / crop_pct)), antialias=True), v2.CenterCrop(img_size)]
    elif pipeline == "translate":
        steps += [v2.Resize(square, antialias=True), EdgePadRandomCrop(img_size, pad)]
    else:  # eval (square) and none: the whole field of view, resized to img_size x img_size
        steps.append(v2.Resize(square, antialias=True))
    if not normalize:  # uint8 out; normalize_batch finishes the pipeline on the device
        return v2.Compose([*steps, v2.ToPureTensor()])
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


class EdgePadRandomCrop(v2.RandomCrop):
    """``v2.RandomCrop(size, padding=pad, padding_mode="edge")``: the same random draws, the same pixels, with
    torch's own replicate pad. torchvision pads a uint8 image by way of float and its kernel dispatch
    (tests/test_data_pipeline.py pins the equality)."""

    def __init__(self, size: int, pad: int) -> None:
        super().__init__(size, padding=pad, padding_mode="edge")

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, torch.Tensor) or isinstance(inpt, tv_tensors.TVTensor) and \
                not isinstance(inpt, tv_tensors.Image):  # boxes, masks...: torchvision's own kernels
            return super().transform(inpt, params)
        left, top, right, bottom = params["padding"]
        out = torch.nn.functional.pad(inpt.as_subclass(torch.Tensor), (left, right, top, bottom), mode="replicate")
        out = out[..., params["top"]:params["top"] + params["height"], params["left"]:params["left"] + params["width"]]
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def normalize_batch(x: torch.Tensor, normalization: str | dict = "paper") -> torch.Tensor:
    """The last two steps of every pipeline (``ToDtype(scale=True)`` + ``Normalize``) on a uint8 batch (N, C, H, W),
    wherever it is: the same functional ops as :func:`build_transform`, so the same values as per-image
    normalisation in the loader (elementwise, so batching changes nothing)."""
    mean, std = resolve_normalization(normalization)
    return F.normalize(F.to_dtype(x, torch.float32, scale=True), mean=list(mean), std=list(std))


# ---- the packed reader's fused pretrain pipeline (data=packed data.draft=true) ----------------------------
class InceptionCropBox:
    """``v2.RandomResizedCrop.make_params`` on a height and width alone: the same RNG draws in the same order and the
    same float32 arithmetic, so a seed gives the same ``(top, left, height, width)``; without a tensor to query or
    v2's new tensor per draw (a third of its cost). :class:`vitlab.data.files.DraftInceptionCrop` draws its box from
    the JPEG header this way before decoding (``tests/test_data_pipeline.py`` compares the boxes with v2's)."""

    def __init__(self, scale: Sequence[float], ratio: Sequence[float] = INCEPTION_CROP_RATIO) -> None:
        self.scale = check_crop_scale(scale)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.log_ratio = tuple(torch.log(torch.tensor(self.ratio)).tolist())  # float32, as v2 computes it

    def __call__(self, height: int, width: int) -> tuple[int, int, int, int]:
        area, u = height * width, torch.empty(1)
        for _ in range(10):
            target_area = area * u.uniform_(*self.scale).item()
            aspect = u.uniform_(*self.log_ratio).exp_().item()
            w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, size=(1,)).item()
                return top, torch.randint(0, width - w + 1, size=(1,)).item(), h, w
        if width / height < min(self.ratio):  # v2's fallback: a central crop at the nearest allowed ratio
            w, h = width, round(width / min(self.ratio))
        elif width / height > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w


class FlipNormalize:
    """The rest of the pretrain pipeline after :class:`vitlab.data.files.DraftInceptionCrop`: ``RandomHorizontalFlip`` (the same one
    RNG draw) + ``ToDtype(scale=True)`` + ``Normalize`` fused into one multiply-add, without v2's per-call dispatch
    (equal to the v2 steps up to float rounding, ~1e-7). ``mean=None``: flip only, uint8 out
    (``data.normalize_on_device``: :func:`normalize_batch` runs on the device), in the memory layout the crop's
    resize wrote (channels-last, HWC in memory): :func:`vitlab.data.base.collate` stacks such images with row copies,
    where a per-image ``contiguous()`` (a byte-by-byte transposition) cost as much as the flip and collate together."""

    def __init__(self, mean, std) -> None:
        self.scale = self.shift = None
        if mean is not None:
            std_t = torch.tensor([float(v) for v in std]).view(3, 1, 1)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = torch.tensor([float(v) for v in mean]).view(3, 1, 1) / std_t

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() < 0.5:  # v2.RandomHorizontalFlip(p=0.5): flips unless rand >= p
            img = img.flip(-1)
        if self.scale is None:
            return img
        return img.to(torch.float32).mul_(self.scale).sub_(self.shift)
