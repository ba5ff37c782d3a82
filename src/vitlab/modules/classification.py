"""Supervised image classification: the objective of the paper's pretraining and fine-tuning runs.

Hyperparameters are plain containers (the ``model`` and ``optim`` config sections as dicts), so a
checkpoint loads with ``torch.load(weights_only=True)`` and rebuilds the same network without Hydra.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from vitlab import metrics as M
from vitlab.errors import ConfigError
from vitlab.models import build_model
from vitlab.modules.base import VitlabModule

LOSSES = ("softmax", "sigmoid")


def classification_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy, or the paper's pretraining sigmoid cross-entropy (summed over classes). ``y``: class
    indices (B,), or soft targets (B, K) that sum to 1 per image (MixUp's, :func:`mixup`)."""
    if kind == "softmax":
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if kind == "sigmoid":
        k = logits.shape[-1]
        target = y.to(logits.dtype) if y.dim() == 2 else F.one_hot(y, k).to(logits.dtype)
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / k
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()
    raise ValueError(f"loss={kind!r} is not one of {LOSSES}")


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018) as BiT fine-tunes with it (big_transfer ``bit_pytorch/train.py``, ``mixup_data``):
    one ``lam ~ Beta(alpha, alpha)`` per batch, every image mixed with the one a random permutation pairs it with,
    ``lam x + (1 - lam) x[perm]``; its target the same mix of the one-hot labels (BiT's ``lam CE(y) + (1 - lam)
    CE(y[perm])`` is the cross-entropy of this soft target). Returns (images, soft targets (B, K), lam)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    return lam * x + (1.0 - lam) * x[perm], lam * onehot + (1.0 - lam) * onehot[perm], lam


class ReaLAccuracy(Metric):
    """ImageNet ReaL top-1: a prediction is right if it is in the image's reassessed label set (a (B, K)
    multi-hot); images whose set is empty are left out, as in Beyer et al. 2020."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, real: torch.Tensor) -> None:
        real = real.bool()
        hit = real.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
        keep = real.any(-1)
        self.correct += (hit & keep).sum()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_net(net: torch.nn.Module, compile: bool | str | dict | None) -> torch.nn.Module:
    """``model.compile``: false | true | a ``torch.compile`` mode | a dict of ``torch.compile`` kwargs.

    Compiles in place (``nn.Module.compile``), so parameter names and checkpoints stay those of the eager
    model; compiling an already compiled net is a no-op. Measured effect: docs/performance.md.
    """
    if not compile or getattr(net, "_compiled_call_impl", None) is not None:
        return net
    if compile is True:
        kwargs: dict[str, Any] = {}
    elif isinstance(compile, str):
        if compile not in COMPILE_MODES:
            raise ConfigError(f"model.compile={compile!r} is not true/false or one of {COMPILE_MODES}")
        kwargs = {"mode": compile}
    elif isinstance(compile, dict):
        kwargs = dict(compile)
    else:
        raise ConfigError(f"model.compile={compile!r} must be true/false, a mode {COMPILE_MODES} or a dict of kwargs")
    net.compile(**kwargs)
    return net


def init_head_bias(net: torch.nn.Module, value: float) -> None:
    """Set the bias of the classifier's last linear/1x1-conv layer (timm ``get_classifier``)."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    layers = [m for m in (head.modules() if head is not None else []) if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if not layers or layers[-1].bias is None:
        raise ValueError(f"{type(net).__name__} has no classifier bias to initialise")
    torch.nn.init.constant_(layers[-1].bias, value)


class ClassificationModule(VitlabModule):
    OBJECTIVE = "classification"

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], loss: str = "softmax",
                 label_smoothing: float = 0.0, head_bias_init: float | None = None, mixup_alpha: float = 0.0) -> None:
        super().__init__(optim)
        if loss not in LOSSES:
            raise ConfigError(f"module.loss={loss!r} is not one of {LOSSES}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"module.label_smoothing={label_smoothing} must be in [0, 1)")
        if not (isinstance(mixup_alpha, (int, float)) and math.isfinite(mixup_alpha) and mixup_alpha >= 0):
            raise ConfigError(f"module.mixup_alpha={mixup_alpha!r} must be a number >= 0 (0 = no MixUp; BiT: 0.1)")
        if model.get("num_classes") == 0:
            raise ConfigError("model.num_classes=0: a classifier needs at least one class (data.num_classes)")
        self.save_hyperparameters()
        self.net = build_model(**model)
        self.channels_last = bool(model.get("channels_last", False))  # NHWC for conv nets (docs/performance.md)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        k = int(model["num_classes"])
        self.num_classes = k
        if head_bias_init is None and loss == "sigmoid":
            # Sigmoid heads start at the class prior p = 1/K (big_vision's head_bias_init), not at p = 0.5:
            # otherwise the first epochs only learn to push every logit down.
            head_bias_init = -math.log(max(k - 1, 1))
        if head_bias_init is not None:
            init_head_bias(self.net, head_bias_init)
        acc = lambda top_k=1: MulticlassAccuracy(num_classes=k, top_k=min(top_k, k), average="micro")  # noqa: E731
        self.train_acc, self.val_acc, self.test_acc, self.test_acc5 = acc(), acc(), acc(), acc(5)
        self.test_acc_real = ReaLAccuracy()  # logged only when the test set carries ReaL labels (ImageNet)

    def configure_model(self) -> None:
        compile_net(self.net, self.hparams.model.get("compile", False))  # at fit/test start, once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch):
        x, y = batch[0], batch[1]  # a third item is per-image side data (ImageNet ReaL labels)
        logits = self(x)
        loss = classification_loss(logits, y, self.hparams.loss, self.hparams.label_smoothing)
        return loss, logits.detach(), y

    def training_step(self, batch, batch_idx: int):
        if self.hparams.mixup_alpha > 0:  # BiT-HyperRule's MixUp: the loss on the mixed batch, accuracy on its labels
            x, y = batch[0], batch[1]
            x_mixed, target, _ = mixup(x, y, float(self.hparams.mixup_alpha), self.num_classes)
            logits = self(x_mixed)
            loss = classification_loss(logits, target, self.hparams.loss, self.hparams.label_smoothing)
            logits = logits.detach()
        else:
            loss, logits, y = self._step(batch)
        self.train_acc.update(logits, y)  # update, not __call__: only the epoch value is logged (3.4x cheaper)
        # `train/loss` per step (one name: on_epoch would split it into _step/_epoch), its epoch mean as
        # `train/loss_epoch`; tensors are only synced to the host every `log_every_n_steps`.
        self.train_loss.update(loss.detach(), weight=y.shape[0])
        self.log(M.TRAIN_LOSS, loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log(M.TRAIN_LOSS_EPOCH, self.train_loss, on_step=False, on_epoch=True)
        self.log(M.TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.val_loss.update(loss, weight=y.shape[0])
        self.val_acc.update(logits, y)
        self.log(M.VAL_LOSS, self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(M.VAL_ACC, self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.test_loss.update(loss, weight=y.shape[0])
        self.test_acc.update(logits, y)
        self.test_acc5.update(logits, y)
        self.log(M.TEST_LOSS, self.test_loss, on_step=False, on_epoch=True)
        self.log(M.TEST_ACC, self.test_acc, on_step=False, on_epoch=True)
        self.log(M.TEST_ACC5, self.test_acc5, on_step=False, on_epoch=True)
        if len(batch) > 2:
            self.test_acc_real.update(logits, batch[2])
            self.log(M.TEST_ACC_REAL, self.test_acc_real, on_step=False, on_epoch=True)

