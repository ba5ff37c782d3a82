"""A job's objects, each built by name from its config section and each checking its own arguments where it is
built (lightning-hydra-template's ``instantiate`` calls in ``train()``).

:func:`assemble` is everything a training job does before ``fit``: what only the job knows is checked first (seed,
train/test, the global batch, the launch, what to resume from), then the objects are built by name (data, module,
callbacks, loggers, trainer), slowest last, W&B started once nothing is left to refuse, and ``config.yaml`` written;
``vitlab.train.train`` fits and tests them, the benchmark times them. :func:`assemble_evaluation` does the same for
``vitlab.evaluate`` (the module and its data read back from a checkpoint). The checks that belong to no single object
live here, each beside the object it is about: the global batch (data x trainer, :func:`apply_global_batch`), the
launch (trainer x Hydra, :func:`check_launch`), the resolution a ViT is built for (model x data,
:func:`check_resolution`), a warmup inside the run (optimiser x trainer, :func:`check_warmup_fits`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab.checks import check_count, check_seed
from vitlab.errors import ConfigError
from vitlab.inspection.flops import flops_stats
from vitlab.models import registry
from vitlab.models.pretrained import load_pretrained
from vitlab.optim import warmup_steps
from vitlab.results import write_results
from vitlab.runs.read import checkpoint_config, load_checkpoint, load_run
from vitlab.runs.resume import resolve_resume
from vitlab.tasks import print_metrics
from vitlab.utils.extras import apply_extras
from vitlab.utils.plain import job_config
from vitlab.utils.secrets import redact
from vitlab.wandb_io.logger import start_logger

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
PROGRESS_BARS = ("RichProgressBar", "TQDMProgressBar")
MODEL_SUMMARIES = ("RichModelSummary", "ModelSummary")
#: callbacks that need a logger: Lightning raises MisconfigurationException when the Trainer has none
NEEDS_LOGGER = ("LearningRateMonitor",)
#: the extra of pyproject.toml that installs a logger's package, by the logger's config name
LOGGER_EXTRAS = {"tensorboard": "tensorboard"}


# ---- the jobs ------------------------------------------------------------------------------------------
def assemble(cfg: DictConfig, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """A training job's objects by name: data, module, callbacks, loggers, trainer (and ``stats``, what every logger
    records; ``config``, the job's resolved config; ``ckpt_path``, what ``fit`` resumes from).

    What only the job knows is refused first, before anything is written; then each object checks its own arguments
    as it is built, in this order, so a wrong value is refused before the next (slower) one starts. W&B starts last,
    once the Trainer has accepted its devices; then ``config.yaml`` is written next to the checkpoints.
    """
    check_seed(cfg.get("seed"))
    if not cfg.get("train", True):
        check_test_only(cfg)
    batch_line = apply_global_batch(cfg)  # data.global_batch_size -> per-process data.batch_size (or an error)
    check_launch(cfg)
    plan = resolve_resume(cfg)  # ckpt_path=last / resume=auto|never: errors before anything is written
    config = job_config(cfg)  # once per job: config.yaml, the checkpoints and every logger hold this one
    apply_extras(cfg, config)  # a quiet console (before the Trainer prints its set-up), tags, the config tree
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, config)
    stats = run_stats(module, datamodule, config["model"])
    loggers = build_loggers(cfg.get("logger"), start=False)
    callbacks = [*build_callbacks(cfg.get("callbacks"), cfg.trainer, has_logger=bool(loggers)), *extra_callbacks]
    trainer = build_trainer(cfg, callbacks, loggers)
    check_warmup_fits(cfg, trainer, stats, config["optim"])
    loggers = start_loggers(trainer)  # W&B's run starts here, once nothing is left to refuse
    for lg in loggers:
        lg.log_hyperparams({**stats, "cfg": config})
    save_resolved_config(config, Path(cfg.paths.output_dir))
    for line in (batch_line, plan.message):
        if line:
            log.info(line)
    log.info("model %s: %.2fM params; data %s: %d train images", cfg.model.name, stats[M.MODEL_PARAMS_M],
             cfg.data.name, stats[M.DATA_TRAIN_SIZE])
    return {"cfg": cfg, "config": config, "ckpt_path": plan.ckpt_path, "datamodule": datamodule, "module": module,
            "stats": stats, "callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def assemble_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """An evaluation job's objects by name (``vitlab.evaluate``): the checkpoint's ``run`` (read once, as data), its
    module with the weights, its data (unless ``data=`` is given), loggers and a Trainer that writes no checkpoint."""
    check_seed(cfg.get("seed"))
    apply_extras(cfg)
    run, module, datamodule = load_run(cfg)  # the checkpoint's network, and its data unless data= is given
    if int(datamodule.num_classes) != module.num_classes:
        raise ConfigError(
            f"data {run.data.get('name')} has {datamodule.num_classes} classes but the checkpoint's head has "
            f"{module.num_classes}: evaluate on the dataset it was trained on, or fine-tune first"
        )
    loggers = build_loggers(cfg.get("logger"), start=False)
    trainer = build_trainer(cfg, loggers=loggers, enable_checkpointing=False)
    loggers = start_loggers(trainer)  # W&B starts once the Trainer has accepted its devices
    return {"cfg": cfg, "run": run, "datamodule": datamodule, "module": module, "loggers": loggers,
            "trainer": trainer}


def check_test_only(cfg: DictConfig) -> None:
    """``train=false``: test the checkpoint given, which must hold the network ``model=`` builds."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        raise ConfigError("train=false tests a trained model: pass ckpt_path=<file>.ckpt (or use vitlab.evaluate)")
    if not cfg.get("test", True):
        raise ConfigError("train=false test=false leaves nothing to do: drop one of them")
    if str(ckpt) in ("last", "auto"):
        return  # the resume plan finds the file
    stored = (load_checkpoint(ckpt).get("vitlab_config") or {}).get("model") or {}  # the one trusted reader
    keys = ("family", "variant", "num_classes", "patch_size")
    theirs = {k: stored.get(k) for k in keys if stored.get(k) is not None}
    ours = {k: cfg.model.get(k) for k in theirs}
    if theirs != ours:
        differ = ", ".join(f"model.{k}={theirs[k]!r} (here {ours[k]!r})" for k in theirs if theirs[k] != ours[k])
        raise ConfigError(
            f"ckpt_path={ckpt} holds another network than model={cfg.model.get('name')} builds: {differ}. "
            f"Pass model={stored.get('name', '<its model>')} (and its data), or run python -m vitlab.evaluate "
            f"ckpt_path={ckpt}, which reads the model from the checkpoint"
        )


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


