"""vitlab.evaluate: reload a checkpoint and reproduce its test accuracy.

    python -m vitlab.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m vitlab.evaluate ckpt_path=<ckpt> data=digits data.eval_batch_size=512
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.checks import check_seed
from vitlab.errors import ConfigError
from vitlab.runs import load_run
from vitlab.runs.assemble import build_trainer, report
from vitlab.tasks import hydra_app, scalar_metrics, task_wrapper
from vitlab.utils.extras import quiet_console
from vitlab.utils.instantiate import build_loggers, start_loggers

log = logging.getLogger("vitlab.evaluate")


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test (or validate: ``split=val``) the checkpoint ``ckpt_path`` on its data; return and write the metrics."""
    check_seed(cfg.get("seed"))
    quiet_console(cfg)
    run, module, datamodule = load_run(cfg)  # the checkpoint's network, and its data unless data= is given
    data_cfg = run.data
    if int(datamodule.num_classes) != module.num_classes:
        raise ConfigError(
            f"data {data_cfg.get('name')} has {datamodule.num_classes} classes but the checkpoint's head has "
            f"{module.num_classes}: evaluate on the dataset it was trained on, or fine-tune first"
        )
    loggers = build_loggers(cfg.get("logger"), start=False)
    trainer = build_trainer(cfg, loggers=loggers, enable_checkpointing=False)
    start_loggers(trainer)  # W&B starts once the Trainer has accepted its devices
    check = trainer.validate if cfg.split == "val" else trainer.test
    (metrics,) = check(module, datamodule=datamodule, verbose=False)
    metrics = scalar_metrics(metrics)
    results = {**metrics, "ckpt_path": str(cfg.ckpt_path), M.DATA_NAME: data_cfg.get("name"),
               M.MODEL_NAME: run.model.get("name")}
    report(cfg.paths.output_dir, results, metrics)
    return results


main = hydra_app("evaluate", returns=M.TEST_ACC)(evaluate)

if __name__ == "__main__":
    main()
