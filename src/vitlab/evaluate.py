"""vitlab.evaluate: reload a checkpoint and reproduce its test accuracy.

    python -m vitlab.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m vitlab.evaluate ckpt_path=<ckpt> data=digits data.eval_batch_size=512
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.errors import ConfigError
from vitlab.runs import load_run
from vitlab.runs.assemble import build_trainer, report
from vitlab.tasks import hydra_app, scalar_metrics, task_wrapper
from vitlab.utils.instantiate import build_loggers

log = logging.getLogger("vitlab.evaluate")


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    run, module, dm = load_run(cfg)
    data_cfg = run.data
    if int(dm.num_classes) != module.num_classes:
        raise ConfigError(
            f"data {data_cfg.get('name')} has {dm.num_classes} classes but the checkpoint's head has "
            f"{module.num_classes}: evaluate on the dataset it was trained on, or fine-tune first"
        )
    trainer = build_trainer(cfg, loggers=build_loggers(cfg.get("logger")), enable_checkpointing=False)
    check = trainer.validate if cfg.split == "val" else trainer.test
    (metrics,) = check(module, datamodule=dm, verbose=False)
    metrics = scalar_metrics(metrics)
    results = {**metrics, "ckpt_path": str(cfg.ckpt_path), M.DATA_NAME: data_cfg.get("name"),
               M.MODEL_NAME: run.model.get("name")}
    report(cfg.paths.output_dir, results, metrics)
    return results


main = hydra_app("evaluate", returns=M.TEST_ACC)(evaluate)

if __name__ == "__main__":
    main()
