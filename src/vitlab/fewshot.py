"""vitlab.fewshot: few-shot linear accuracy of a frozen model (paper §4.1; big_vision's ``fewshot_lsr``).

    python -m vitlab.fewshot ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt data=digits
    python -m vitlab.fewshot model=vit_b16 model.pretrained=ViT-B_16.npz data=cifar10 data.root=/data/cifar
    python -m vitlab.fewshot ckpt_path=<ckpt> data=shapes 'shots=[1,5]' seeds=5

Prints a table (data, shots, mean accuracy over seeds, std, chosen L2) and writes ``metrics.json`` with
``fewshot/<data>_<k>shot``. ViT checkpoints are evaluated at their own resolution (the data is resized to it).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab.checks import check_seed
from vitlab.errors import ConfigError
from vitlab.runs.assemble import build_datamodule, report
from vitlab.tasks import hydra_app, task_wrapper
from vitlab.utils.plain import to_plain

log = logging.getLogger("vitlab.fewshot")


def load_backbone(cfg: DictConfig):
    """The frozen network: from a vitlab checkpoint (its own model config), or ``model=`` + ``model.pretrained=``."""
    from vitlab.models import build_model
    from vitlab.models.pretrained import load_pretrained
    from vitlab.runs import read_run

    if cfg.get("ckpt_path"):
        run = read_run(cfg.ckpt_path, cfg, with_data=False)  # data is this task's own (data=...)
        model_cfg = run.model
        if not any(k.startswith("net.head.") for k in run.checkpoint.get("state_dict", {})):
            model_cfg = {**model_cfg, "num_classes": 0}  # e.g. masked patch prediction: a backbone without head
        net = build_model(**model_cfg)
        load_pretrained(net, cfg.ckpt_path, keep_head=True)
        return net, dict(model_cfg)
    random_init = bool(cfg.get("random_init"))
    if cfg.get("model") is None or not (cfg.model.get("pretrained") or random_init):
        raise ConfigError("give ckpt_path=<vitlab .ckpt>, or model=<name> model.pretrained=<.npz/.safetensors/.pth>, "
                          "or model=<name> random_init=true for the untrained baseline")
    model_cfg = to_plain(cfg.model)
    if random_init:  # the baseline a pretrained representation has to beat: same architecture, seeded random weights
        torch.manual_seed(int(cfg.get("seed", 0)))
    net = build_model(**model_cfg)
    if not random_init:
        load_pretrained(net, cfg.model.pretrained, keep_head=bool(cfg.model.get("pretrained_keep_head")),
                        pos_embed_resize=cfg.model.get("pos_embed_resize"))
    return net, model_cfg


def fewshot_data_cfg(cfg: DictConfig, model_cfg: dict[str, Any]) -> DictConfig:
    data = OmegaConf.create(to_plain(cfg.data))
    size = model_cfg.get("img_size")
    from vitlab.models import registry

    if registry.get(model_cfg.get("family")).transformer and size:
        with open_dict(data):  # a ViT takes only its own resolution (position embeddings are not resized here)
            data.img_size = int(size)
            data.eval_img_size = int(size)
    return data


@task_wrapper
def fewshot(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from vitlab.protocols.fewshot import L2_FIXED, FewShotEvaluator, format_table
    from vitlab.report.wandb_dash import log_table
    from vitlab.utils.instantiate import build_loggers

    if cfg.get("data") is None:
        raise ConfigError("choose the dataset to evaluate on: data=<name> (e.g. data=digits)")
    check_seed(cfg.get("seed"))
    L.seed_everything(cfg.seed)
    net, model_cfg = load_backbone(cfg)
    dm = build_datamodule(fewshot_data_cfg(cfg, model_cfg))
    shots = [int(k) for k in cfg.shots]
    l2_select = cfg.get("l2_select", "fixed")
    try:
        ev = FewShotEvaluator(dm, shots=shots, seeds=cfg.seeds, l2_grid=cfg.get("l2_grid"), max_eval=cfg.get("max_eval"),
                              batch_size=cfg.batch_size, l2_select=l2_select, l2=cfg.get("l2") or L2_FIXED)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    res = ev.evaluate(net)
    table = format_table(res, ev.name, shots)
    results = {**res, "ckpt_path": cfg.get("ckpt_path"), M.MODEL_NAME: model_cfg.get("name"), M.DATA_NAME: ev.name,
               M.FEWSHOT_SEEDS: int(cfg.seeds), M.FEWSHOT_L2_SELECT: l2_select}
    report(cfg.paths.output_dir, results)
    rows = [{"data": ev.name, "shots": k, "accuracy": res[M.fewshot_key(ev.name, k)],
             "std": res[M.fewshot_key(ev.name, k) + "_std"], "l2": res[M.fewshot_key(ev.name, k) + "_l2"]} for k in shots]
    for lg in build_loggers(cfg.get("logger")):  # task_wrapper finishes the W&B run
        lg.log_metrics({k: v for k, v in res.items() if isinstance(v, float)})
        if isinstance(lg, WandbLogger):  # the table as a wandb.Table, next to the scalars
            log_table(lg.experiment, M.FEWSHOT_TABLE, rows, ["data", "shots", "accuracy", "std", "l2"])
        lg.finalize("success")
    how = f"fixed L2 = {ev.l2:g}, nested shot sets" if l2_select == "fixed" else "L2 chosen on val from l2_grid"
    print(f"\nfew-shot linear accuracy ({cfg.seeds} seeds, {how}):\n{table}\noutputs: {cfg.paths.output_dir}")
    return results


@hydra_app("fewshot")
def main(cfg: DictConfig) -> float | None:
    res = fewshot(cfg)
    return res.get(M.fewshot_key(res[M.DATA_NAME], cfg.shots[-1]))


if __name__ == "__main__":
    main()
