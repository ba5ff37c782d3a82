"""Compute accounting: forward and training FLOPs per image, and cumulative training compute.

Counts come from ``torch.utils.flop_counter`` run on a *meta-device* copy of the model, so counting
ViT-H/14 costs no memory and well under a second. Convention (the one behind the published numbers
the paper's models are quoted with, timm/fvcore): 1 MAC = 1 multiply-add of a matmul or convolution,
plus normalisation layers at 5 MACs per element with an affine transform (4 without), weight
standardisation included, and 1 per element for global average pooling; FLOPs = 2 x MACs. With it,
ViT-B/16 at 224 px counts 17.58 GMACs and BiT-R50x1 4.23 GMACs (``tests/test_flops.py``). Matmuls
and convolutions alone give 17.56 and 4.09.

Training FLOPs follow a second convention, the one behind the paper's exaFLOPs (Table 6, Figure 5):
XLA's cost analysis, which the paper's TPU runs report. XLA counts a convolution's multiply-adds only
where the kernel tap lands inside the input (``HloCostAnalysis::HandleConvolution`` in
tensorflow/compiler/xla/service/hlo_cost_analysis.cc: "Skip if input index is not in bound"), so the
zeros of a padded border cost nothing. A ViT's patch embedding has no padding and both conventions
agree; a ResNet's 3x3 and 7x7 convolutions pad, and counting those taps put every BiT row of Table 6
3-4% high. Skipping them lands every ResNet row within 1% (``python -m vitlab.inspection.flops table6``).
Padding added by an explicit ``F.pad`` (timm's ``StdConv2dSame``, used by the hybrids) is input to the
convolution and is counted; the hybrid rows are within 0.4%, except R50+ViT-L/16 at 7 epochs, 3% under
Table 6's 859 (the paper's own 7- and 14-epoch numbers for that model, 859 and 1668, are not 1:2).

Training FLOPs per image are counted on a real forward + backward pass (the backward of a matmul
costs twice its forward, which the counter measures rather than assumes), so ``train/exaflops`` =
images seen x training FLOPs per image / 1e18: the x-axis of the paper's Figure 5 and Table 6's
exaFLOPs column. They are the *marginal* cost of one image in a batch (a batch of two minus a batch of
one): BiT's weight standardisation (and its backward) runs once per step on the weights, not once per
image, and counting it per image over-counted a ResNet's training compute by ~2.5%. ``forward_flops``
stays the cost of one image alone, the convention of the published GMACs above.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop, conv_flop_count

import vitlab
from vitlab import CONF_DIR, paper
from vitlab import metrics as M
from vitlab.config import register_resolvers
from vitlab.models import build_model, count_params

log = logging.getLogger(__name__)
aten = torch.ops.aten

def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _norm_macs(numel: int, affine: bool) -> int:
    return numel * (5 if affine else 4)


# Each formula receives shapes (tensors replaced by their shapes) and returns FLOPs (= 2 x MACs).
def _layer_norm(x, normalized_shape, weight=None, bias=None, *a, out_shape=None, **k) -> int:
    return 2 * _norm_macs(_numel(x), weight is not None)


def _group_norm(x, weight=None, bias=None, *a, out_shape=None, **k) -> int:
    return 2 * _norm_macs(_numel(x), weight is not None)


def _batch_norm(x, weight=None, bias=None, *args, out_shape=None, **k) -> int:
    training = next((a for a in args if isinstance(a, bool)), k.get("training", False))
    if training:  # statistics computed from the input (BiT's weight standardisation runs here)
        return 2 * _norm_macs(_numel(x), weight is not None)
    return 2 * _numel(x) * (2 if weight is not None else 1)


def _mean(x, *a, out_shape=None, **k) -> int:
    return 2 * _numel(x)


def _norm_backward(grad_out, x, *a, out_shape=None, **k) -> int:
    return 2 * 2 * _norm_macs(_numel(x), True)  # backward ~ 2 x forward, as for matmuls


def _in_bounds_taps(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension whose input index is inside the input."""
    return sum(0 <= o * stride - pad + t * dilation < n_in for o in range(n_out) for t in range(kernel))


def _conv_fmas_in_bounds(x, w, stride, padding, dilation, out_shape) -> int:
    """Multiply-adds of a convolution, padding taps skipped (XLA's ``HandleConvolution``)."""
    spatial = range(2, len(x))
    taps = math.prod(_in_bounds_taps(x[d], out_shape[d], w[d], stride[d - 2], padding[d - 2], dilation[d - 2])
                     for d in spatial)
    return x[0] * w[0] * w[1] * taps  # batch x out channels x in channels per group x in-bound taps


