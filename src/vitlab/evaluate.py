"""vitlab.evaluate: reload a checkpoint and reproduce its test accuracy.

    python -m vitlab.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m vitlab.evaluate ckpt_path=<ckpt> data=digits data.eval_batch_size=512

:func:`evaluate` mirrors :func:`vitlab.train.train`: the objects are built by name
(:func:`vitlab.runs.assemble.assemble_evaluation`: the checkpoint read once, as data), tested, and the metrics
returned and written to ``metrics.json``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.runs.assemble import assemble_evaluation, report
from vitlab.tasks import hydra_app, scalar_metrics, task_wrapper


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test (or validate: ``split=val``) the checkpoint ``ckpt_path`` on its data; return and write the metrics."""
    objects = assemble_evaluation(cfg)  # by name: the checkpoint's run, module, data, loggers, trainer
    trainer, module, datamodule, run = objects["trainer"], objects["module"], objects["datamodule"], objects["run"]

    check = trainer.validate if cfg.split == "val" else trainer.test
    (metrics,) = check(module, datamodule=datamodule, verbose=False)
    metrics = scalar_metrics(metrics)

    results = {**metrics, "ckpt_path": str(cfg.ckpt_path), M.DATA_NAME: run.data.get("name"),
               M.MODEL_NAME: run.model.get("name")}
    report(cfg.paths.output_dir, results, metrics)
    return results


main = hydra_app("evaluate", returns=M.TEST_ACC)(evaluate)

if __name__ == "__main__":
    main()
