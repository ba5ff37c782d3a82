"""vitlab.evaluate: reload a checkpoint and reproduce its test accuracy.

    python -m vitlab.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m vitlab.evaluate ckpt_path=<ckpt> data=digits data.eval_batch_size=512
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.config import ConfigError
from vitlab.tasks import hydra_app, print_metrics, scalar_metrics, task_wrapper, write_results

log = logging.getLogger("vitlab.evaluate")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vitlab checkpoint safely (``weights_only=True``) with an error that names the file."""
    import torch

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file ({p.resolve()})")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"ckpt_path={path} is not a readable vitlab checkpoint ({type(e).__name__}: {e})") from e


def _cli_overrides(prefix: str) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o.lstrip("+") for o in HydraConfig.get().overrides.task if o.lstrip("+").startswith(prefix)]


def eval_data_cfg(cfg: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """The data config to evaluate on: the checkpoint's own unless another dataset is chosen, plus CLI edits."""
    saved_data = saved.get("data")
    chosen = cfg.get("data")
    if chosen is None and saved_data is None:
        raise ConfigError("this checkpoint stores no data config: choose one with data=<name>")
    if chosen is None or (saved_data is not None and chosen.get("name") == saved_data.get("name")):
        data = OmegaConf.create(saved_data)
        edits = _cli_overrides("data.")
        if edits:
            data = OmegaConf.merge(data, OmegaConf.from_dotlist([e[len("data."):] for e in edits]))
        return data
    return chosen


def load_run(cfg: DictConfig, families: tuple[str, ...] | None = None):
    """Checkpoint -> (saved config, module, data config, DataModule) for the tasks that inspect a finished run.

    The data config is the checkpoint's own unless ``data=`` picks another dataset (``eval_data_cfg``);
    ``families`` restricts which model families the calling task accepts.
    """
    import lightning as L
    from hydra.utils import instantiate

    from vitlab.modules import ClassificationModule

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'val']")
    ckpt = load_checkpoint(cfg.ckpt_path)
    saved = ckpt.get("vitlab_config") or {}
    family = (saved.get("model") or ckpt.get("hyper_parameters", {}).get("model") or {}).get("family")
    if families is not None and family not in (None, *families):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} holds a {family!r} model; this task takes model.family in "
                          f"{list(families)}")
    L.seed_everything(cfg.seed, workers=True)
    module = ClassificationModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
    data_cfg = eval_data_cfg(cfg, saved)
    dm = instantiate(data_cfg, _convert_="all")
    return saved, module, data_cfg, dm


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from vitlab.utils.instantiate import build_loggers

    saved, module, data_cfg, dm = load_run(cfg)
    if int(dm.num_classes) != module.num_classes:
        raise ConfigError(
            f"data {data_cfg.get('name')} has {dm.num_classes} classes but the checkpoint's head has "
            f"{module.num_classes}: evaluate on the dataset it was trained on, or fine-tune first"
        )
    loggers = build_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[], enable_checkpointing=False,
                          default_root_dir=cfg.paths.output_dir)
    run = trainer.validate if cfg.split == "val" else trainer.test
    (metrics,) = run(module, datamodule=dm, verbose=False)
    metrics = scalar_metrics(metrics)
    results = {**metrics, "ckpt_path": str(cfg.ckpt_path), "data/name": data_cfg.get("name"),
               "model/name": (saved.get("model") or {}).get("name")}
    write_results(cfg.paths.output_dir, results)
    print_metrics(metrics)
    return results


@hydra_app("evaluate")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get("test/acc")


if __name__ == "__main__":
    main()
