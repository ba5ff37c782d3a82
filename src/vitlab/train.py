"""vitlab.train: pretrain or fine-tune one model on one dataset (one Hydra job).

    python -m vitlab.train model=vit_b16 data=cifar10 optim=sgd_finetune trainer=gpu
    python -m vitlab.train -m experiment=quickstart          # ViT vs BiT on digits, one table
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vitlab import metrics as M
from vitlab.config import ConfigError, apply_global_batch, job_config, to_plain, validate_train_cfg
from vitlab.tasks import hydra_app, print_metrics, scalar_metrics, task_wrapper, write_results

log = logging.getLogger("vitlab.train")


#: DDP flavours whose workers are started by torch.multiprocessing (spawn/fork): they never re-run sys.argv
SPAWNING_DDP = ("ddp_spawn", "ddp_fork", "ddp_notebook")


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


def build_module(cfg: DictConfig):
    """The objective of this job. ``module._target_`` comes from the composed config (vitlab's config groups and
    the command line, which vitlab trusts); a checkpoint never reaches here (``vitlab.runs`` reads those)."""
    from vitlab.modules import ClassificationModule
    from vitlab.runs import checkpoint_config

    module_cfg = to_plain(cfg.module)  # `module._target_` picks another objective (e.g. masked patch prediction)
    cls = hydra.utils.get_class(module_cfg.pop("_target_")) if "_target_" in module_cfg else ClassificationModule
    module = cls(model=to_plain(cfg.model), optim=to_plain(cfg.optim), **module_cfg)
    if cfg.model.get("pretrained"):  # fine-tuning (paper §3.2): new zero head, resized position embeddings
        from vitlab.models.pretrained import load_pretrained

        load_pretrained(module.net, cfg.model.pretrained, keep_head=bool(cfg.model.get("pretrained_keep_head")),
                        pos_embed_resize=cfg.model.get("pos_embed_resize"))
    module.run_config = checkpoint_config(cfg)  # stored as data: no `_target_` (vitlab/runs.py)
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


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> Path:
    """``config.yaml`` next to the checkpoints: the fully resolved config of this job (Hydra's own copy
    under ``.hydra/`` keeps the interpolations)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(job_config(cfg))))
    return path


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path in ("last", "best", "hpc", "registry"):
        return ckpt_path
    p = Path(ckpt_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file ({p.resolve()})")
    return str(p)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; return the final metrics."""
    import lightning as L
    from hydra.utils import instantiate

    from vitlab.callbacks.resume import apply_wandb_resume, resolve_resume
    from vitlab.utils.extras import apply_extras
    from vitlab.utils.instantiate import build_callbacks, build_loggers
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
    apply_extras(cfg)  # extras.print_config / enforce_tags / ignore_warnings
    plan = resolve_resume(cfg)  # ckpt_path=last / resume=auto|never: errors before anything is written
    log.info(plan.message)
    apply_wandb_resume(cfg, plan)  # the resumed job logs into the same W&B run
    ckpt_path = plan.ckpt_path
    out_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, out_dir)
    L.seed_everything(cfg.seed, workers=True)

    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg)
    stats = run_stats(module, dm, cfg)
    log.info("model %s: %.2fM params; data %s: %d train images", cfg.model.name, stats[M.MODEL_PARAMS_M],
             cfg.data.name, stats[M.DATA_TRAIN_SIZE])

    loggers = build_loggers(cfg.get("logger"))
    callbacks = build_callbacks(cfg.get("callbacks"), cfg.trainer, has_logger=bool(loggers))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(out_dir))
    for lg in loggers:
        lg.log_hyperparams({**stats, "cfg": job_config(cfg)})

    t0 = time.perf_counter()
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

    results = {**stats, **metrics, M.TIME_WALL_S: round(wall, 2), "seed": cfg.seed, "output_dir": str(out_dir),
               M.TEST_CKPT: best}
    if trainer.is_global_zero:
        write_results(out_dir, results)
        print_metrics(metrics)
        print(f"  {M.TIME_WALL_S:<12}  {wall:.1f}\noutputs: {out_dir}")
    return results


@hydra_app("train")
def _hydra_main(cfg: DictConfig) -> float | None:
    results = train(cfg)
    metric = cfg.get("optimized_metric")
    return results.get(metric) if metric else None


def resolve_printed_config(argv: list[str]) -> list[str]:
    """``--cfg job`` prints resolved values: the paper recipes read their numbers from ``vitlab.paper`` through a
    resolver, and ``lr: ${vitlab.paper:...}`` would hide them (Hydra's own ``--resolve``, added for you)."""
    wants_cfg = any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv)
    if wants_cfg and "--resolve" not in argv and "hydra" not in argv:
        return [*argv, "--resolve"]
    return argv


def main() -> float | None:
    sys.argv = resolve_printed_config(sys.argv)
    return _hydra_main()


if __name__ == "__main__":
    main()
