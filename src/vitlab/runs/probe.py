"""The frozen-network evaluation behind ``python -m vitlab.probe`` and ``python -m vitlab.fewshot``: load the
network (a vitlab checkpoint, or ``model=`` + ``model.pretrained=``), run the named protocol
(``vitlab.protocols.<name>``, options ``conf/protocol/<name>.yaml``) on ``data=``, print its table, write
``metrics.json`` with its metrics (``fewshot/<data>_<k>shot``, ``knn/<data>_top1``, ...) and log them. ViT
checkpoints are evaluated at their own resolution (the data is resized to it).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import metrics as M
from vitlab import protocols
from vitlab.checks import check_seed
from vitlab.errors import ConfigError
from vitlab.models import build_model, registry
from vitlab.models.pretrained import load_pretrained
from vitlab.runs.assemble import build_datamodule, build_loggers, report
from vitlab.runs.read import read_run
from vitlab.tasks import task_wrapper
from vitlab.utils.plain import to_plain

#: the headline number of a run (what ``main`` returns to a sweeper): the evaluator's ``score_key`` metric
SCORE = "protocol/score"


def load_backbone(cfg: DictConfig):
    """The frozen network: from a vitlab checkpoint (its own model config), or ``model=`` + ``model.pretrained=``."""
    if cfg.get("ckpt_path"):
        run = read_run(cfg.ckpt_path, cfg, with_data=False)  # data is this task's own (data=...)
        net = run.build_net()  # headless for a masked-patch-prediction checkpoint
        return net, {**run.model, "num_classes": net.num_classes}
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


def probe_data_cfg(cfg: DictConfig, model_cfg: dict[str, Any]) -> DictConfig:
    data = OmegaConf.create(to_plain(cfg.data))
    size = model_cfg.get("img_size")

    if registry.get(model_cfg.get("family")).transformer and size:
        with open_dict(data):  # a ViT takes only its own resolution (position embeddings are not resized here)
            data.img_size = int(size)
            data.eval_img_size = int(size)
    return data


@task_wrapper
def probe(cfg: DictConfig) -> dict[str, Any]:
    """Load the frozen network, run ``cfg.protocol`` on ``cfg.data``, print its table, write ``metrics.json``."""
    if cfg.get("data") is None:
        raise ConfigError("choose the dataset to evaluate on: data=<name> (e.g. data=digits)")
    name = str(cfg.protocol.name)
    protocols.find(name)  # an unknown name is refused before the checkpoint is read
    check_seed(cfg.get("seed"))
    L.seed_everything(cfg.seed)
    net, model_cfg = load_backbone(cfg)
    ev = protocols.build(name, build_datamodule(probe_data_cfg(cfg, model_cfg)), **protocols.options(cfg.protocol))
    res = ev.evaluate(net)
    results = {**res, **ev.about(), SCORE: res[ev.score_key], "protocol": name, "ckpt_path": cfg.get("ckpt_path"),
               M.MODEL_NAME: model_cfg.get("name"), M.DATA_NAME: ev.name}
    report(cfg.paths.output_dir, results)
    rows = ev.rows(res)
    for lg in build_loggers(cfg.get("logger")):  # task_wrapper finishes the W&B run
        lg.log_metrics({k: v for k, v in res.items() if isinstance(v, float)})
        if isinstance(lg, WandbLogger):  # the table as a wandb.Table, next to the scalars
            lg.log_table(f"{name}/table", columns=list(rows[0]), data=[list(r.values()) for r in rows])
        lg.finalize("success")
    print(f"\n{ev.summary(res)}\noutputs: {cfg.paths.output_dir}")
    return results

