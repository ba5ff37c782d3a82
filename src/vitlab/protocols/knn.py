"""k-NN accuracy of frozen features: the weighted k-nearest-neighbour classifier of Wu et al. 2018 and DINO.

The training images' representations (eval pipeline, no augmentation) are the memory bank; each test image's
representation votes with its ``k`` most cosine-similar bank entries, neighbour ``i`` with weight
``exp(s_i / temperature)`` for its label, and the class with the largest summed weight is the prediction:

- Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018:
  the weighted k-NN classifier, votes ``exp(s_i / tau)`` with tau = 0.07;
- Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021, and its
  ``eval_knn.py`` (``knn_classifier``: L2-normalised features, ``similarity.topk(k)``,
  ``distances.div_(T).exp_()``, default ``T = 0.07``), which reports k = 20 neighbours as consistently best.

So the defaults, ``conf/protocol/knn.yaml``: ``k = 20``, ``temperature = 0.07``. Not a number of the ViT paper
(which reports few-shot linear probes, :mod:`vitlab.protocols.fewshot`); the field's common frozen-feature
check, e.g. for masked patch prediction or any other pretraining.

Logged as ``knn/<data>_top1`` (and ``knn/<data>_top5`` with at least 5 classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitlab.errors import ConfigError
from vitlab.protocols import cap, eval_view, extract_features


def key(data: str, metric: str) -> str:
    """``knn/<data>_<metric>``, e.g. ``knn/digits_top1``."""
    return f"knn/{data}_{metric}"


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int, temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Class scores ``(len(queries), num_classes)`` of weighted k-NN voting over cosine similarity.

    Features are L2-normalised; each query's ``k`` most similar bank entries (fewer if the bank is smaller)
    add ``exp(similarity / temperature)`` to their label's score. Queries go in chunks to bound memory.
    """
    bank = nn.functional.normalize(bank.float(), dim=1)
    k = min(int(k), bank.shape[0])
    out = []
    for q in torch.split(nn.functional.normalize(queries.float(), dim=1), chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes)
        out.append(votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp()))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, k: int, temperature: float) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` (top5 only with at least 5 classes) of :func:`knn_predict`."""
    scores = knn_predict(bank, bank_labels.long(), queries, num_classes, k, temperature)
    out = {"top1": scores.argmax(1).eq(labels).double().mean().item()}
    if num_classes >= 5:
        out["top5"] = scores.topk(5, dim=1).indices.eq(labels[:, None]).any(1).double().mean().item()
    return out


class Evaluator:
    """Weighted k-NN accuracy of a frozen network: train split = memory bank, test split = queries.

    Every option is given (its default is stated once, in ``conf/protocol/knn.yaml``) and checked here.
    """

    def __init__(self, datamodule, *, k: int, temperature: float, max_train: int | None, max_eval: int | None,
                 batch_size: int, name: str | None = None) -> None:
        if int(k) < 1:
            raise ConfigError(f"knn k={k} must be >= 1 (the field's convention is 20)")
        if not float(temperature) > 0:
            raise ConfigError(f"knn temperature={temperature} must be > 0 (DINO's eval_knn.py uses 0.07)")
        for opt, v in (("max_train", max_train), ("max_eval", max_eval)):
            if v is not None and int(v) < 1:
                raise ConfigError(f"knn {opt}={v} must be >= 1, or null for every image")
        self.dm = datamodule
        self.k, self.temperature = int(k), float(temperature)
        self.max_train, self.max_eval, self.batch_size = max_train, max_eval, int(batch_size)
        self.name = name or getattr(datamodule, "name", "data")

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        """``{knn/<data>_top1, knn/<data>_top5}``: test accuracy of weighted k-NN over the training features."""
        bank, bank_y = extract_features(net, cap(eval_view(self.dm, "train"), self.max_train), self.batch_size)
        xt, yt = extract_features(net, cap(eval_view(self.dm, "test"), self.max_eval), self.batch_size)
        res = knn_accuracy(bank, bank_y, xt, yt, int(self.dm.num_classes), self.k, self.temperature)
        return {key(self.name, m): v for m, v in res.items()}

    @property
    def score_key(self) -> str:
        """The headline metric: top-1 accuracy."""
        return key(self.name, "top1")

    def logged(self, results: dict[str, float]) -> dict[str, float]:
        return dict(results)

    def rows(self, results: dict[str, float]) -> list[dict[str, Any]]:
        return [{"data": self.name, "k": self.k, "temperature": self.temperature, "top1": results[key(self.name, "top1")],
                 "top5": results.get(key(self.name, "top5"))}]

    def about(self) -> dict[str, Any]:
        return {"knn/k": self.k, "knn/temperature": self.temperature}

    def summary(self, results: dict[str, float]) -> str:
        (r,) = self.rows(results)
        top5 = "-" if r["top5"] is None else f"{r['top5']:.2%}"
        return (f"k-NN accuracy (k = {self.k}, cosine similarity, votes exp(s / {self.temperature:g})):\n"
                "| data | k | top-1 | top-5 |\n|---|---|---|---|\n"
                f"| {r['data']} | {self.k} | {r['top1']:.2%} | {top5} |")
