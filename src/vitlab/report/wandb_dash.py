"""W&B as the dashboard: best-value summaries, figures as ``wandb.Image``, result tables as ``wandb.Table``.

Runs are grouped by study through the logger config (``group=${group}``, ``job_type``, ``tags``: the
sweep configs in ``conf/sweep/`` set them); the scaling keys (model family/variant/patch/params/GFLOPs,
data/train_size, resolution) reach the run config through ``vitlab.train.run_stats``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
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


def log_figures(run, figures: Mapping[str, str | Path], prefix: str = "figures/") -> None:
    """Log PNG files as ``wandb.Image`` under ``prefix + name``."""
    import wandb

    run.log({f"{prefix}{name}": wandb.Image(str(path)) for name, path in figures.items()})


def log_table(run, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Log rows of results (a sweep table, a few-shot table) as one ``wandb.Table``."""
    import wandb

    columns = list(columns or sorted({k for r in rows for k in r}))
    data = [[_cell(r.get(c)) for c in columns] for r in rows]
    run.log({name: wandb.Table(columns=columns, data=data)})


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
