"""``extras``: what happens at the start of a run besides the run itself (conf/extras/default.yaml).

- The console stays quiet (:func:`quiet_console`, always): one line per log record, no third-party
  advertisements or known-harmless warnings, W&B silent while it runs offline. What remains is the run's
  identity (:func:`announce_run`), its progress and its final metrics.
- ``extras.print_config``: the resolved config as a rich tree on the console. The tree is always saved as
  plain text in ``<run dir>/config_tree.log``, so a run's settings can be read without Python or a rerun;
  the console shows only the command-line overrides.
- ``extras.enforce_tags``: refuse to start with empty ``tags`` (a study is found by its tags later);
- ``extras.ignore_warnings``: silence every Python warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning
import rich
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from vitlab.errors import ConfigError
from vitlab.utils.plain import job_config
from vitlab.utils.secrets import redact
from vitlab.wandb_io.logger import quiet_offline

log = logging.getLogger(__name__)

#: the sections printed first, in this order; the rest follow in config order
PRINT_ORDER = ("data", "model", "optim", "module", "callbacks", "logger", "trainer", "paths", "extras")

#: Lightning INFO lines that say nothing about this run: an advertisement for Lightning's cloud logger, the
#: note that vitlab's own model summary replaces Lightning's default one, and a step of Lightning's set-up.
LIGHTNING_NOISE = (
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "Loading `train_dataloader` to estimate number of stepping batches",
)

#: warnings raised inside the libraries, about the libraries, that a vitlab user cannot act on
HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)`",  # Lightning's _pytree against torch >= 2.9 (a warning about its own API)
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(msg.startswith(prefix) for prefix in LIGHTNING_NOISE)


_NOISE_FILTER = _DropNoise()


def quiet_console(cfg: DictConfig | None = None) -> None:
    """Each log line once, without advertisements or harmless warnings; W&B silent while offline.

    ``import lightning`` gives its logger a console handler of its own (``INFO: ...``); when Hydra has
    configured the root logger, every Lightning line would print twice, so Lightning's handler goes and its
    records reach the console (and the job's log file) through Hydra's. Idempotent."""
    root_has_handlers = bool(logging.getLogger().handlers)
    lightning_logger = logging.getLogger(lightning.__name__)
    if root_has_handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{message}")
    quiet_offline(cfg)


def config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER, config: dict | None = None):
    """A ``rich.tree.Tree`` with one branch per top-level section (values resolved; secrets masked).
    ``config``: the job's ``job_config(cfg)`` when the caller already has it."""
    plain = job_config(cfg) if config is None else config
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in plain] + [k for k in plain if k not in order]
    for key in keys:
        branch = tree.add(key, style="dim", guide_style="dim")
        val = plain[key]
        text = OmegaConf.to_yaml(OmegaConf.create(val)) if isinstance(val, (dict, list)) else str(val)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    return tree


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None, config: dict | None = None,
                      show: bool = True) -> None:
    """Print the tree (``show``); with ``save_to``, also write it (no colours) to ``<save_to>/config_tree.log``."""
    tree = config_tree(cfg, config=config)
    if show:
        rich.print(tree)
    if save_to is not None:
        out = Path(save_to) / "config_tree.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            Console(file=f, no_color=True, width=120).print(tree)


def command_line_overrides() -> list[str]:
    """The job's command-line overrides (empty outside a Hydra job)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


@rank_zero_only
def announce_run(cfg: DictConfig) -> None:
    """One line of identity: what runs, with which overrides, and where its config and results go."""
    overrides = " ".join(command_line_overrides()) or "none"
    log.info(redact(f"run {cfg.get('run_name', '')} (overrides: {overrides}); outputs and config_tree.log in "
                    f"{cfg.paths.output_dir}"))


def apply_extras(cfg: DictConfig, config: dict | None = None) -> None:
    """Quiet the console, then apply ``cfg.extras`` (absent or null: only the quieting);
    ``config``: the job's ``job_config(cfg)``."""
    quiet_console(cfg)
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings=true: Python warnings are silenced")
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError(
            "tags is empty but extras.enforce_tags=true: name the study, e.g. tags=[baseline,digits] "
            "(or extras.enforce_tags=false)"
        )
    announce_run(cfg)
    print_config_tree(cfg, save_to=cfg.paths.output_dir, config=config, show=bool(extras.get("print_config")))
