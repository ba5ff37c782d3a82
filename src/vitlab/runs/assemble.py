"""The objects of a training run, each built by name from its config section and each checking its own arguments
where it is built (lightning-hydra-template's ``instantiate`` calls in ``train()``).

:func:`assemble` returns them by name (data, module, callbacks, loggers, trainer): ``vitlab.train.train`` fits
and tests them, the benchmark times them. The checks that belong to no single object live here too, each beside
the object it is about: the global batch (data x trainer, :func:`apply_global_batch`), the launch (trainer x
Hydra, :func:`check_launch`), the resolution a ViT is built for (model x data, :func:`check_resolution`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab.checks import check_count
from vitlab.errors import ConfigError
from vitlab.inspection.flops import flops_stats
from vitlab.models import registry
from vitlab.models.pretrained import load_pretrained
from vitlab.optim import warmup_steps
from vitlab.results import write_results
from vitlab.runs.read import checkpoint_config
from vitlab.tasks import print_metrics
from vitlab.utils.instantiate import build_callbacks, build_loggers, start_loggers
from vitlab.utils.plain import job_config, to_plain

log = logging.getLogger("vitlab.train")

#: DDP flavours whose workers are started by torch.multiprocessing (spawn/fork): they never re-run sys.argv
SPAWNING_DDP = ("ddp_spawn", "ddp_fork", "ddp_notebook")
#: the objective of a config that names none (``module`` without ``_target_``)
DEFAULT_OBJECTIVE = "vitlab.modules.classification.ClassificationModule"
#: every ``precision`` Lightning accepts (lightning/fabric/plugins/precision/precision.py: _PRECISION_INPUT),
#: its aliases included: 16 / "16" -> 16-mixed, "bf16" -> bf16-mixed, 32 / "32", 64 / "64" (LHT's AMP test uses 16)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "16", "bf16", "64")
#: the largest global batch vitlab accepts (the paper's is 4096; a typo such as 1e21 is named, not allocated)
MAX_GLOBAL_BATCH = 2**20


# ---- the objects ---------------------------------------------------------------------------------------
def build(cfg: DictConfig, **kwargs: Any):
    """``hydra.utils.instantiate``, raising an object's own refusal of its arguments (a vitlab ``ValueError``: it
    names the key and the fix) as itself rather than wrapped in Hydra's ``InstantiationException``."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        own = e.__cause__
        if isinstance(own, ValueError) and type(own).__module__.startswith("vitlab."):
            raise own from None
        raise


def build_datamodule(data_cfg: DictConfig):
    """The DataModule of ``conf/data/<name>.yaml`` (it checks its own arguments: ``vitlab.data.base``)."""
    return build(data_cfg, _convert_="all")


