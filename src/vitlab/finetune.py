"""vitlab.finetune: the paper's fine-tuning protocol as one command (App. B.1.1, Table 4).

    python -m vitlab.finetune experiment=paper/finetune_cifar10 model=vit_b16 model.pretrained=ViT-B_16.npz \\
        data.root=<dir> trainer=gpu
    python -m vitlab.finetune experiment=paper/finetune_pets model=bit_r50x1 model.pretrained=<ckpt> data.root=<dir>
    python -m vitlab.finetune model=vit_micro data=digits optim=sgd_finetune finetune.lr_grid=[0.01,0.1] \\
        trainer.max_steps=40 optim.warmup=5 data.global_batch_size=null     # CPU size

Every candidate is trained on the dev split's train part (``data.val_fraction`` of train held out, Table 4's share)
and scored on the dev split (``optimized_metric``: ``val/acc_best``). The candidates are Table 4's lr grid for the
data (``finetune.lr_grid`` overrides it) and, for a ResNet, BiT-HyperRule (App. B.1.1: "we run our fine-tuning setup
as well as BiT-HyperRule and take the best"; ``finetune.recipe``). The best one (ties: the first run, i.e. the
smaller lr of the ascending grid, and Table 4's sweep before BiT-HyperRule) is then trained on the entire training
split (``data.val_fraction=0``, no validation, the last weights tested) and its test accuracy is reported: "For
final results we train on the entire training set". ``metrics.json``: the dev table, the choice, the final run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab import metrics as M
from vitlab import paper
from vitlab.errors import ConfigError
from vitlab.models import registry
from vitlab.runs.assemble import build_datamodule, fine_tune_cfg, report
from vitlab.tasks import hydra_app, task_wrapper
from vitlab.train import train  # the protocol is vitlab.train's job once per candidate, then once more

log = logging.getLogger("vitlab.finetune")

#: ``finetune.recipe``: the candidates scored on the dev split. ``paper``: what App. B.1.1 ran, Table 4's sweep for
#: every model and BiT-HyperRule too for the ResNets (any family the registry says is not a transformer)
RECIPES = ("paper", "table4", "bit_hyperrule", "both")


# ---- select on the dev split, retrain on all: the one home of the rule (vitlab.vtab uses it too) --------------
def select_and_retrain(run: DictConfig, out: Path, candidates: Mapping[str, Mapping[str, Any]],
                       dev: Mapping[str, Any], final: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Train ``run`` once per candidate (name -> config values) with ``dev`` set, score each by ``metric``; train the
    best (ties: the first in order; a run without the metric scores lowest) with ``final`` set and test it. One
    candidate is trained with ``final`` only. Returns ``best`` (its name), ``dev`` (name -> score), ``dev_runs``
    (name -> that run's results) and ``final`` (the final run's results)."""
    scores: dict[str, float | None] = {}
    dev_runs: dict[str, dict[str, Any]] = {}
    if len(candidates) > 1:
        for name, values in candidates.items():
            r = train(fine_tune_cfg(run, **values, **dev, test=False, **{
                "paths.output_dir": str(out / "dev" / _slug(name)), "run_name": f"{run.run_name}-dev-{_slug(name)}"}))
            dev_runs[name], scores[name] = r, r.get(metric)
            log.info("dev split: %s -> %s %s", name, metric, scores[name])
    best = pick_best(scores) if scores else next(iter(candidates))
    final_run = train(fine_tune_cfg(run, **candidates[best], **final, test=True, **{
        "paths.output_dir": str(out / "final"), "run_name": f"{run.run_name}-final"}))
    return {"best": best, "dev": scores, "dev_runs": dev_runs, "final": final_run}


def pick_best(scores: Mapping[str, float | None]) -> str:
    """The name of the highest score; ties go to the first in order; None or NaN (a diverged run) scores lowest."""
    value = lambda s: -math.inf if s is None or math.isnan(s) else s  # noqa: E731
    return max(scores, key=lambda name: value(scores[name]))  # max keeps the first of equal keys


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


