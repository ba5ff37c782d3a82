"""Turn the name-keyed ``logger`` and ``callbacks`` config sections into objects."""

from __future__ import annotations

import logging
import warnings

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig, OmegaConf

from vitlab.utils.secrets import redact
from vitlab.wandb_io.logger import start_logger

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
    return sorted(out, key=lambda cb: isinstance(cb, WeightAveraging))


#: the extra of pyproject.toml that installs a logger's package, by the logger's config name
LOGGER_EXTRAS = {"tensorboard": "tensorboard"}


def build_loggers(cfg: DictConfig | None, start: bool = True) -> list:
    """Instantiate each logger and start its W&B run (``start=False``: later, by :func:`start_loggers`, once the
    Trainer has accepted its arguments); a logger whose package is missing, or whose W&B run fails to start, is
    skipped with one warning (naming the extra to install) and training goes on.

    Each logger's arguments are resolved first and then masked (:func:`vitlab.utils.secrets.redact`): a W&B run
    name, group or tags such as ``${oc.env:WANDB_API_KEY}`` would otherwise carry the key into the run file.
    """
    out = []
    for name, c in (cfg or {}).items():
        if c is None or "_target_" not in c:
            continue
        try:
            lg = instantiate(OmegaConf.create(redact(OmegaConf.to_container(c, resolve=True))))
        except Exception as e:  # noqa: BLE001 - a dashboard must never kill a training run
            missing = e if isinstance(e, ImportError) else e.__cause__  # Hydra wraps what the logger raised
            if isinstance(missing, ImportError):
                extra = LOGGER_EXTRAS.get(str(name))
                fix = f": install it with pip install -e '.[{extra}]' (the `{extra}` extra)" if extra else ""
                warnings.warn(f"logger '{name}' is not available ({missing}){fix}; training goes on without it",
                              stacklevel=2)
                continue
            warnings.warn(f"logger '{name}' failed to start ({type(e).__name__}: {e}); training goes on without it",
                          stacklevel=2)
            continue
        lg.vitlab_name = str(name)
        if not start or start_logger(lg):
            out.append(lg)
    return out


def start_loggers(trainer: L.Trainer) -> list:
    """Start the W&B run of each W&B logger now, so a broken W&B fails here and not mid-training: one that fails is
    dropped with a warning (training goes on), and with no logger left the callbacks that need one are dropped."""
    kept = [lg for lg in trainer.loggers if start_logger(lg)]
    if len(kept) != len(trainer.loggers):
        trainer.loggers = kept
        if not kept:
            for cb in [cb for cb in trainer.callbacks if type(cb).__name__ in NEEDS_LOGGER]:
                log.info("%s dropped: no logger started", type(cb).__name__)
                trainer.callbacks.remove(cb)
    return kept