def _conv_xla(x, w, bias, stride, padding, dilation, transposed, *a, out_shape=None, **k) -> int:
    if transposed:  # not used by any vitlab model: torch's full-window count
        return conv_flop_count(x, w, out_shape, transposed=True)
    return 2 * _conv_fmas_in_bounds(x, w, stride, padding, dilation, out_shape)


def _conv_backward_xla(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                       output_mask, out_shape=None, **k) -> int:
    """Each in-bound (output, tap) pair of the forward is one multiply-add of the input gradient and one of the
    weight gradient: the backward costs the forward's in-bound count once per gradient asked for."""
    if transposed:
        return conv_backward_flop(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding,
                                  groups, output_mask, out_val=out_shape)
    fwd = 2 * _conv_fmas_in_bounds(x, w, stride, padding, dilation, grad_out)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


NORM_FORMULAS: dict[Any, Any] = {
    aten.native_layer_norm: _layer_norm,
    aten.native_group_norm: _group_norm,
    aten.native_batch_norm: _batch_norm,
    aten._native_batch_norm_legit: _batch_norm,
    aten._native_batch_norm_legit_functional: _batch_norm,
    aten.mean: _mean,
    aten.native_layer_norm_backward: _norm_backward,
    aten.native_group_norm_backward: _norm_backward,
    aten.native_batch_norm_backward: _norm_backward,
}
#: what a training step is counted with: the paper's (XLA's) convolution count, padding taps skipped
TRAIN_FORMULAS: dict[Any, Any] = {
    **NORM_FORMULAS,
    aten.convolution: _conv_xla,
    aten.convolution_backward: _conv_backward_xla,
}


@dataclass(frozen=True)
class FlopCount:
    """Per-image compute of one model at one resolution."""

    forward_flops: int
    train_flops: int  # forward + backward, in the paper's (XLA's) convention: padding taps not counted
    img_size: int
    by_op: dict[str, int]  # forward FLOPs per aten op

    @property
    def gmacs(self) -> float:
        return self.forward_flops / 2e9

    @property
    def gflops(self) -> float:
        return self.forward_flops / 1e9

    @property
    def train_gflops(self) -> float:
        return self.train_flops / 1e9


def _to_meta(model: nn.Module) -> nn.Module:
    return model if _is_meta(model) else copy.deepcopy(model).to("meta")


def _is_meta(model: nn.Module) -> bool:
    p = next(iter(model.parameters()), None)
    return p is not None and p.is_meta


def count_flops(model: nn.Module, img_size: int, in_chans: int = 3, train: bool = True) -> FlopCount:
    """FLOPs per image of ``model`` on an ``in_chans x img_size x img_size`` input (counted on the meta device)."""
    model = _to_meta(model)
    was_training = model.training
    x = torch.empty(1, in_chans, int(img_size), int(img_size), device="meta")
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=NORM_FORMULAS) as fc:
            model(x)
        fwd = fc.get_total_flops()
        by_op = {str(k): int(v) for k, v in fc.get_flop_counts()["Global"].items()}
        tr = 0
        if train:  # marginal cost of one image: per-step work on the weights (weight standardisation) drops out
            model.train()
            tr = _train_step_flops(model, x.expand(2, -1, -1, -1)) - _train_step_flops(model, x)
    finally:
        model.train(was_training)
    if fwd <= 0:
        raise RuntimeError(f"FLOP counter saw no matmul/conv in {type(model).__name__}: is its forward empty?")
    return FlopCount(forward_flops=int(fwd), train_flops=int(tr), img_size=int(img_size), by_op=by_op)


