"""Evaluation protocols inside training, as big_vision lists its evaluators under ``evals``.

One generic callback runs any protocol of :mod:`vitlab.protocols` by name; its yaml is the protocol's own,
``conf/protocol/<name>.yaml``, placed under ``callbacks``:

    python -m vitlab.train +protocol@callbacks.knn=knn                 # k-NN on the training data, every epoch
    python -m vitlab.train callbacks=fewshot                           # few-shot on digits (conf/callbacks/fewshot.yaml)
    python -m vitlab.train +protocol@callbacks.knn=knn +callbacks.knn.every_n_epochs=5
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vitlab import protocols
from vitlab.errors import ConfigError


class ProtocolCallback(L.Callback):
    """Runs protocol ``name`` on the network being trained and logs its metrics (e.g. ``knn/<data>_top1``).

    ``data``: a data config (``_target_`` + kwargs, built at the model's resolution when first used) or a
    DataModule; None = the training run's own DataModule. The evaluation runs at the end of every
    ``every_n_epochs``-th validation epoch and of the last one, on the weights being validated (the EMA weights
    when EMA is on). ``options`` are the protocol's (``conf/protocol/<name>.yaml``), checked when the
    callback is built.
    """

    def __init__(self, name: str, data: Any = None, every_n_epochs: int = 1, img_size: int | None = None,
                 **options: Any) -> None:
        self.module = protocols.find(name)
        if int(every_n_epochs) < 1:
            raise ConfigError(f"callbacks.{name}.every_n_epochs={every_n_epochs} must be >= 1")
        self.name, self.data_cfg, self.img_size = name, data, img_size
        self.every_n_epochs = int(every_n_epochs)
        self.options = options
        self.evaluator = None
        self.last: dict[str, float] = {}

    def _build(self, trainer: L.Trainer, pl_module: L.LightningModule):
        if self.evaluator is None:
            dm = self.data_cfg
            if dm is None:
                dm = trainer.datamodule
            elif not isinstance(dm, L.LightningDataModule):
                cfg = dm if OmegaConf.is_config(dm) else OmegaConf.create(dm)
                size = self.img_size or _model_img_size(pl_module)
                if size:  # the frozen ViT only takes its own resolution
                    cfg = OmegaConf.merge(cfg, {"img_size": size, "eval_img_size": size})
                dm = instantiate(cfg, _convert_="all")
            self.evaluator = protocols.build(self.name, dm, **self.options)
        return self.evaluator

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not (epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs):
            return
        evaluator = self._build(trainer, pl_module)
        self.last = evaluator.evaluate(pl_module.net)
        pl_module.log_dict(evaluator.logged(self.last), on_step=False, on_epoch=True, sync_dist=False)


def _model_img_size(pl_module: L.LightningModule) -> int | None:
    model_cfg = getattr(pl_module, "hparams", {}).get("model") or {}
    size = model_cfg.get("img_size")
    return int(size) if size else None
