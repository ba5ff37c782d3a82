"""``extras``: what lightning-hydra-template users expect at the start of a run (conf/extras/default.yaml).

- ``extras.print_config``: the resolved config as a rich tree on the console, and as plain text in
  ``<run dir>/config_tree.log`` (so a run's settings can be read without Python);
- ``extras.enforce_tags``: refuse to start with empty ``tags`` (a study is found by its tags later);
- ``extras.ignore_warnings``: silence Python warnings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from vitlab.errors import ConfigError
from vitlab.utils.plain import job_config

log = logging.getLogger(__name__)

#: the sections printed first, in this order; the rest follow in config order
PRINT_ORDER = ("data", "model", "optim", "module", "callbacks", "logger", "trainer", "paths", "extras")


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
def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None, config: dict | None = None) -> None:
    """Print the tree; with ``save_to``, also write it (no colours) to ``<save_to>/config_tree.log``."""
    tree = config_tree(cfg, config=config)
    rich.print(tree)
    if save_to is not None:
        out = Path(save_to) / "config_tree.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            Console(file=f, no_color=True, width=120).print(tree)


def apply_extras(cfg: DictConfig, config: dict | None = None) -> None:
    """Apply ``cfg.extras`` (absent or null: nothing happens); ``config``: the job's ``job_config(cfg)``."""
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
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=cfg.paths.output_dir, config=config)
