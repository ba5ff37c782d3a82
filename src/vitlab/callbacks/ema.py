"""Polyak averaging of the weights (paper §4.1 / Table 2: "Polyak & Juditsky averaging with a factor of 0.9999").

A thin layer over Lightning's ``EMAWeightAveraging``, which already swaps the averaged weights in for
validation, saves them as the checkpoint's ``state_dict`` and copies them into the model when training
ends. So when EMA is on, everything that evaluates (``val/*``, the best-checkpoint ``test/*``,
``vitlab.evaluate``, fine-tuning from the checkpoint) sees the averaged weights.

vitlab adds:

- the paper's factor as the default (0.9999), and an optional timm-style warm-up of the factor,
  ``min(decay, (1 + n) / (10 + n))``, so short CPU runs average something other than the initialisation;
- a fix for evaluation: Lightning's callback, when a checkpoint is loaded *outside* fitting (``trainer.test``
  on the best checkpoint after ``fit``), would put the raw weights back; here loading for evaluation keeps
  the averaged ``state_dict``.

Enable with ``callbacks=ema`` (``conf/callbacks/ema.yaml``) or ``+callbacks.ema._target_=vitlab.callbacks.ema.EMA``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


def ema_avg_fn(decay: float, warmup: bool):
    """``AveragedModel`` update: ``avg <- d * avg + (1 - d) * param``; ``n`` = updates so far."""

    def fn(avg: torch.Tensor, param: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        d = decay
        if warmup:
            n = float(num_averaged)
            d = min(decay, (1.0 + n) / (10.0 + n))
        return avg * d + param * (1.0 - d)

    return fn


class EMA(EMAWeightAveraging):
    """Exponential moving average of all parameters and buffers of the LightningModule."""

    def __init__(self, decay: float = 0.9999, warmup: bool = False, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None, device: str | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay} must be in (0, 1); the paper uses 0.9999")
        if int(update_every_n_steps) < 1:
            raise ValueError(f"callbacks.ema.update_every_n_steps={update_every_n_steps} must be >= 1")
        super().__init__(device=device, decay=decay, update_every_n_steps=int(update_every_n_steps),
                         update_starting_at_step=update_starting_at_step)
        self.decay, self.warmup = float(decay), bool(warmup)
        # EMAWeightAveraging fixes avg_fn from `decay`; ours also knows the warm-up.
        self._kwargs["avg_fn"] = ema_avg_fn(self.decay, self.warmup)

    @property
    def average_model(self):
        return self._average_model

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Only resuming a fit restores the raw weights next to the average; evaluating keeps the average.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
