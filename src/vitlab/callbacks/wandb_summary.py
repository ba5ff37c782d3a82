"""W&B run summaries that keep the best value (``val/acc`` by its max, losses by their min), not the last.

Runs are grouped by study through the logger config (``group=${group}``, ``job_type``, ``tags``: the
sweep configs in ``conf/sweep/`` set them). Logging figures and tables to a run is
:mod:`vitlab.utils.wandb_io`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from lightning.pytorch import Callback

from vitlab import metrics as M

log = logging.getLogger(__name__)

#: (metric, summary) pairs: the run summary keeps the best value, not the last one
SUMMARIES: tuple[tuple[str, str], ...] = (
    (M.VAL_ACC, "max"),
    (M.VAL_ACC_BEST, "max"),
    (M.VAL_LOSS, "min"),
    (M.TRAIN_LOSS, "min"),
    (M.TRAIN_EXAFLOPS, "max"),
)


def wandb_runs(trainer) -> list[Any]:
    """The W&B run objects behind a trainer's WandbLoggers (none when W&B is off or failed to start)."""
    from lightning.pytorch.loggers import WandbLogger

    runs = []
    for lg in getattr(trainer, "loggers", []) or []:
        if isinstance(lg, WandbLogger):
            try:
                runs.append(lg.experiment)
            except Exception as e:  # noqa: BLE001 - a dashboard must never stop training
                log.warning("W&B run unavailable (%s); dashboard summaries skipped", e)
    return runs


def define_summaries(run, summaries: Iterable[tuple[str, str]] = SUMMARIES) -> None:
    for name, summary in summaries:
        run.define_metric(name, summary=summary)


class WandbDashboard(Callback):
    """On fit start, make each W&B run summarise ``val/acc`` by its max (and losses by their min)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        for run in wandb_runs(trainer):
            try:
                define_summaries(run)
            except Exception as e:  # noqa: BLE001
                log.warning("wandb define_metric failed: %s", e)

