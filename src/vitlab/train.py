"""vitlab.train: pretrain or fine-tune one model on one dataset (one Hydra job).

    python -m vitlab.train model=vit_b16 data=cifar10 optim=sgd_finetune trainer=gpu
    python -m vitlab.train -m experiment=quickstart          # ViT vs BiT on digits, one table

:func:`train` is the whole job, in lightning-hydra-template's shape: the objects are built by name
(:func:`vitlab.runs.assemble.assemble`, each checking its own arguments), fitted, tested, and the metrics
returned and written to ``metrics.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.runs.assemble import assemble, report
from vitlab.tasks import hydra_app, scalar_metrics, task_wrapper


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; return the final metrics."""
    objects = assemble(cfg)  # by name: data, module, callbacks, loggers, trainer; every argument checked
    trainer, module, datamodule = objects["trainer"], objects["module"], objects["datamodule"]
    fit, test = bool(cfg.get("train", True)), bool(cfg.get("test", True))

    t0 = time.perf_counter()
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=objects["ckpt_path"], weights_only=True)
    metrics = scalar_metrics(trainer.callback_metrics) if fit else {}
    best = None
    if test and not trainer.interrupted:
        ckpt_cb = trainer.checkpoint_callback
        if not fit:
            best = objects["ckpt_path"]  # train=false: the checkpoint given
        elif ckpt_cb is not None and ckpt_cb.best_model_path:
            best = ckpt_cb.best_model_path
        (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False,
                                       weights_only=True)
        metrics.update(scalar_metrics(test_metrics))
    wall = time.perf_counter() - t0

    out_dir = Path(cfg.paths.output_dir)
    results = {**objects["stats"], **metrics, M.TIME_WALL_S: round(wall, 2), "seed": cfg.seed,
               "output_dir": str(out_dir), M.TEST_CKPT: best}
    if trainer.is_global_zero:
        report(out_dir, results, metrics)
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
