"""Few-shot linear evaluation inside training, as big_vision lists ``fewshot_lsr`` under ``evals``.

The evaluator (whitening, closed-form ridge, nested shot sets, the paper's fixed L2) is
:class:`vitlab.protocols.fewshot.FewShotEvaluator`, the same one ``python -m vitlab.fewshot`` runs standalone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L

from vitlab.protocols.fewshot import L2_FIXED, FewShotEvaluator


class FewShotCallback(L.Callback):
    """Runs the few-shot evaluator during training and logs ``fewshot/<data>_<k>shot`` (big_vision's ``evals``).

    ``data`` is a data config (``_target_`` + kwargs, e.g. ``${data}`` or another dataset) or a DataModule.
    The evaluation runs at the end of every ``every_n_epochs``-th validation epoch, on the weights being
    validated (the EMA weights when EMA is on), and at the end of training.
    """

    def __init__(self, data: Any, shots: Sequence[int] = (1, 5, 10), seeds: int = 3, every_n_epochs: int = 1,
                 max_eval: int | None = 2000, img_size: int | None = None, batch_size: int = 256,
                 l2_select: str = "fixed", l2: float = L2_FIXED, l2_grid: Sequence[float] | None = None) -> None:
        self.data_cfg = data
        self.shots, self.seeds = list(shots), int(seeds)
        self.l2_select, self.l2, self.l2_grid = l2_select, float(l2), l2_grid
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.max_eval, self.img_size, self.batch_size = max_eval, img_size, batch_size
        self.evaluator: FewShotEvaluator | None = None
        self.last: dict[str, float] = {}

    def _build(self, pl_module: L.LightningModule) -> FewShotEvaluator:
        if self.evaluator is None:
            dm = self.data_cfg
            if not isinstance(dm, L.LightningDataModule):
                from hydra.utils import instantiate
                from omegaconf import OmegaConf

                cfg = OmegaConf.create(dm) if not OmegaConf.is_config(dm) else dm
                size = self.img_size or _model_img_size(pl_module)
                if size:  # the frozen ViT only takes its own resolution
                    cfg = OmegaConf.merge(cfg, {"img_size": size, "eval_img_size": size})
                dm = instantiate(cfg, _convert_="all")
            self.evaluator = FewShotEvaluator(dm, self.shots, self.seeds, l2_grid=self.l2_grid, max_eval=self.max_eval,
                                              batch_size=self.batch_size, l2_select=self.l2_select, l2=self.l2)
        return self.evaluator

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        res = self._build(pl_module).evaluate(pl_module.net)
        self.last = res
        main = {k: v for k, v in res.items() if not k.endswith(("_std", "_l2"))}
        pl_module.log_dict(main, on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or trainer.current_epoch + 1 == trainer.max_epochs:
            self._run(trainer, pl_module)


def _model_img_size(pl_module: L.LightningModule) -> int | None:
    model_cfg = getattr(pl_module, "hparams", {}).get("model") or {}
    size = model_cfg.get("img_size")
    return int(size) if size else None

