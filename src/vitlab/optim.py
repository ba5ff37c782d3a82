"""Optimisers and learning-rate schedules from ``conf/optim``.

The paper's recipes (App. B.1, numbers in ``vitlab.paper``): pretraining = ``adam_decoupled``, i.e.
flax.optim.Adam(0.9, 0.999) whose weight decay is decoupled and relative to the lr,
``p <- p - lr * (adam_update + wd * p)``, applied to kernels only (big_vision); linear warmup then
linear (cosine on ImageNet) decay. Fine-tuning = SGD momentum 0.9, no weight decay, cosine decay.
Parameter groups of the other optimisers (no decay on biases, norms, position embeddings and tokens)
come from timm's ``create_optimizer_v2``.  The schedule is laid out over the run's real number of
optimiser steps; a warmup longer than the run is an error, not a silent cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from vitlab.checks import check_positive
from vitlab.errors import OptimConfigError

# vitlab name -> timm opt name.  timm's "sgd" is Nesterov; the paper's fine-tuning SGD is plain momentum.
# ``adam`` is torch.optim.Adam: L2 added to the gradient, *not* the paper's decay (use ``adam_decoupled``).
OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "momentum", "nesterov": "sgd", "lamb": "lamb",
              "adam_decoupled": "adamw"}
#: the layers whose ``weight`` is a "kernel" in flax/big_vision terms (the only tensors ``adam_decoupled`` decays)
KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DECAYS = ("cosine", "linear", "constant", "step")


def kernel_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: the kernels (weights of Linear/Conv layers, patch embedding and head included) decayed by
    ``weight_decay``; everything else (biases, norm scales, position embeddings, class/mask tokens) not.

    big_vision's ``decay only kernels`` rule, by layer type rather than by name or rank, so a token or a
    position embedding (3-D tensors) is never decayed by accident.
    """
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, KERNEL_LAYERS) and m.weight is not None}
    decay, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if id(p) in kernels else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def check_optim_cfg(cfg: Mapping[str, Any]) -> None:
    """The one check of an optim config (name, lr, weight decay, clipping, schedule shape), in the words of every
    other number check (:mod:`vitlab.checks`). The objective runs it when it is built (``VitlabModule``), before
    the network: a wrong value fails at start-up, not when the optimiser is made at fit start. A warmup longer
    than the run is refused once the run's length is known (:func:`warmup_steps`)."""
    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise OptimConfigError(f"optim.name={name!r} is not one of {sorted(OPTIMIZERS)}")
    check_positive("optim.lr", cfg.get("lr"))
    check_positive("optim.weight_decay", cfg.get("weight_decay", 0.0), allow_zero=True)
    check_positive("optim.grad_clip", cfg.get("grad_clip"), optional=True)
    if cfg.get("decay", "cosine") not in DECAYS:
        raise OptimConfigError(f"optim.decay={cfg.get('decay')!r} is not one of {DECAYS}")
    check_positive("optim.warmup", cfg.get("warmup", 0) or 0, allow_zero=True)
    if cfg.get("decay") == "step":
        at = list(cfg.get("decay_at") or [])
        if not at or any(not 0.0 < float(f) < 1.0 for f in at) or at != sorted(at):
            raise OptimConfigError(f"optim.decay=step needs optim.decay_at: increasing fractions of the run in (0, 1) "
                                   f"where the lr drops (BiT-HyperRule: [0.3, 0.6, 0.9]), got {at}")
        check_positive("optim.decay_factor", cfg.get("decay_factor"))


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser of an optim config that :func:`check_optim_cfg` accepted (the objective checked it)."""
    name = cfg.get("name", "adamw")
    lr, wd = float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    kwargs: dict[str, Any] = {}
    if name in ("adam", "adamw", "lamb"):
        kwargs["betas"] = tuple(cfg.get("betas", (0.9, 0.999)))
        kwargs["eps"] = float(cfg.get("eps", 1e-8))
    if cfg.get("fused") and name in ("adam", "adamw", "sgd", "nesterov", "adam_decoupled"):
        kwargs["fused"] = True
        kwargs["foreach"] = None
    if name == "adam_decoupled":
        # torch's AdamW step is p <- p - lr * wd * p - lr * m_hat / (sqrt(v_hat) + eps), with p the value before
        # the step: exactly flax.optim.Adam's new_param = param - lr * (update + weight_decay * param).
        return torch.optim.AdamW(kernel_param_groups(model, wd), lr=lr, **kwargs)
    return create_optimizer_v2(
        model,
        opt=OPTIMIZERS[name],
        lr=lr,
        weight_decay=wd,
        momentum=float(cfg.get("momentum", 0.9)),
        filter_bias_and_bn=bool(cfg.get("no_decay_on_norm_and_bias", True)),
        **kwargs,
    )


def warmup_steps(cfg: dict[str, Any], total_steps: int) -> int:
    """``optim.warmup`` (>= 0: :func:`check_optim_cfg`) is a step count (int) or a fraction of training (float < 1).

    A step count longer than the run is an error: capping it silently would give a run that is all warmup and
    never decays (the paper's 10k warmup steps sit inside runs of 100k+ steps).
    """
    w = cfg.get("warmup", 0) or 0
    if isinstance(w, float) and w < 1.0:
        return int(round(w * total_steps))
    if int(w) > total_steps:
        raise OptimConfigError(
            f"optim.warmup={int(w)} steps is longer than the whole run ({total_steps} optimiser steps, from "
            "trainer.max_steps, or trainer.max_epochs x batches per epoch / trainer.accumulate_grad_batches): "
            f"lower optim.warmup (at most {total_steps}, or a fraction such as optim.warmup=0.05), or train longer"
        )
    return int(w)


def lr_factor(step: int, total_steps: int, warmup: int, decay: str, end_factor: float = 0.0,
              decay_at: Sequence[float] = (), decay_factor: float = 0.1) -> float:
    """Multiplier on the base lr at optimiser step ``step`` (0 = the first update), the rule of vit_jax's
    ``utils.create_learning_rate_schedule``: ``decay`` from 1 down to ``end_factor`` over the steps after the
    warmup (linear: ``end + (1 - end)(1 - progress)``; cosine: to ``end_factor``, 0 in vit_jax), times the linear
    warmup ``min(1, step / warmup)``, which starts at 0 as optax's step count does.  ``step``: BiT-HyperRule's
    staircase (big_transfer ``bit_hyperrule.get_lr``): times ``decay_factor`` for every boundary ``round(f x
    total_steps)`` of ``decay_at`` strictly below ``step``. ``decay``: one of :data:`DECAYS`
    (:func:`check_optim_cfg`)."""
    if decay == "constant":
        shape = 1.0
    elif decay == "step":
        shape = decay_factor ** sum(1 for f in decay_at if round(f * total_steps) < step)
    else:
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
        shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        shape = end_factor + (1.0 - end_factor) * shape
    return shape * min(1.0, step / warmup) if warmup else shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int):
    """``optim.linear_end``: where a linear decay ends, as an lr (vit_jax's ``linear_end=1e-5``; the paper recipes
    set it from ``vitlab.paper``); otherwise the decay ends at ``optim.end_lr_factor`` x the base lr."""
    decay = cfg.get("decay", "cosine")
    total = max(1, int(total_steps))
    warm = warmup_steps(cfg, total)
    end = float(cfg.get("end_lr_factor", 0.0) or 0.0)
    linear_end = cfg.get("linear_end")
    if linear_end is not None and decay == "linear":
        if end:
            raise OptimConfigError(f"optim.linear_end={linear_end} and optim.end_lr_factor={end} both say where the "
                                   "decay ends: set one of them (the other to null / 0)")
        base = float(optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"]))
        end = float(linear_end) / base if base > 0 else 0.0
    at, factor = tuple(float(f) for f in cfg.get("decay_at") or ()), float(cfg.get("decay_factor") or 0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm, decay, end, at, factor))
