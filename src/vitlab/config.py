"""Where the configs live, the resolvers they use, and the checks that run before any work starts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def conf_dir() -> str:
    """``conf/`` from any working directory: $VITLAB_CONF_DIR, the repo checkout, or the installed copy."""
    env = os.environ.get("VITLAB_CONF_DIR")
    if env:
        return str(Path(env).resolve())
    here = Path(__file__).resolve().parent
    for cand in (here.parents[1] / "conf", here / "conf"):
        if (cand / "train.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(
        f"vitlab's conf/ directory was not found next to {here}; set VITLAB_CONF_DIR to the repo's conf/ folder"
    )


CONF_DIR = conf_dir()

#: per-process suffix that keeps two jobs started in the same second apart
_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


def wandb_offline() -> bool:
    """W&B is offline unless a key is configured; WANDB_MODE=online|offline forces either way."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    return not os.environ.get("WANDB_API_KEY")


def register_resolvers() -> None:
    from vitlab.data.catalog import RESOLVERS as DATA_RESOLVERS  # class counts from data.task / data.root

    for name, fn in (("vitlab.uid", lambda: _UID), ("vitlab.wandb_offline", wandb_offline), *DATA_RESOLVERS.items()):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what was expected."""


def _positive(cfg: DictConfig, key: str, allow_zero: bool = False, optional: bool = False) -> None:
    val = OmegaConf.select(cfg, key)
    if val is None and optional:
        return
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise ConfigError(f"{key}={val!r} must be a number, got {type(val).__name__}")
    if val < 0 or (val == 0 and not allow_zero):
        raise ConfigError(f"{key}={val} must be {'>= 0' if allow_zero else '> 0'}")


#: every ``precision`` Lightning accepts (lightning/fabric/plugins/precision/precision.py: _PRECISION_INPUT),
#: its aliases included: 16 / "16" -> 16-mixed, "bf16" -> bf16-mixed, 32 / "32", 64 / "64" (LHT's AMP test uses 16)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "16", "bf16", "64")


def validate_train_cfg(cfg: DictConfig) -> None:
    """Fail fast, before data or models are built, on values that would fail (or mislead) hours later."""
    _positive(cfg, "optim.lr")
    _positive(cfg, "optim.weight_decay", allow_zero=True)
    _positive(cfg, "optim.grad_clip", optional=True)
    _positive(cfg, "data.batch_size")
    _positive(cfg, "data.img_size")
    _positive(cfg, "model.num_classes")
    mt = cfg.trainer.get("max_epochs")
    if mt is not None and mt != -1:
        _positive(cfg, "trainer.max_epochs")
    if str(cfg.trainer.get("precision")) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r} is not one of {PRECISIONS}")
    patch, img = cfg.model.get("patch_size"), cfg.model.get("img_size")
    if cfg.model.get("family") == "vit" and patch and img and int(img) % int(patch):
        raise ConfigError(
            f"model.patch_size={patch} does not divide the image size {img} (model.img_size, from data.img_size): "
            f"use a multiple of {patch}, e.g. data.img_size={max(patch, img // patch * patch)}"
        )


def to_plain(cfg: Any) -> Any:
    """A resolved, plain-container copy (safe for ``torch.load(weights_only=True)`` and JSON)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's resolved config as plain containers, without Hydra's own ``hydra`` node, secrets masked."""
    from vitlab.utils.secrets import redact

    return redact({k: v for k, v in to_plain(cfg).items() if k != "hydra"})


def compose_job(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` exactly as ``python -m vitlab.<task> <overrides>`` would, as a job whose
    output directory is ``output_dir`` (for running a task in-process: the benchmark, tests, notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

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