def module_kwargs(cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    """The objective's class and its own keys (``conf/module/<objective>.yaml``)."""
    kwargs = to_plain(cfg.module) or {}
    target = kwargs.pop("_target_", DEFAULT_OBJECTIVE)
    return hydra.utils.get_class(target), kwargs


def check_resolution(model_cfg: DictConfig, data_cfg: DictConfig) -> None:
    """A ViT's patch grid and position embeddings are built for one resolution: the one the data delivers."""
    if not registry.get(model_cfg.get("family")).transformer:
        return  # ResNets pool globally: any resolution works
    img, size, eval_size = model_cfg.get("img_size"), data_cfg.get("img_size"), data_cfg.get("eval_img_size")
    if img is not None and size is not None and img != size:
        raise ConfigError(
            f"model.img_size={img} but data={data_cfg.get('name', '?')} delivers {size} px images "
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


def build_module(cfg: DictConfig, config: dict[str, Any] | None = None):
    """The objective of this job, built for the data's resolution. ``module._target_`` comes from the composed
    config (vitlab's config groups and the command line, which vitlab trusts); a checkpoint never reaches here
    (``vitlab.runs.read`` reads those). ``config``: the job's :func:`~vitlab.utils.plain.job_config`."""
    check_resolution(cfg.model, cfg.data)
    cls, kwargs = module_kwargs(cfg)
    module = cls(model=to_plain(cfg.model), optim=to_plain(cfg.optim), **kwargs)
    if cfg.model.get("pretrained"):  # fine-tuning (paper §3.2): new zero head, resized position embeddings
        load_pretrained(module.net, cfg.model.pretrained, keep_head=bool(cfg.model.get("pretrained_keep_head")),
                        pos_embed_resize=cfg.model.get("pos_embed_resize"))
    module.run_config = checkpoint_config(cfg, config)  # stored as data: no `_target_` (vitlab/runs/read.py)
    return module


def run_stats(module, dm, cfg: DictConfig) -> dict[str, Any]:
    """What every logger records about a run, so dashboards can group runs by scale."""
    params = module.num_params
    return {
        M.MODEL_NAME: cfg.model.name,
        M.MODEL_FAMILY: cfg.model.family,
        M.MODEL_VARIANT: cfg.model.variant,
        M.MODEL_PARAMS: params,
        M.MODEL_PARAMS_M: round(params / 1e6, 3),
        M.MODEL_IMG_SIZE: int(cfg.model.img_size),
        M.MODEL_PATCH_SIZE: cfg.model.get("patch_size"),
        **flops_stats(to_plain(cfg.model)),  # model/gmacs, model/gflops, model/train_gflops per image
        **dm.stats(),
    }


def check_trainer_cfg(trainer_cfg: DictConfig) -> None:
    """The Trainer keys Lightning would accept and misread (``max_epochs=1.5``) or name only deep inside fit."""
    if str(trainer_cfg.get("precision")) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer_cfg.get('precision')!r} is not one of {PRECISIONS}")
    if trainer_cfg.get("max_epochs") not in (None, -1):
        check_count("trainer.max_epochs", trainer_cfg.get("max_epochs"), minimum=1)
    if trainer_cfg.get("max_steps") not in (None, -1):
        check_count("trainer.max_steps", trainer_cfg.get("max_steps"), minimum=1)


def build_trainer(cfg: DictConfig, callbacks: Sequence[Any] = (), loggers: Sequence[Any] = (), **kwargs: Any):
    """``lightning.Trainer`` from ``cfg.trainer``, writing under ``paths.output_dir``. A device this machine does
    not have (``trainer=gpu`` on a CPU machine, ``trainer.devices=[7]`` with 1 GPU) is one ``Error:`` line."""
    check_trainer_cfg(cfg.trainer)
    kwargs.setdefault("default_root_dir", str(cfg.paths.output_dir))
    try:
        return build(cfg.trainer, callbacks=list(callbacks), logger=list(loggers) or False, **kwargs)
    except InstantiationException as wrapped:
        e = wrapped.__cause__
        if not isinstance(e, MisconfigurationException):
            raise
        raise ConfigError(
            f"trainer.accelerator={cfg.trainer.get('accelerator')!r} trainer.devices={cfg.trainer.get('devices')!r} "
            f"does not fit this machine ({str(e).strip().splitlines()[0]}): use trainer=cpu, or devices it has "
            f"(trainer.devices=1)"
        ) from None


def assemble(cfg: DictConfig, config: dict[str, Any] | None = None, extra_callbacks: Sequence[Any] = (),
             start_logging: bool = True) -> dict[str, Any]:
    """The run's objects by name: data, module, callbacks, loggers, trainer (and the stats every logger records).

    Each checks its own arguments as it is built, in this order, so a wrong value is refused before the next
    (slower) one starts: W&B is started last (:func:`start_logging`; ``start_logging=False``: by the caller), once
    the Trainer has accepted its devices. ``config``: the job's :func:`~vitlab.utils.plain.job_config`, computed
    here when not given; every logger records it once.
    """
    config = job_config(cfg) if config is None else config
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, config)
    stats = run_stats(module, datamodule, cfg)
    loggers = build_loggers(cfg.get("logger"), start=False)
    callbacks = [*build_callbacks(cfg.get("callbacks"), cfg.trainer, has_logger=bool(loggers)), *extra_callbacks]
    trainer = build_trainer(cfg, callbacks, loggers)
    check_warmup_fits(cfg, trainer, stats)
    log.info("model %s: %.2fM params; data %s: %d train images", cfg.model.name, stats[M.MODEL_PARAMS_M],
             cfg.data.name, stats[M.DATA_TRAIN_SIZE])
    objects = {"cfg": cfg, "config": config, "datamodule": datamodule, "module": module, "stats": stats,
               "callbacks": callbacks, "loggers": loggers, "trainer": trainer}
    return start_logging(objects) if start_logging else objects


