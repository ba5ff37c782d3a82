"""Build a run from a composed config, the one way every task does it (lightning-hydra-template's ``train()``).

:func:`assemble` builds the DataModule, the objective (``conf/module/``), the stats every logger records, the
callbacks, the loggers and the Trainer, and returns them by name. :func:`train_run` is a whole training job on
top of it (checks, resume plan, fit, test, ``metrics.json``): ``vitlab.train`` runs it from the command line,
``vitlab.vtab`` once per learning rate. :func:`wandb_run` is the one W&B run of the tasks that log figures
(analyze, report). Validation happens once, where each object is built; start-up checks that must come before
anything is written (:func:`vitlab.config.validate_train_cfg`) call the same functions, with the same words.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab.config import ConfigError, apply_global_batch, job_config, to_plain, validate_train_cfg
from vitlab.results import write_results
from vitlab.tasks import print_metrics, scalar_metrics, task_wrapper

log = logging.getLogger("vitlab.train")

#: DDP flavours whose workers are started by torch.multiprocessing (spawn/fork): they never re-run sys.argv
SPAWNING_DDP = ("ddp_spawn", "ddp_fork", "ddp_notebook")
#: the objective of a config that names none (``module`` without ``_target_``)
DEFAULT_OBJECTIVE = "vitlab.modules.classification.ClassificationModule"


def check_launch(cfg: DictConfig) -> None:
    """Refuse Hydra multirun + DDP on a local launcher: Lightning's DDP re-runs sys.argv, i.e. the whole sweep.
    ``ddp_spawn`` / ``ddp_fork`` (trainer=ddp_sim) start their workers in-process, so a sweep with them is fine."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

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


# ---- the objects ---------------------------------------------------------------------------------------
def build_datamodule(data_cfg: DictConfig):
    """The DataModule of ``conf/data/<name>.yaml`` (it checks its own arguments: ``vitlab.data.base``)."""
    from hydra.utils import instantiate

    return instantiate(data_cfg, _convert_="all")


def module_kwargs(cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    """The objective's class and its own keys (``conf/module/<objective>.yaml``).

    The old spelling, ``module._target_=<another objective>`` on top of the classification group, still works:
    the classification keys left at their defaults are dropped with a deprecation message naming ``module=<name>``;
    one set to something else is an error, since that objective would ignore it.
    """
    import hydra

    from vitlab.runs.read import OBJECTIVES

    kwargs = to_plain(cfg.module) or {}
    target = kwargs.pop("_target_", DEFAULT_OBJECTIVE)
    cls = hydra.utils.get_class(target)
    legacy = {"loss": "softmax", "label_smoothing": 0.0, "head_bias_init": None}  # conf/module/classification.yaml
    foreign = [k for k in legacy if k in kwargs and target != DEFAULT_OBJECTIVE]
    if foreign:
        name = next((n for n, (mod, c) in OBJECTIVES.items() if f"{mod}.{c}" == target), None)
        changed = [k for k in foreign if kwargs[k] != legacy[k]]
        if changed:
            raise ConfigError(f"module.{changed[0]}={kwargs[changed[0]]!r} is a classification setting; {target} "
                              f"does not take it (its keys: conf/module/{name or '<objective>'}.yaml)")
        warnings.warn(f"module._target_={target} on the classification group is deprecated: select the objective "
                      f"with module={name} (conf/module/{name}.yaml)", DeprecationWarning, stacklevel=2)
        kwargs = {k: v for k, v in kwargs.items() if k not in foreign}
    return cls, kwargs


def build_module(cfg: DictConfig, config: dict[str, Any] | None = None):
    """The objective of this job. ``module._target_`` comes from the composed config (vitlab's config groups and
    the command line, which vitlab trusts); a checkpoint never reaches here (``vitlab.runs.read`` reads those).
    ``config``: the job's :func:`~vitlab.config.job_config`, when the caller already has it."""
    from vitlab.runs.read import checkpoint_config

    cls, kwargs = module_kwargs(cfg)
    module = cls(model=to_plain(cfg.model), optim=to_plain(cfg.optim), **kwargs)
    if cfg.model.get("pretrained"):  # fine-tuning (paper §3.2): new zero head, resized position embeddings
        from vitlab.models.pretrained import load_pretrained

        load_pretrained(module.net, cfg.model.pretrained, keep_head=bool(cfg.model.get("pretrained_keep_head")),
                        pos_embed_resize=cfg.model.get("pos_embed_resize"))
    module.run_config = checkpoint_config(cfg, config)  # stored as data: no `_target_` (vitlab/runs/read.py)
    return module


def run_stats(module, dm, cfg: DictConfig) -> dict[str, Any]:
    """What every logger records about a run, so dashboards can group runs by scale."""
    from vitlab.inspection.flops import flops_stats

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


def build_trainer(cfg: DictConfig, callbacks: Sequence[Any] = (), loggers: Sequence[Any] = (), **kwargs: Any):
    """``lightning.Trainer`` from ``cfg.trainer``, writing under ``paths.output_dir``."""
    from hydra.utils import instantiate

    kwargs.setdefault("default_root_dir", str(cfg.paths.output_dir))
    return instantiate(cfg.trainer, callbacks=list(callbacks), logger=list(loggers) or False, **kwargs)


def assemble(cfg: DictConfig, extra_callbacks: Sequence[Any] = (), config: dict[str, Any] | None = None,
             ) -> dict[str, Any]:
    """Data, objective, stats, loggers, callbacks and Trainer of a training run, by name (``config``: the job's
    :func:`~vitlab.config.job_config`, computed here when not given; every logger records it once)."""
    from vitlab.utils.instantiate import build_callbacks, build_loggers

    config = job_config(cfg) if config is None else config
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, config)
    stats = run_stats(module, dm, cfg)
    log.info("model %s: %.2fM params; data %s: %d train images", cfg.model.name, stats[M.MODEL_PARAMS_M],
             cfg.data.name, stats[M.DATA_TRAIN_SIZE])
    loggers = build_loggers(cfg.get("logger"))
    callbacks = build_callbacks(cfg.get("callbacks"), cfg.trainer, has_logger=bool(loggers))
    trainer = build_trainer(cfg, [*callbacks, *extra_callbacks], loggers)
    for lg in loggers:
        lg.log_hyperparams({**stats, "cfg": config})
    return {"cfg": cfg, "config": config, "datamodule": dm, "module": module, "stats": stats, "loggers": loggers,
            "callbacks": callbacks, "trainer": trainer}


