"""Turn the name-keyed ``logger`` and ``callbacks`` config sections into objects."""

from __future__ import annotations

import logging
import warnings

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PROGRESS_BARS = ("RichProgressBar", "TQDMProgressBar")
MODEL_SUMMARIES = ("RichModelSummary", "ModelSummary")
#: callbacks that need a logger: Lightning raises MisconfigurationException when the Trainer has none
NEEDS_LOGGER = ("LearningRateMonitor",)


def build_callbacks(cfg: DictConfig | None, trainer_cfg: DictConfig | None = None,
                    has_logger: bool = True) -> list[L.Callback]:
    """Instantiate the configured callbacks; ``trainer.enable_progress_bar=false`` / ``enable_model_summary=false``
    drop the configured bar / summary (Lightning would otherwise still run a summary callback it is given).
    ``has_logger=False`` (``logger=[]``, or a W&B that failed to start with no other logger) drops the LR
    monitor, which Lightning refuses to run without a logger: the run goes on, it only loses the LR curve."""
    enable_progress_bar = (trainer_cfg or {}).get("enable_progress_bar", True)
    enable_model_summary = (trainer_cfg or {}).get("enable_model_summary", True)
    out = []
    for name, c in (cfg or {}).items():
        if c is None or "_target_" not in c:
            continue
        cls = str(c._target_).rsplit(".", 1)[-1]
        if (not enable_progress_bar and cls in PROGRESS_BARS) or (not enable_model_summary and cls in MODEL_SUMMARIES):
            continue
        if not has_logger and cls in NEEDS_LOGGER:
            log.info("callbacks.%s (%s) skipped: no logger is configured or started", name, cls)
            continue
        out.append(instantiate(c))
    # Weight averaging (EMA) swaps the averaged weights in at validation start and back out at validation end.
    # Lightning calls hooks in list order, so it goes last: every callback that reads the weights at validation
    # end (few-shot evaluation) then sees the averaged ones, whatever order the config listed them in.
    from lightning.pytorch.callbacks import WeightAveraging

    return sorted(out, key=lambda cb: isinstance(cb, WeightAveraging))


def build_loggers(cfg: DictConfig | None) -> list:
    """Instantiate each logger; a W&B that is missing or fails to start is skipped with a warning (CSV goes on).

    Each logger's arguments are resolved first and then masked (:func:`vitlab.utils.secrets.redact`): a W&B run
    name, group or tags such as ``${oc.env:WANDB_API_KEY}`` would otherwise carry the key into the run file.
    """
    from omegaconf import OmegaConf

    from vitlab.utils.secrets import redact

    out = []
    for name, c in (cfg or {}).items():
        if c is None or "_target_" not in c:
            continue
        try:
            lg = instantiate(OmegaConf.create(redact(OmegaConf.to_container(c, resolve=True))))
            if "wandb" in str(c._target_).lower():
                _ = lg.experiment  # start the run now, so a broken W&B fails here and not mid-training
            out.append(lg)
        except (ImportError, ModuleNotFoundError) as e:
            warnings.warn(f"logger '{name}' is not available ({e}); training goes on without it", stacklevel=2)
        except Exception as e:  # noqa: BLE001 - a dashboard must never kill a training run
            warnings.warn(f"logger '{name}' failed to start ({type(e).__name__}: {e}); training goes on without it", stacklevel=2)
    return out


def finish_wandb(exit_code: int = 0) -> None:
    """Always close the W&B run: a second ``wandb.init`` in this process would otherwise reuse it.

    ``wandb.finish`` returns before W&B's background service has written the run file to disk; the
    teardown waits for it, so the offline run is complete when the job returns (reports and sweeps
    read it right away).
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
        wandb.teardown(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001
        log.warning("closing the W&B run failed: %s", e)
