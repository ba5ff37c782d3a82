"""What every vitlab LightningModule shares: the run config stored in checkpoints, the optimiser set-up, the
loss/accuracy trackers and ``val/acc_best``."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn
from torchmetrics import MaxMetric, MeanMetric

from vitlab import metrics as M
from vitlab.models import count_params
from vitlab.optim import build_optimizer, build_scheduler, check_optim_cfg


class VitlabModule(L.LightningModule):
    """Base of the objectives (supervised, masked patch prediction); ``hparams.optim`` is the optim config dict."""

    #: the name ``vitlab.runs.OBJECTIVES`` reads this class back by (a checkpoint names no class itself)
    OBJECTIVE: str = ""

    def __init__(self, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        if optim is not None:
            check_optim_cfg(optim)  # the one check, before the network is built: a wrong lr fails now
        #: the run's resolved config (plain containers, no ``_target_``), stored in every checkpoint for
        #: ``vitlab.runs.read_run``
        self.run_config: dict[str, Any] | None = None
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    @property
    def num_params(self) -> int:
        return count_params(self.net)

    def on_train_start(self) -> None:
        # Sanity-check metrics must not leak into the best-so-far tracker.
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        # every objective logs `val/acc` from a torchmetrics metric (synced across processes); the best is synced too
        self.val_acc_best(self.val_acc.compute())
        self.log(M.VAL_ACC_BEST, self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def optimized_module(self) -> nn.Module:
        """The module whose parameters the optimiser updates (timm's no-weight-decay list comes from it)."""
        return self.net

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vitlab_objective"] = self.OBJECTIVE
        if self.run_config is not None:
            checkpoint["vitlab_config"] = self.run_config
        classes = getattr(getattr(self._trainer, "datamodule", None), "classes", None) if self._trainer else None
        if classes is not None:  # the dataset's class table, for vitlab.predict's labels (plain strings)
            checkpoint["vitlab_classes"] = [str(c) for c in classes]

    def configure_optimizers(self):
        optim_cfg = dict(self.hparams.optim)
        optimizer = build_optimizer(self.optimized_module(), optim_cfg)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = build_scheduler(optimizer, optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
