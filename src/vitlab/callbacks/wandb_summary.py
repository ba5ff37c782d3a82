"""W&B run summaries that keep the best value (``val/acc`` by its max, losses by their min), not the last: the
callback of :func:`vitlab.wandb_io.logger.summarise_best` (``conf/callbacks/default.yaml: wandb_dashboard``)."""

from __future__ import annotations

from lightning.pytorch import Callback

from vitlab.wandb_io.logger import summarise_best


class WandbDashboard(Callback):
    """On fit start, make each W&B run summarise ``val/acc`` by its max (and losses by their min)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            summarise_best(trainer)