def module_kwargs(module_cfg: dict[str, Any] | None) -> tuple[type, dict[str, Any]]:
    """The objective's class and its own keys (``conf/module/<objective>.yaml``, resolved)."""
    kwargs = dict(module_cfg or {})
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
    (``vitlab.runs.read`` reads those). ``config``: the job's :func:`~vitlab.utils.plain.job_config` (computed here
    when not given), whose sections the objective takes as plain dicts."""
    config = job_config(cfg) if config is None else config
    check_resolution(cfg.model, cfg.data)
    cls, kwargs = module_kwargs(config.get("module"))
    model = config["model"]
    module = cls(model=model, optim=config["optim"], **kwargs)
    if model.get("pretrained"):  # fine-tuning (paper §3.2): new zero head, resized position embeddings
        load_pretrained(module.net, model["pretrained"], keep_head=bool(model.get("pretrained_keep_head")),
                        pos_embed_resize=model.get("pos_embed_resize"))
    module.run_config = checkpoint_config(config)  # stored as data: no `_target_` (vitlab/runs/read.py)
    return module


def run_stats(module, dm, model: dict[str, Any]) -> dict[str, Any]:
    """What every logger records about a run, so dashboards can group runs by scale (``model``: the resolved
    model config)."""
    params = module.num_params
    return {
        M.MODEL_NAME: model["name"],
        M.MODEL_FAMILY: model["family"],
        M.MODEL_VARIANT: model["variant"],
        M.MODEL_PARAMS: params,
        M.MODEL_PARAMS_M: round(params / 1e6, 3),
        M.MODEL_IMG_SIZE: int(model["img_size"]),
        M.MODEL_PATCH_SIZE: model.get("patch_size"),
        **flops_stats(model),  # model/gmacs, model/gflops, model/train_gflops per image
        **dm.stats(),
    }


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
        out.append(build(c))
    # Weight averaging (EMA) swaps the averaged weights in at validation start and back out at validation end.
    # Lightning calls hooks in list order, so it goes last: every callback that reads the weights at validation
    # end (few-shot evaluation) then sees the averaged ones, whatever order the config listed them in.
    return sorted(out, key=lambda cb: isinstance(cb, WeightAveraging))


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


# ---- checks across objects -----------------------------------------------------------------------------
def check_warmup_fits(cfg: DictConfig, trainer, stats: dict[str, Any], optim: dict[str, Any]) -> None:
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
        warmup_steps(optim, min(total))  # raises OptimConfigError naming optim.warmup and the run


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
