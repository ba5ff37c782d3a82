"""Optimisers and learning-rate schedules from ``conf/optim``.

The paper's recipes (App. B.1): pretraining = Adam(0.9, 0.999), weight decay 0.1, linear warmup
then linear decay; fine-tuning = SGD momentum 0.9, no weight decay, cosine decay; both clip the
global gradient norm at 1 (``optim.grad_clip``, handed to the Trainer).  Parameter groups (no decay
on biases, norms, position embeddings and tokens) come from timm's ``create_optimizer_v2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# vitlab name -> timm opt name.  timm's "sgd" is Nesterov; the paper's fine-tuning SGD is plain momentum.
OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "momentum", "nesterov": "sgd", "lamb": "lamb"}
DECAYS = ("cosine", "linear", "constant")


class OptimConfigError(ValueError):
    pass


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise OptimConfigError(f"optim.name={name!r} is not one of {sorted(OPTIMIZERS)}")
    lr = float(cfg["lr"])
    if not lr > 0 or not math.isfinite(lr):
        raise OptimConfigError(f"optim.lr={cfg['lr']} must be a positive number")
    wd = float(cfg.get("weight_decay", 0.0))
    if wd < 0:
        raise OptimConfigError(f"optim.weight_decay={wd} must be >= 0")
    kwargs: dict[str, Any] = {}
    if name in ("adam", "adamw", "lamb"):
        kwargs["betas"] = tuple(cfg.get("betas", (0.9, 0.999)))
        kwargs["eps"] = float(cfg.get("eps", 1e-8))
    if cfg.get("fused") and name in ("adam", "adamw", "sgd", "nesterov"):
        kwargs["fused"] = True
        kwargs["foreach"] = None
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
    """``optim.warmup`` is a step count (int >= 1) or a fraction of training (float < 1)."""
    w = cfg.get("warmup", 0) or 0
    if isinstance(w, float) and w < 1.0:
        if w < 0:
            raise OptimConfigError(f"optim.warmup={w} must be >= 0")
        return int(round(w * total_steps))
    if int(w) < 0:
        raise OptimConfigError(f"optim.warmup={w} must be >= 0")
    return min(int(w), total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, decay: str, end_factor: float = 0.0) -> float:
    """Multiplier on the base lr at ``step``: linear warmup from 0, then ``decay`` down to ``end_factor``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise OptimConfigError(f"optim.decay={decay!r} is not one of {DECAYS}")
    return end_factor + (1.0 - end_factor) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int):
    decay = cfg.get("decay", "cosine")
    if decay not in DECAYS:
        raise OptimConfigError(f"optim.decay={decay!r} is not one of {DECAYS}")
    total = max(1, int(total_steps))
    warm = warmup_steps(cfg, total)
    end = float(cfg.get("end_lr_factor", 0.0))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm, decay, end))
