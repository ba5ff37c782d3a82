"""Cumulative training compute as a logged curve: ``train/exaflops`` (paper Fig. 5's x-axis, Table 6) and
``train/images_seen``, on the steps Lightning writes to the loggers (``trainer.log_every_n_steps``).

How a model's FLOPs are counted (the convention, the norm layers, the marginal cost of one image) is
:mod:`vitlab.inspection.flops`'s; this callback only counts once and accumulates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback

from vitlab import metrics as M
from vitlab.inspection.flops import count_flops, model_config_flops

log = logging.getLogger(__name__)


class ComputeTracker(Callback):
    """Logs cumulative training compute, ``train/exaflops`` (and ``train/images_seen``), on every logging step.

    The per-image training FLOPs are counted once, at the first batch's real resolution, on a meta copy of
    the model (built from the module's ``model`` hyperparameters when present). The images-seen counter is
    saved in checkpoints, so a resumed run continues the same curve.
    """

    def __init__(self, train_flops_per_image: float | None = None) -> None:
        self.train_flops_per_image = train_flops_per_image
        self.images_seen = 0

    def _count(self, pl_module, img_size: int, in_chans: int) -> float:
        hp = getattr(pl_module, "hparams", {})
        model_cfg = hp.get("model") if isinstance(hp, Mapping) else None
        try:
            if isinstance(model_cfg, Mapping) and "family" in model_cfg:
                fc = model_config_flops({**model_cfg, "in_chans": in_chans}, img_size)
            else:
                fc = count_flops(getattr(pl_module, "net", pl_module), img_size, in_chans)
        except Exception as e:  # noqa: BLE001
            log.warning("ComputeTracker could not count FLOPs (%s: %s); train/exaflops is not logged", type(e).__name__, e)
            return 0.0
        return float(fc.train_flops)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not torch.is_tensor(x) or x.dim() != 4:
            return
        if self.train_flops_per_image is None:
            self.train_flops_per_image = self._count(pl_module, int(x.shape[-1]), int(x.shape[1]))
        if not self.train_flops_per_image:
            return
        self.images_seen += int(x.shape[0]) * max(int(trainer.world_size), 1)
        epoch_loop = trainer.fit_loop.epoch_loop
        if not (trainer._logger_connector.should_update_logs or epoch_loop.batch_progress.is_last_batch
                or epoch_loop.done):
            # the logged curve is the same: Lightning writes step metrics only on these steps (log_every_n_steps),
            # the value is cumulative, and the epoch's last batch keeps callback_metrics (metrics.json) current;
            # a log call on every other step cost 1% of vit_micro's step (make bench's per-callback table)
            return
        pl_module.log(M.TRAIN_IMAGES_SEEN, float(self.images_seen), on_step=True, on_epoch=False, reduce_fx="max")
        pl_module.log(M.TRAIN_EXAFLOPS, self.images_seen * self.train_flops_per_image / 1e18, on_step=True, on_epoch=False,
                      reduce_fx="max")

    def state_dict(self) -> dict[str, Any]:
        return {"images_seen": self.images_seen, "train_flops_per_image": self.train_flops_per_image}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = int(state_dict.get("images_seen", 0))
        self.train_flops_per_image = state_dict.get("train_flops_per_image", self.train_flops_per_image)