def _train_step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass on the batch ``x`` (meta device)."""
    with FlopCounterMode(display=False, custom_mapping=TRAIN_FORMULAS) as fc:
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().sum().backward()
    return fc.get_total_flops()


def _cache_path(model_json: str) -> Path:
    """Where the count of ``model_json`` is kept between processes: keyed by the config, the torch and timm
    versions and the source of vitlab's models and of this counter, so an edited model is counted afresh."""
    h = hashlib.sha256(f"{model_json}|{torch.__version__}|{timm.__version__}".encode())
    root = Path(vitlab.__file__).parent
    for f in sorted([*root.joinpath("models").glob("*.py"), Path(__file__)]):
        h.update(f.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitlab" / "flops"
    return cache / f"{h.hexdigest()[:32]}.json"


@functools.lru_cache(maxsize=64)
def _config_flops(model_json: str) -> FlopCount:
    """Counted once per machine: a count is 0.6 s of every run's start-up (vit_micro; more for big models), so it
    is kept as a small JSON of four numbers (read as numbers only) in ``~/.cache/vitlab/flops/``."""
    path = _cache_path(model_json)
    try:
        d = json.loads(path.read_text())
        return FlopCount(forward_flops=int(d["forward_flops"]), train_flops=int(d["train_flops"]),
                         img_size=int(d["img_size"]), by_op={str(k): int(v) for k, v in d["by_op"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    cfg = json.loads(model_json)
    with torch.device("meta"):
        model = build_model(**cfg)
    fc = count_flops(model, int(cfg.get("img_size") or 224), int(cfg.get("in_chans") or 3))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(fc)))
        os.replace(tmp, path)
    except OSError:  # a read-only home: count again next time
        pass
    return fc


def model_config_flops(model_cfg: Mapping[str, Any], img_size: int | None = None) -> FlopCount:
    """FLOPs of the model a ``conf/model`` entry builds, at ``img_size`` (default: ``model.img_size``)."""
    cfg = dict(model_cfg)
    if img_size is not None:
        cfg["img_size"] = int(img_size)
    cfg["img_size"] = int(cfg.get("img_size") or 224)
    return _config_flops(json.dumps(cfg, sort_keys=True, default=str))


def flops_stats(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The compute keys every logger records next to the parameter count (empty, with a warning, if counting fails)."""
    try:
        fc = model_config_flops(model_cfg)
    except Exception as e:  # noqa: BLE001 - accounting must never stop a training run
        log.warning("FLOP counting failed for model %s (%s: %s); compute keys are not logged",
                    model_cfg.get("name"), type(e).__name__, e)
        return {}
    return {
        M.MODEL_GMACS: round(fc.gmacs, 4),
        M.MODEL_GFLOPS: round(fc.gflops, 4),
        M.MODEL_TRAIN_GFLOPS: round(fc.train_gflops, 4),
    }


__all__ = ["FlopCount", "count_flops", "flops_stats", "model_config_flops", "table6_rows"]


def flops_table(models: list[str] | None = None, img_size: int = 224, num_classes: int = 1000) -> list[dict[str, Any]]:
    """Params and per-image compute of every ``conf/model`` entry (or ``models``) at one resolution."""
    register_resolvers()
    names = models or sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
    rows = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name in names:
            cfg = compose("train", [f"model={name}", f"data.img_size={img_size}"])
            m = OmegaConf.to_container(cfg.model, resolve=True)
            m.update(num_classes=num_classes, img_size=img_size)
            with torch.device("meta"):
                params = count_params(build_model(**m))
            fc = model_config_flops(m)
            rows.append({"model": name, "params_m": params / 1e6, "gmacs": fc.gmacs, "train_gflops": fc.train_gflops})
    GlobalHydra.instance().clear()
    return rows


def table6_rows(keys: list[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Table 6's exaFLOPs beside vitlab's count for the same run: training FLOPs per image of the model as its
    ``conf/model`` entry builds it (224 px, 1000 classes) x JFT-300M's images (``vitlab.paper.JFT_IMAGES``) x epochs."""
    rows = []
    for model, epochs in keys or list(paper.TABLE6):
        (r,) = flops_table([model], img_size=224, num_classes=1000)
        ours = r["train_gflops"] * 1e9 * paper.JFT_IMAGES * epochs / 1e18
        ref = paper.TABLE6[(model, epochs)]["exaflops"]
        rows.append({"model": model, "epochs": epochs, "exaflops": ours, "paper": ref, "ratio": ours / ref})
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m vitlab.inspection.flops [img_size]``: the params and GMACs table of every model config;
    ``python -m vitlab.inspection.flops table6``: Table 6's exaFLOPs beside vitlab's count (about 2 minutes)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "table6":
        print("| model | epochs | exaFLOPs (vitlab) | Table 6 | vitlab / paper |\n|---|---|---|---|---|")
        for r in table6_rows():
            print(f"| {r['model']} | {r['epochs']} | {r['exaflops']:.1f} | {r['paper']} | {r['ratio']:.3f} |")
        return
    size = int(argv[0]) if argv else 224
    print(f"| model | params (M) | GMACs fwd @{size} | train GFLOPs/img |\n|---|---|---|---|")
    for r in flops_table(img_size=size):
        print(f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {r['train_gflops']:.1f} |")


if __name__ == "__main__":
    main()