# ---- the candidates of this task ---------------------------------------------------------------------------
def lr_grid(cfg: DictConfig) -> list[float]:
    """``finetune.lr_grid``; else Table 4's grid for the recipe's data (``paper.data`` of experiment=paper/finetune_<d>),
    else Table 4's grid shared by every dataset but ImageNet."""
    grid = cfg.finetune.get("lr_grid")
    if grid is None:
        data = OmegaConf.select(cfg, "paper.data")
        grid = paper.finetune_row(str(data))["lr_grid"] if data else paper.FINETUNE["lr_grid"]
    if isinstance(grid, (int, float)) or not grid or any(not isinstance(v, (int, float)) or v <= 0 for v in grid):
        raise ConfigError(f"finetune.lr_grid={grid!r} must be a list of lrs > 0, e.g. finetune.lr_grid=[0.01,0.03]")
    return [float(v) for v in grid]


def recipes(cfg: DictConfig) -> tuple[str, ...]:
    """``finetune.recipe`` as the recipes to run: ``paper`` = both for a ResNet, Table 4's sweep otherwise."""
    recipe = str(cfg.finetune.get("recipe"))
    if recipe not in RECIPES:
        raise ConfigError(f"finetune.recipe={recipe!r} is not one of {RECIPES}")
    if recipe == "paper":
        convnet = not registry.get(cfg.model.get("family")).transformer  # the ResNets (and any CNN family)
        return ("table4", "bit_hyperrule") if convnet else ("table4",)
    return ("table4", "bit_hyperrule") if recipe == "both" else (recipe,)


def bit_hyperrule_values(cfg: DictConfig) -> dict[str, Any]:
    """BiT-HyperRule (:func:`vitlab.paper.bit_hyperrule`) as config values, for the size of the whole training split
    (the dev and the final run follow one schedule) and the data's image size (BiT's known sizes, else
    ``data.img_size``). ``finetune.bit_hyperrule.steps`` / ``.resolution`` shrink it (warmup and decay points scale
    with the steps). The batch stays the run's: BiT's 512 is Table 4's (``tests/test_paper.py``)."""
    whole = build_datamodule(fine_tune_cfg(cfg, **final_values(cfg)).data).stats()[M.DATA_TRAIN_SIZE]
    hw = paper.BIT_HYPERRULE["image_hw"].get(str(cfg.data.name), [int(cfg.data.img_size)] * 2)
    rule = paper.bit_hyperrule(whole, hw)
    own = cfg.finetune.get("bit_hyperrule") or {}
    steps = int(own.get("steps") or rule["steps"])
    precrop, crop = own.get("resolution") or (rule["precrop"], rule["crop"])
    log.info("BiT-HyperRule for %d training images of %s px: %s", whole, "x".join(map(str, hw)), rule)
    return {
        "optim.name": paper.BIT_HYPERRULE["optimizer"], "optim.lr": rule["lr"],
        "optim.momentum": paper.BIT_HYPERRULE["momentum"], "optim.weight_decay": paper.BIT_HYPERRULE["weight_decay"],
        "optim.grad_clip": paper.BIT_HYPERRULE["grad_clip"], "optim.decay": "step", "optim.decay_at": rule["decay_at"],
        "optim.decay_factor": paper.BIT_HYPERRULE["decay_factor"],
        "optim.warmup": max(1, round(rule["warmup_steps"] * steps / rule["steps"])),
        "trainer.max_steps": steps, "trainer.max_epochs": -1, "module.mixup_alpha": rule["mixup_alpha"],
        "data.img_size": int(crop), "data.eval_img_size": int(crop), "data.crop_pct": int(crop) / int(precrop),
        "data.train_pipeline": "finetune", "data.eval_pipeline": "eval", "data.eval_resize": "square",
    }


