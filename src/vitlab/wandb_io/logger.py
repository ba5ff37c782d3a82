"""The training logger's W&B run (Lightning's ``WandbLogger``): W&B quiet while offline, the run started before
training (or dropped), its summaries keeping each metric's best value, and the run id a checkpoint keeps.

Runs are grouped by study through the logger config (``group=${group}``, ``job_type``, ``tags``: the sweep configs
in ``conf/sweep/`` set them).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from typing import Any

import wandb
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.wandb_io import wandb_offline

log = logging.getLogger(__name__)

#: (metric, summary) pairs: the run summary keeps the best value, not the last one
SUMMARIES: tuple[tuple[str, str], ...] = (
    (M.VAL_ACC, "max"),
    (M.VAL_ACC_BEST, "max"),
    (M.VAL_LOSS, "min"),
    (M.TRAIN_LOSS, "min"),
    (M.TRAIN_EXAFLOPS, "max"),
)


def quiet_offline(cfg: DictConfig | None) -> None:
    """Offline, W&B's ~27 console lines (banner, run history, sync hint) repeat what vitlab prints;
    `wandb sync <run>/wandb/offline-run-*` uploads the run later. WANDB_SILENT=false shows them."""
    if not wandb_offline() or "wandb" not in ((cfg or {}).get("logger") or {}):
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    # wandb.setup() below reads W&B's settings once, before the logger sets its own mode: without a key and
    # without WANDB_MODE, it would settle on online mode and every run would fail with "No API key configured"
    os.environ.setdefault("WANDB_MODE", "offline")
    # wandb.init reads its settings from the environment only after it has warned about the `anonymous`
    # argument Lightning's WandbLogger always passes; set W&B up first so that warning is silent too. A W&B
    # that fails here is reported by the logger builder (training goes on without it).
    try:
        wandb.setup()
    except Exception as e:  # noqa: BLE001 - any failure is the logger builder's to report
        log.debug("wandb.setup() failed: %s", e)


def start_logger(lg) -> bool:
    """Start a W&B logger's run now (so a broken W&B fails here, not mid-training); False, with a warning, if it
    cannot start. Other loggers have nothing to start."""
    try:
        if isinstance(lg, WandbLogger):
            _ = lg.experiment
        return True
    except Exception as e:  # noqa: BLE001 - a dashboard must never kill a training run
        name = getattr(lg, "vitlab_name", type(lg).__name__)
        warnings.warn(f"logger '{name}' failed to start ({type(e).__name__}: {e}); training goes on without it",
                      stacklevel=3)
        return False


def logger_runs(trainer) -> list[Any]:
    """The W&B run objects behind a trainer's WandbLoggers (none when W&B is off or failed to start)."""
    runs = []
    for lg in getattr(trainer, "loggers", []) or []:
        if isinstance(lg, WandbLogger):
            try:
                runs.append(lg.experiment)
            except Exception as e:  # noqa: BLE001 - a dashboard must never stop training
                log.warning("W&B run unavailable (%s); dashboard summaries skipped", e)
    return runs


def summarise_best(trainer, summaries: Iterable[tuple[str, str]] = SUMMARIES) -> None:
    """Make each W&B run of ``trainer`` keep the best value of each metric as its summary (``val/acc``: its max),
    not the last; a W&B that fails here only loses the summaries."""
    for run in logger_runs(trainer):
        try:
            for name, summary in summaries:
                run.define_metric(name, summary=summary)
        except Exception as e:  # noqa: BLE001 - a dashboard must never stop training
            log.warning("wandb define_metric failed: %s", e)


def logger_run_id(trainer) -> str | None:
    """The id of the trainer's W&B run (a checkpoint keeps it so that a resumed job continues that run)."""
    return next((str(lg.version) for lg in trainer.loggers if isinstance(lg, WandbLogger) and lg.version), None)
