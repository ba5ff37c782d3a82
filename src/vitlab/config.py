"""Where the configs live, the resolvers they use, and the checks that run before any work starts."""

from __future__ import annotations

import numbers
import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError


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


def prelogits_width(family: str, variant: str) -> int | None:
    """``${vitlab.prelogits_width:${model.family},${model.variant}}``: the paper's pretraining pre-logits layer is
    as wide as the transformer (§3.1, vision_transformer issue #2: 768 for ViT-B); ResNets (BiT) have none."""
    from vitlab.models import registry

    return registry.get(family).prelogits_width(variant)


def register_resolvers() -> None:
    from vitlab.data.catalog import RESOLVERS as DATA_RESOLVERS  # class counts from data.task / data.root
    from vitlab.paper import RESOLVERS as PAPER_RESOLVERS  # ${vitlab.paper:table3,<model>,<data>,lr}

    for name, fn in (("vitlab.uid", lambda: _UID), ("vitlab.wandb_offline", wandb_offline), *DATA_RESOLVERS.items(),
                     *PAPER_RESOLVERS.items(), ("vitlab.prelogits_width", prelogits_width)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def check_positive(key: str, val: Any, allow_zero: bool = False, optional: bool = False) -> None:
    """The one check (and wording) for a positive number, whether it comes from a config or a constructor."""
    if val is None and optional:
        return
    if isinstance(val, bool) or not isinstance(val, numbers.Real):
        raise ConfigError(f"{key}={val!r} must be a number, got {type(val).__name__}")
    if val < 0 or (val == 0 and not allow_zero):
        raise ConfigError(f"{key}={val} must be {'>= 0' if allow_zero else '> 0'}")


def _positive(cfg: DictConfig, key: str, allow_zero: bool = False, optional: bool = False) -> None:
    check_positive(key, OmegaConf.select(cfg, key), allow_zero, optional)


#: the seeds numpy (hence ``lightning.seed_everything``) accepts
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: Any, key: str = "seed") -> None:
    """An int numpy can seed with, checked before anything is written (seed_everything fails late, unnamed)."""
    lo, hi = SEED_RANGE
    if seed is None:  # Lightning draws one and logs it
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not lo <= seed <= hi:
        raise ConfigError(f"{key}={seed!r} must be an int from {lo} to {hi} (numpy's seed range), e.g. {key}=42")


def _check_resolution(cfg: DictConfig) -> None:
    """A ViT's patch grid and position embeddings are built for one resolution: the one the data delivers."""
    from vitlab.models import registry

    if not registry.get(cfg.model.get("family")).transformer:
        return  # ResNets pool globally: any resolution works
    img, size, eval_size = cfg.model.get("img_size"), cfg.data.get("img_size"), cfg.data.get("eval_img_size")
    if img is not None and size is not None and img != size:
        raise ConfigError(
            f"model.img_size={img} but data={cfg.data.get('name', '?')} delivers {size} px images "
            f"(data.img_size={size}): a ViT is built for one resolution (patch grid, position embeddings). "
            f"Set data.img_size={img} instead (model.img_size follows data.img_size), or drop the model.img_size "
            f"override to train at {size} px."
        )
    if img is not None and eval_size is not None and img != eval_size:
        raise ConfigError(
            f"data.eval_img_size={eval_size} but the model is built for model.img_size={img}: a ViT evaluates at "
            f"the resolution it is built for. Set data.eval_img_size={img}, or leave it at its default "
            "(${.img_size})."
        )


#: the DataModule arguments :func:`vitlab.data.base.check_data_args` checks
DATA_ARGS = ("batch_size", "eval_batch_size", "img_size", "eval_img_size", "train_size")
#: every ``precision`` Lightning accepts (lightning/fabric/plugins/precision/precision.py: _PRECISION_INPUT),
#: its aliases included: 16 / "16" -> 16-mixed, "bf16" -> bf16-mixed, 32 / "32", 64 / "64" (LHT's AMP test uses 16)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "16", "bf16", "64")


def validate_train_cfg(cfg: DictConfig) -> None:
    """Fail fast, before data or models are built, on values that would fail (or mislead) hours later."""
    from vitlab.optim import check_optim_cfg  # the optimiser runs the same checks when it is built

    check_optim_cfg(cfg.optim)
    check_seed(cfg.get("seed"))
    from vitlab.data.base import check_data_args  # the DataModule runs the same checks when it is built

    check_data_args(**{k: cfg.data.get(k) for k in DATA_ARGS if k in cfg.data})
    _positive(cfg, "model.num_classes")
    mt = cfg.trainer.get("max_epochs")
    if mt is not None and mt != -1:
        _positive(cfg, "trainer.max_epochs")
    if str(cfg.trainer.get("precision")) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r} is not one of {PRECISIONS}")
    _check_resolution(cfg)
    patch, img = cfg.model.get("patch_size"), cfg.model.get("img_size")
    from vitlab.models import registry

    if registry.get(cfg.model.get("family")).pixel_patches and patch and img and int(img) % int(patch):
        raise ConfigError(
            f"model.patch_size={patch} does not divide the image size {img} (model.img_size, from data.img_size): "
            f"use a multiple of {patch}, e.g. data.img_size={max(patch, img // patch * patch)}"
        )


def trainer_world_size(trainer_cfg: Any) -> int:
    """Processes a Trainer config trains on: devices (int, list, "auto", -1) x num_nodes, as Lightning counts them."""
    devices = trainer_cfg.get("devices", 1)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    accel = str(trainer_cfg.get("accelerator", "auto"))
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        n = int(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        n = devices
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        n = -1  # "auto"
    if n == -1:
        import torch

        gpu = accel in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        n = torch.cuda.device_count() if gpu else (os.cpu_count() or 1) if devices == -1 else 1
    if n <= 0:
        raise ConfigError(f"trainer.devices={devices!r} gives {n} devices")
    return n * nodes


def apply_global_batch(cfg: DictConfig) -> str | None:
    """``data.global_batch_size`` (the paper's batch sizes are global) -> the per-process ``data.batch_size``.

    per process = global / (devices x num_nodes x trainer.accumulate_grad_batches); a global batch that does not
    divide is an error that says how to fix it. Returns a log line, or None when the config gives no global batch
    (then ``data.batch_size`` is per process, as before).
    """
    from omegaconf import open_dict

    gbs = OmegaConf.select(cfg, "data.global_batch_size")
    if gbs is None:
        return None
    _positive(cfg, "data.global_batch_size")
    world = trainer_world_size(cfg.trainer)
    accum = cfg.trainer.get("accumulate_grad_batches", 1) or 1
    if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accum!r} must be an int >= 1 with data.global_batch_size")
    parts = world * accum
    gbs = int(gbs)
    if gbs % parts:
        lo, hi = max(parts, gbs // parts * parts), (gbs // parts + 1) * parts
        raise ConfigError(
            f"data.global_batch_size={gbs} does not divide into {world} processes (trainer.devices x "
            f"trainer.num_nodes) x {accum} accumulation steps (trainer.accumulate_grad_batches) = {parts}: use a "
            f"multiple of {parts} (e.g. data.global_batch_size={lo} or {hi}), or change trainer.devices / "
            "trainer.accumulate_grad_batches so their product divides it"
        )
    with open_dict(cfg):
        cfg.data.batch_size = gbs // parts
    return (f"global batch {gbs} = {world} processes x {gbs // parts} per process (data.batch_size) x "
            f"{accum} accumulation steps")


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
        cfg = compose(config_name=config_name, overrides=list(overrides),
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "0"
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg
