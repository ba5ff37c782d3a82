"""The resolvers vitlab's configs use, and :func:`compose_job` / :func:`compose_group` (the conf folder itself:
``vitlab.CONF_DIR``).

Importing this module registers the resolvers (``${vitlab.paper:...}``, ``${vitlab.uid:}``, ...): every task
imports it through :mod:`vitlab.tasks`, and code that composes a config outside a task (tests, notebooks)
imports :func:`compose_job` from here. Each object checks its own arguments where it is
built; nothing here validates a run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import CONF_DIR
from vitlab.data.catalog import RESOLVERS as DATA_RESOLVERS  # class counts from data.task / data.root
from vitlab.paper import RESOLVERS as PAPER_RESOLVERS  # ${vitlab.paper:table3,<model>,<data>,lr}
from vitlab.wandb_io import wandb_offline

#: pid -> that process's run-dir suffix (:func:`run_uid`)
_UIDS: dict[int, str] = {}


def run_uid() -> str:
    """``${vitlab.uid:}``: the suffix that keeps two jobs started in the same second apart. The same for every use
    in one process, made at its first use in each process: a process forked from another (a launcher, a test)
    gets its own, where one made at import was inherited and two forked jobs shared a run directory."""
    pid = os.getpid()
    if pid not in _UIDS:
        _UIDS[pid] = f"{pid % 100000:05d}{secrets.token_hex(2)}"
    return _UIDS[pid]


def prelogits_width(family: str, variant: str) -> int | None:
    """``${vitlab.prelogits_width:${model.family},${model.variant}}``: the paper's pretraining pre-logits layer is
    as wide as the transformer (§3.1, vision_transformer issue #2: 768 for ViT-B); ResNets (BiT) have none."""
    # Lazy on purpose: vitlab.models imports torch and timm, and this module is imported by every task before
    # its config is checked. Measured on the 2-core machine: `import vitlab.config` takes 2.1 s with this import
    # here and 16-22 s with it at the top, so a refused command (a literal secret, a busy run directory) would
    # wait for torch before answering.
    from vitlab.models import registry

    return registry.get(family).prelogits_width(variant)


def register_resolvers() -> None:
    """Register vitlab's resolvers with OmegaConf (once per process; importing this module does it)."""
    for name, fn in (("vitlab.uid", run_uid), ("vitlab.wandb_offline", wandb_offline), *DATA_RESOLVERS.items(),
                     *PAPER_RESOLVERS.items(), ("vitlab.prelogits_width", prelogits_width)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def compose_job(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` exactly as ``python -m vitlab.<task> <overrides>`` would, as a job whose
    output directory is ``output_dir`` (for running a task in-process: the benchmark, tests, notebooks)."""
    output_dir = Path(output_dir)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "0"
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def compose_group(group: str, option: str) -> DictConfig:
    """``conf/<group>/<option>.yaml`` exactly as ``<group>=<option>`` composes it on the command line (its defaults
    list merged by Hydra), unresolved and open to new keys: what a checkpoint's stored section is merged onto
    (``vitlab.runs.read``). A running Hydra app (the task that asks) is left as it was."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            composed = compose(overrides=[f"+{group}={option}"])
    finally:
        restore_gh_from_backup(backup)
    return OmegaConf.create(OmegaConf.to_container(composed[group], resolve=False))


register_resolvers()