def save_resolved_config(config: dict[str, Any] | DictConfig, out_dir: Path) -> Path:
    """``config.yaml`` next to the checkpoints: the fully resolved config of this job (Hydra's own copy
    under ``.hydra/`` keeps the interpolations)."""
    if isinstance(config, DictConfig):
        config = job_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


# ---- a training job ------------------------------------------------------------------------------------
def prepare_training(cfg: DictConfig) -> tuple[str | None, dict[str, Any]]:
    """Everything that may refuse the job, before anything is built: checks, the global batch, the launch, the
    resume plan, ``extras``; then ``config.yaml``. Returns (checkpoint to resume from, the job's config)."""
    from vitlab.callbacks.resume import apply_wandb_resume, resolve_resume
    from vitlab.utils.extras import apply_extras
    from vitlab.utils.secrets import check_no_literal_secrets

    check_no_literal_secrets(cfg)  # also here for in-process runs (the command line checks in hydra_app)
    validate_train_cfg(cfg)
    batch_line = apply_global_batch(cfg)  # data.global_batch_size -> per-process data.batch_size (or an error)
    if batch_line:
        log.info(batch_line)
    check_launch(cfg)
    fit = bool(cfg.get("train", True))
    if not fit and cfg.get("ckpt_path") in (None, "", "null"):
        raise ConfigError("train=false tests a trained model: pass ckpt_path=<file>.ckpt (or use vitlab.evaluate)")
    if not fit and not cfg.get("test", True):
        raise ConfigError("train=false test=false leaves nothing to do: drop one of them")
    plan = resolve_resume(cfg)  # ckpt_path=last / resume=auto|never: errors before anything is written
    log.info(plan.message)
    apply_wandb_resume(cfg, plan)  # the resumed job logs into the same W&B run
    config = job_config(cfg)  # once per job: config.yaml, the checkpoints and every logger hold this one
    apply_extras(cfg, config)  # extras.print_config / enforce_tags / ignore_warnings
    save_resolved_config(config, Path(cfg.paths.output_dir))
    return plan.ckpt_path, config


@task_wrapper
def train_run(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; return the final metrics."""
    import lightning as L

    ckpt_path, config = prepare_training(cfg)
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    objs = assemble(cfg, config=config)
    trainer, module, dm = objs["trainer"], objs["module"], objs["datamodule"]

    t0 = time.perf_counter()
    fit = bool(cfg.get("train", True))
    if fit:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    metrics = scalar_metrics(trainer.callback_metrics) if fit else {}
    best = None
    if cfg.get("test", True) and not trainer.interrupted:
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
        best = best if fit else ckpt_path  # train=false: the checkpoint given
        (test_metrics,) = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update(scalar_metrics(test_metrics))
    wall = time.perf_counter() - t0

    results = {**objs["stats"], **metrics, M.TIME_WALL_S: round(wall, 2), "seed": cfg.seed,
               "output_dir": str(out_dir), M.TEST_CKPT: best}
    if trainer.is_global_zero:
        report(out_dir, results, metrics)
        print(f"  {M.TIME_WALL_S:<12}  {wall:.1f}\noutputs: {out_dir}")
    return results


def fine_tune_cfg(cfg: DictConfig, **values: Any) -> DictConfig:
    """An unresolved copy of ``cfg`` with ``values`` set (dotted keys), for a sub-run of another task (vtab):
    paths such as ``${paths.output_dir}/checkpoints`` follow the sub-run's output_dir."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(sub):
        for key, v in values.items():
            OmegaConf.update(sub, key, v, merge=False)
    return sub


# ---- results -------------------------------------------------------------------------------------------
def report(out_dir: str | Path, results: dict[str, Any], metrics: dict[str, float] | None = None) -> Path:
    """Write ``metrics.json`` and print the closing metric lines (``metrics``; none when not given)."""
    path = write_results(out_dir, results)
    if metrics is not None:
        print_metrics(metrics)
    return path


@contextlib.contextmanager
def wandb_run(name: str, group: Any, job_type: str, out_dir: str | Path) -> Iterator[Any]:
    """One W&B run of a task that logs figures and tables (analyze, report): offline unless a key is set, names
    masked after interpolation, always finished."""
    import os

    import wandb

    from vitlab.config import wandb_offline
    from vitlab.utils.secrets import redact

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vitlab"), name=redact(name), group=redact(group),
                     job_type=job_type, dir=str(out_dir), mode="offline" if wandb_offline() else "online")
    try:
        yield run
    finally:
        run.finish()
