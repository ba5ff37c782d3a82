"""vitlab.vtab: the VTAB-1k suite (paper §4.1, Table 2) — fine-tune a checkpoint on each of the 19 tasks.

    python -m vitlab.vtab ckpt_path=<pretrained .ckpt> data.root=/datasets/vtab-1k
    python -m vitlab.vtab ckpt_path=ViT-B_16.npz model=vit_b16 data.root=<dir> trainer=gpu vtab.resolution=384
    python -m vitlab.vtab ckpt_path=<ckpt> data.root=<dir> data.task=dtd,svhn          # some tasks only
    python -m vitlab.vtab ckpt_path=<ckpt> data.root=<dir> hydra/launcher=slurm # one SLURM job per task

Each task is one Hydra multirun job (``data.task`` is the swept key), so a launcher runs the suite in
parallel. A job follows the paper's protocol: for every lr of ``vtab.lr_grid`` train on ``train800`` and
score ``val200``; then train on ``train800val200`` with the best lr and report ``test`` accuracy
(``vtab.steps`` steps each, SGD momentum 0.9, cosine decay, clip 1). After the last job the table of
per-task, per-group (Natural, Specialized, Structured) and mean accuracy is printed and saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab.data.catalog import VTAB_TASKS
from vitlab.errors import ConfigError
from vitlab.finetune import select_and_retrain  # VTAB is the fine-tuning protocol once per task
from vitlab.models.pretrained import detect_format
from vitlab.runs import read_run
from vitlab.runs.assemble import fine_tune_cfg, report
from vitlab.tasks import hydra_app, task_wrapper

log = logging.getLogger("vitlab.vtab")


def _cli_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    return [o.lstrip("+~") for o in HydraConfig.get().overrides.task]


def checkpoint_model_cfg(ckpt_path: str) -> dict[str, Any] | None:
    """The model config stored in a vitlab checkpoint (read as data: ``vitlab.runs``), or None for foreign
    formats (.npz, .safetensors, ...)."""
    if detect_format(ckpt_path) != "torch":
        return None
    # the data is this job's VTAB task; a plain state dict (no model config) needs model= on the command line
    return read_run(ckpt_path, with_data=False, require_model=False).model or None


def task_cfg(cfg: DictConfig) -> DictConfig:
    """The fine-tuning config of this job: the checkpoint's model, its resolution. Precedence as everywhere
    (``vitlab.runs.read``): command line (``model=<name>``, or ``model.<key>=...`` for one key) > checkpoint >
    ``conf/model``."""
    run = fine_tune_cfg(cfg)
    ckpt = cfg.get("ckpt_path")
    if not ckpt and not cfg.model.get("pretrained"):
        raise ConfigError("vitlab.vtab fine-tunes a pretrained model: give ckpt_path=<.ckpt | .npz | .safetensors>")
    saved = checkpoint_model_cfg(str(ckpt)) if ckpt else None
    with open_dict(run):
        cli = _cli_overrides()
        if saved and not any(o.startswith("model=") for o in cli):
            chosen = {o.split("=", 1)[0][len("model."):] for o in cli if o.startswith("model.")}
            run.model = OmegaConf.merge(run.model, {k: v for k, v in saved.items()
                                                    if k not in ("num_classes", "img_size", "pretrained", *chosen)})
        if ckpt:
            run.model.pretrained = str(ckpt)
        run.model.pretrained_keep_head = False
        run.model.representation_size = None  # fine-tuning: one linear layer on the representation (paper §3.1)
        res = cfg.vtab.get("resolution") or (saved or {}).get("img_size") or cfg.data.img_size
        run.data.img_size = run.data.eval_img_size = int(res)
        run.model.img_size = int(res)
        run.model.num_classes = int(cfg.data.num_classes)
        run.ckpt_path = None  # train's ckpt_path resumes; here the checkpoint is the starting point
        run.trainer.max_steps = int(cfg.vtab.steps)
        run.trainer.max_epochs = -1
    return run


@task_wrapper
def run_task(cfg: DictConfig) -> dict[str, Any]:
    task = str(cfg.data.task)
    if task not in VTAB_TASKS:
        raise ConfigError(f"data.task={task!r} is not a VTAB-1k task; choose from {list(VTAB_TASKS)}")
    run = task_cfg(cfg)
    out = Path(cfg.paths.output_dir)
    # the paper's protocol is one lr for every task (vtab.lr); vtab.lr_grid (a list) picks it on val200 first:
    # train800 per lr, the best on val200, then train800val200 (vitlab.finetune's rule, one home)
    grid = [float(v) for v in (cfg.vtab.get("lr_grid") or [cfg.vtab.lr])]
    lrs = {f"lr={lr}": lr for lr in grid}
    done = select_and_retrain(run, out, {name: {"optim.lr": lr} for name, lr in lrs.items()},
                              dev={"data.train_split": "train800"}, final={"data.train_split": "train800val200"},
                              metric=str(cfg.get("optimized_metric") or M.VAL_ACC_BEST))
    best, final = lrs[done["best"]], done["final"]
    val = {lrs[name]: v for name, v in done["dev"].items()}
    results = {
        M.VTAB_TASK: task, M.VTAB_GROUP: VTAB_TASKS[task][0], M.VTAB_LR: best,
        M.VTAB_VAL_BY_LR: {str(k): v for k, v in val.items()}, M.VTAB_STEPS: int(cfg.vtab.steps),
        M.TEST_ACC: final.get(M.TEST_ACC), M.MODEL_NAME: run.model.get("name"),
        M.MODEL_PARAMS_M: final.get(M.MODEL_PARAMS_M), M.DATA_NAME: run.data.name,
        M.DATA_TRAIN_SIZE: final.get(M.DATA_TRAIN_SIZE), M.TIME_WALL_S: final.get(M.TIME_WALL_S),
        "output_dir": str(out), "pretrained": run.model.get("pretrained"),
    }
    report(out, results)
    print(f"vtab {task}: test accuracy {results[M.TEST_ACC]:.4f} (lr {best}; val200 by lr {val or '-'})")
    return results


main = hydra_app("vtab", returns=M.TEST_ACC)(run_task)

if __name__ == "__main__":
    main()