def candidates(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Name -> config values: ``table4 lr=<lr>`` for each lr of :func:`lr_grid`, and ``bit_hyperrule``."""
    out: dict[str, dict[str, Any]] = {}
    for recipe in recipes(cfg):
        if recipe == "table4":
            out.update({f"table4 lr={lr}": {"optim.lr": lr} for lr in lr_grid(cfg)})
        else:
            out["bit_hyperrule"] = bit_hyperrule_values(cfg)
    return out


def final_values(cfg: DictConfig) -> dict[str, Any]:
    """The final run: the entire training split (``data.val_fraction=0``), no validation (the last weights are
    tested, and the checkpoint is the final one)."""
    values: dict[str, Any] = {"trainer.limit_val_batches": 0}
    if "val_fraction" in cfg.data:
        values["data.val_fraction"] = 0.0
    if OmegaConf.select(cfg, "callbacks.model_checkpoint") is not None:
        values.update({"callbacks.model_checkpoint.monitor": None,
                       "callbacks.model_checkpoint.filename": "final-step{step:06d}"})
    return values


def check_dev_split(cfg: DictConfig, n_candidates: int) -> None:
    """A choice needs a dev split held out of train: with none, the datasets validate on test."""
    frac = cfg.data.get("val_fraction")
    if n_candidates > 1 and not frac:
        name = cfg.data.get("name")
        table4 = ", ".join(f"{row['dev_split']:g} {data}" for data, row in paper.TABLE4.items())
        raise ConfigError(
            f"vitlab.finetune chooses among {n_candidates} candidates on a dev split held out of train, but data={name} "
            f"has data.val_fraction={frac!r} (0 or none validates on test, and the choice would be made on test): "
            f"set data.val_fraction (Table 4: {table4}), or give one lr "
            f"(finetune.lr_grid=[0.01]) to train on the whole split only"
        )


@task_wrapper
def run_task(cfg: DictConfig) -> dict[str, Any]:
    cands = candidates(cfg)
    check_dev_split(cfg, len(cands))
    out = Path(cfg.paths.output_dir)
    run = fine_tune_cfg(cfg)
    metric = str(cfg.get("optimized_metric") or M.VAL_ACC_BEST)
    done = select_and_retrain(run, out, cands, dev={}, final=final_values(cfg), metric=metric)
    best, final = done["best"], done["final"]
    first_dev = next(iter(done["dev_runs"].values()), {})
    table = {name: {"recipe": name.split(" ")[0], "lr": float(values.get("optim.lr", cfg.optim.lr)),
                    metric: done["dev"].get(name)} for name, values in cands.items()}
    results = {
        M.FINETUNE_RECIPE: table[best]["recipe"], M.FINETUNE_LR: table[best]["lr"], M.FINETUNE_DEV: table,
        M.FINETUNE_DEV_TRAIN_SIZE: first_dev.get(M.DATA_TRAIN_SIZE), M.FINETUNE_DEV_VAL_SIZE: first_dev.get(M.DATA_VAL_SIZE),
        M.TEST_ACC: final.get(M.TEST_ACC), M.DATA_TRAIN_SIZE: final.get(M.DATA_TRAIN_SIZE),
        M.DATA_NAME: final.get(M.DATA_NAME), M.MODEL_NAME: final.get(M.MODEL_NAME),
        M.MODEL_PARAMS_M: final.get(M.MODEL_PARAMS_M), M.TEST_CKPT: final.get(M.TEST_CKPT),
        "optimized_metric": metric, "output_dir": str(out),
    }
    report(out, results)
    print(format_table(results))
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """The dev table, the choice and the final run's test accuracy, as printed at the end of the task."""
    metric = results["optimized_metric"]
    rows = [f"{'candidate':<16} {'recipe':<14} {'lr':>8}  dev {metric}"]
    for name, r in results[M.FINETUNE_DEV].items():
        score = "-" if r[metric] is None else f"{r[metric]:.4f}"
        rows.append(f"{name:<16} {r['recipe']:<14} {r['lr']:>8g}  {score}")
    test = results[M.TEST_ACC]
    rows.append(f"chosen: {results[M.FINETUNE_RECIPE]} lr {results[M.FINETUNE_LR]:g} (dev: "
                f"{results[M.FINETUNE_DEV_TRAIN_SIZE] or '-'} train / {results[M.FINETUNE_DEV_VAL_SIZE] or '-'} dev images)"
                f" -> trained on all {results[M.DATA_TRAIN_SIZE]} training images: "
                f"test accuracy {'-' if test is None else f'{test:.4f}'}")
    return "\n".join(rows)


main = hydra_app("finetune", returns=M.TEST_ACC)(run_task)

if __name__ == "__main__":
    main()