def start_logging(objects: dict[str, Any]) -> dict[str, Any]:
    """Start the loggers of :func:`assemble`'s objects (W&B's run starts here; one that fails is dropped with a
    warning) and record the run's stats and config in each, once."""
    objects["loggers"] = start_loggers(objects["trainer"])
    for lg in objects["loggers"]:
        lg.log_hyperparams({**objects["stats"], "cfg": objects["config"]})
    return objects


# ---- checks across objects -----------------------------------------------------------------------------
def check_warmup_fits(cfg: DictConfig, trainer, stats: dict[str, Any]) -> None:
    """The schedule's warmup (optimiser) inside the run's length (trainer x data), checked before W&B starts.

    The optimiser refuses a warmup longer than the run when it is made at fit start (:func:`vitlab.optim.
    warmup_steps`, the exact count); this is the same rule on Lightning's count of the same steps, ahead of time:
    the paper's 10k warmup steps (App. B.1) sit inside runs of 100k+ steps, and a shorter run is a mistake to name,
    not a schedule to clamp silently. Only a fit is checked (``train=false`` makes no optimiser).
    """
    if not cfg.get("train", True):
        return
    per_epoch = math.ceil(stats[M.DATA_TRAIN_SIZE] / (int(cfg.data.batch_size) * trainer.world_size))
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        per_epoch = min(per_epoch, limit)
    elif limit is not None:
        per_epoch = max(1, int(per_epoch * float(limit)))
    steps = math.ceil(per_epoch / trainer.accumulate_grad_batches)
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    total = [n for n in (epochs * steps if epochs else None, trainer.max_steps if trainer.max_steps != -1 else None)
             if n is not None]
    if total:
        warmup_steps(to_plain(cfg.optim), min(total))  # raises OptimConfigError naming optim.warmup and the run


def check_launch(cfg: DictConfig) -> None:
    """Refuse Hydra multirun + DDP on a local launcher: Lightning's DDP re-runs sys.argv, i.e. the whole sweep.
    ``ddp_spawn`` / ``ddp_fork`` (trainer=ddp_sim) start their workers in-process, so a sweep with them is fine."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    multi_device = devices not in (1, "1", [0]) or int(cfg.trainer.get("num_nodes", 1) or 1) > 1
    spawning = strategy.startswith(SPAWNING_DDP)
    if hc.mode == RunMode.MULTIRUN and "ddp" in strategy and not spawning and multi_device:
        launcher = str(hc.launcher.get("_target_", ""))
        if "submitit" not in launcher or "Local" in launcher:
            raise ConfigError(
                f"Hydra multirun with trainer.strategy={strategy} and trainer.devices={devices} on the launcher "
                f"'{launcher.rsplit('.', 1)[-1]}' would re-launch the whole sweep from every DDP process. "
                "Use the SLURM launcher (hydra/launcher=slurm, tasks_per_node = devices) or one device "
                "per job (trainer.devices=1), or trainer=ddp_sim (ddp_spawn: workers never re-run the command)."
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
    gbs = OmegaConf.select(cfg, "data.global_batch_size")
    if gbs is None:
        return None
    gbs = check_count("data.global_batch_size", gbs, maximum=MAX_GLOBAL_BATCH, what="images per optimiser step")
    world = trainer_world_size(cfg.trainer)
    accum = cfg.trainer.get("accumulate_grad_batches", 1) or 1
    if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accum!r} must be an int >= 1 with data.global_batch_size")
    parts = world * accum
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


# ---- files and results ---------------------------------------------------------------------------------
def save_resolved_config(config: dict[str, Any], out_dir: Path) -> Path:
    """``config.yaml`` next to the checkpoints: the fully resolved config of this job (Hydra's own copy
    under ``.hydra/`` keeps the interpolations)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def fine_tune_cfg(cfg: DictConfig, **values: Any) -> DictConfig:
    """An unresolved copy of ``cfg`` with ``values`` set (dotted keys), for a sub-run of another task (vtab):
    paths such as ``${paths.output_dir}/checkpoints`` follow the sub-run's output_dir."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(sub):
        for key, v in values.items():
            OmegaConf.update(sub, key, v, merge=False)
    return sub


def report(out_dir: str | Path, results: dict[str, Any], metrics: dict[str, float] | None = None) -> Path:
    """Write ``metrics.json`` and print the closing metric lines (``metrics``; none when not given)."""
    path = write_results(out_dir, results)
    if metrics is not None:
        print_metrics(metrics)
    return path
