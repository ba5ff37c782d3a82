"""What every vitlab LightningModule shares: the run config stored in checkpoints and the optimiser set-up."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

from vitlab.optim import build_optimizer, build_scheduler


class VitlabModule(L.LightningModule):
    """Base of the objectives (supervised, masked patch prediction); ``hparams.optim`` is the optim config dict."""

    #: the name ``vitlab.runs.OBJECTIVES`` reads this class back by (a checkpoint names no class itself)
    OBJECTIVE: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: the run's resolved config (plain containers, no ``_target_``), stored in every checkpoint for
        #: ``vitlab.runs.read_run``
        self.run_config: dict[str, Any] | None = None

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
