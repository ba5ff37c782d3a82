"""W&B, in one place: whether a run logs offline, its run, summaries, offline files and dashboards.

- here (imports neither W&B nor torch, so ``vitlab.tasks`` and ``vitlab.config`` use it before any check):
  :func:`wandb_offline` (also the ``${vitlab.wandb_offline:}`` resolver), :func:`finish_wandb` (every task closes
  its run), and the run id a resumed job continues (:func:`is_run_id`, :func:`resume_wandb_run`);
- :mod:`vitlab.wandb_io.logger`: a training run's W&B run (Lightning's ``WandbLogger``): quiet while offline,
  started before training or dropped, its summaries keeping each metric's best value (the training callback
  ``vitlab.callbacks.wandb_summary.WandbDashboard`` calls it: every Lightning callback lives in ``callbacks/``),
  the run id a checkpoint keeps;
- :mod:`vitlab.wandb_io.run`: the run of a task that logs figures (:func:`~vitlab.wandb_io.run.wandb_run`:
  analyze, report), figures and tables as W&B media;
- :mod:`vitlab.wandb_io.offline`: offline run files (``wandb/offline-run-*``) read back without an account;
- :mod:`vitlab.wandb_io.dashboard`: the scaling dashboard as code (wandb-workspaces).
"""

from __future__ import annotations

import logging
import os
import re
import sys

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

#: a W&B run id
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def wandb_offline() -> bool:
    """W&B is offline unless a key is configured; WANDB_MODE=online|offline forces either way."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    return not os.environ.get("WANDB_API_KEY")


def finish_wandb(exit_code: int = 0) -> None:
    """Always close the W&B run: a second ``wandb.init`` in this process would otherwise reuse it.

    ``wandb.finish`` returns before W&B's background service has written the run file to disk; the
    teardown waits for it, so the offline run is complete when the job returns (reports and sweeps
    read it right away). W&B is never imported here: a job that did not start a run has nothing to close.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
        wandb.teardown(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001
        log.warning("closing the W&B run failed: %s", e)


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a W&B run id (letters, digits, '-', '_'): a checkpoint's stored id names the W&B run
    directory, so nothing else is used."""
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


def resume_wandb_run(cfg: DictConfig, run_id: str | None) -> None:
    """Point the W&B logger at ``run_id`` (the checkpoint's run) so the resumed job continues that run; an id
    the user set (``logger.wandb.id``) wins."""
    wb = OmegaConf.select(cfg, "logger.wandb", default=None)
    if wb is None or not run_id or wb.get("id"):
        return
    with open_dict(cfg):
        wb.id = run_id
        wb.resume = "allow"
