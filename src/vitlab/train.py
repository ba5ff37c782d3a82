"""vitlab.train: pretrain or fine-tune one model on one dataset (one Hydra job).

    python -m vitlab.train model=vit_b16 data=cifar10 optim=sgd_finetune trainer=gpu
    python -m vitlab.train -m experiment=quickstart          # ViT vs BiT on digits, one table

:func:`train` is the whole job, in lightning-hydra-template's shape: the objects are built by name
(:func:`vitlab.runs.assemble.assemble`, each checking its own arguments), fitted, tested, and the metrics
returned and written to ``metrics.json``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.checks import check_seed
from vitlab.errors import ConfigError
from vitlab.runs.assemble import (
    apply_global_batch,
    assemble,
    check_launch,
    report,
    save_resolved_config,
    start_logging,
)
from vitlab.runs.read import load_checkpoint
from vitlab.runs.resume import resolve_resume
from vitlab.tasks import hydra_app, scalar_metrics, task_wrapper
from vitlab.utils.extras import apply_extras, quiet_console
from vitlab.utils.plain import job_config
from vitlab.utils.secrets import check_no_literal_secrets
from vitlab.wandb_io import resume_wandb_run

log = logging.getLogger("vitlab.train")


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; return the final metrics."""
    # what only the job knows, before anything is built or written
    check_no_literal_secrets(cfg)  # also here for in-process runs (the command line checks in run_task)
    check_seed(cfg.get("seed"))
    fit, test = bool(cfg.get("train", True)), bool(cfg.get("test", True))
    if not fit:
        check_test_only(cfg, test)
    batch_line = apply_global_batch(cfg)  # data.global_batch_size -> per-process data.batch_size (or an error)
    check_launch(cfg)
    plan = resolve_resume(cfg)  # ckpt_path=last / resume=auto|never: errors before anything is written
    resume_wandb_run(cfg, plan.wandb_id)  # the resumed job logs into the same W&B run
    config = job_config(cfg)  # once per job: config.yaml, the checkpoints and every logger hold this one

    # the objects, by name: data, module, callbacks, loggers, trainer (each checks its own arguments)
    quiet_console(cfg)  # before the Trainer is built: Lightning's tips and set-up lines are printed there
    L.seed_everything(cfg.seed, workers=True)
    objects = assemble(cfg, config, start_logging=False)
    apply_extras(cfg, config)  # extras.enforce_tags / print_config / ignore_warnings, once the objects are valid
    start_logging(objects)  # W&B's run starts last, once nothing is left to refuse
    trainer, module, datamodule = objects["trainer"], objects["module"], objects["datamodule"]
    out_dir = Path(cfg.paths.output_dir)
    save_resolved_config(config, out_dir)
    for line in (batch_line, plan.message):
        if line:
            log.info(line)

    t0 = time.perf_counter()
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
    metrics = scalar_metrics(trainer.callback_metrics) if fit else {}
    best = None
    if test and not trainer.interrupted:
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if fit and ckpt_cb is not None and ckpt_cb.best_model_path else None
        best = best if fit else plan.ckpt_path  # train=false: the checkpoint given
        (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False,
                                       weights_only=True)
        metrics.update(scalar_metrics(test_metrics))
    wall = time.perf_counter() - t0

    results = {**objects["stats"], **metrics, M.TIME_WALL_S: round(wall, 2), "seed": cfg.seed,
               "output_dir": str(out_dir), M.TEST_CKPT: best}
    if trainer.is_global_zero:
        report(out_dir, results, metrics)
        print(f"  {M.TIME_WALL_S:<12}  {wall:.1f}\noutputs: {out_dir}")
    return results


def check_test_only(cfg: DictConfig, test: bool) -> None:
    """``train=false``: test the checkpoint given, which must hold the network ``model=`` builds."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        raise ConfigError("train=false tests a trained model: pass ckpt_path=<file>.ckpt (or use vitlab.evaluate)")
    if not test:
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
