"""A NaN or inf loss never trains on silently: stop (default) or skip the step (``callbacks.nonfinite.skip=true``).

The check runs after backward and before the optimizer step, on the loss and on the gradients (after
DDP's all-reduce, so every process takes the same decision). Stopping raises :class:`NonFiniteLossError`
naming the global step, epoch, batch index and the last good checkpoint; the weights and checkpoints
on disk are untouched. Skipping drops the gradients (``p.grad = None``), so the optimizer leaves the
weights, its moments and weight decay exactly as they were; it logs ``train/skipped_nonfinite``.

With ``16-mixed`` precision the gradient scaler already skips overflowing steps: only the loss is checked.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch

from vitlab import metrics as M
from vitlab.errors import NonFiniteLossError

log = logging.getLogger("vitlab.nonfinite")


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    for cb in trainer.checkpoint_callbacks:
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
            if p and os.path.isfile(p):
                return p
    return None


class NonFiniteGuard(L.Callback):
    def __init__(self, skip: bool = False, check_grads: bool = True) -> None:
        self.skip = bool(skip)
        self.check_grads = check_grads
        self.skipped = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    @staticmethod
    def _grads_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """A 0-d bool tensor on the device (no host sync), or None when there are no gradients."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return None
        norms = torch._foreach_norm(grads)
        return torch.isfinite(torch.stack([n.float() for n in norms])).all()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # One host sync per step: the loss and gradient checks are combined on the device and read once.
        checks: list[torch.Tensor] = []
        if self._loss is not None:
            checks.append(torch.isfinite(self._loss).all())
        scaler = "16-mixed" in str(trainer.precision)
        grads_ok = self._grads_finite(optimizer) if self.check_grads and not scaler else None
        if grads_ok is not None:
            checks.append(grads_ok.to(checks[0].device) if checks else grads_ok)
        bad = bool(checks) and not bool(torch.stack(checks).all())
        loss_bad = bad and self._loss is not None and not bool(torch.isfinite(self._loss).all())  # only on the rare bad step
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        loss = float(self._loss) if self._loss is not None and self._loss.numel() == 1 else float("nan")
        epoch_loop = trainer.fit_loop.epoch_loop
        where = (f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch index {epoch_loop.batch_idx}, "
                 f"loss {loss})")
        what = "loss" if loss_bad else "gradients"
        if self.skip:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.skipped += 1
            log.warning("non-finite %s at %s: step skipped (callbacks.nonfinite.skip=true; %d skipped so far)",
                        what, where, self.skipped)
            pl_module.log(M.TRAIN_SKIPPED_NONFINITE, float(self.skipped), on_step=True, on_epoch=False, reduce_fx="max")
            return
        ckpt = last_good_checkpoint(trainer)
        raise NonFiniteLossError(
            f"non-finite {what} at {where}. The weights were not updated with it. Last good checkpoint: "
            f"{ckpt or 'none saved yet'}. Lower optim.lr, check the data of that batch, or set "
            "callbacks.nonfinite.skip=true to skip such steps (each is logged as train/skipped_nonfinite)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
