"""Evaluation protocols, found by name as big_vision's evaluators are (``big_vision/evaluators/<name>.py``).

A frozen-network protocol is one module ``vitlab.protocols.<name>`` with a class ``Evaluator`` plus one yaml,
``conf/protocol/<name>.yaml`` (its ``name`` and options, each default stated there once). The same yaml runs

- as a task: ``python -m vitlab.probe protocol=<name> ckpt_path=<ckpt> data=<data>`` (``vitlab.probe``), and
- inside training: ``python -m vitlab.train +protocol@callbacks.<name>=<name>``: its ``_target_`` is the one
  generic callback, :class:`vitlab.callbacks.protocols.ProtocolCallback`, which runs it every
  ``every_n_epochs`` epochs (big_vision's ``evals``).

``Evaluator(datamodule, **options)`` checks its options when built; ``evaluate(net)`` returns the scalar metrics
(``<name>/...``), ``summary(results)`` the table the task prints, ``rows(results)`` the W&B table's rows and
``about()`` what the task records beside the numbers in ``metrics.json``, ``score_key`` the headline metric
and ``logged(results)`` what a training run logs.

Protocols today: ``fewshot`` (few-shot linear probes, paper §4.1) and ``knn`` (k-NN on frozen features). The other
modules here are multirun summaries, not frozen-network protocols: ``vtab`` (the VTAB-1k suite), ``transfer``
(pretrain -> fine-tune) and ``ablation`` (an Appendix D table beside the sweep's numbers).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vitlab.data.base import TransformedDataset, dataset_targets
from vitlab.data.transforms import build_transform
from vitlab.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: keys of ``conf/protocol/<name>.yaml`` that are the callback's (Hydra's and ``ProtocolCallback``'s), not options
NOT_OPTIONS = ("_target_", "_recursive_", "name", "every_n_epochs", "data", "img_size")


def available() -> list[str]:
    """The names of the frozen-network protocols: the modules of this package that define ``Evaluator``."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if _NAME.match(m.name)]
    return sorted(n for n in names if hasattr(importlib.import_module(f"{__name__}.{n}"), "Evaluator"))


def find(name: str) -> ModuleType:
    """The module of protocol ``name`` (``vitlab.protocols.<name>``); a name that is none is refused, listing them."""
    module = None
    if isinstance(name, str) and _NAME.match(name) and any(m.name == name for m in pkgutil.iter_modules(__path__)):
        module = importlib.import_module(f"{__name__}.{name}")
    if module is None or not hasattr(module, "Evaluator"):
        raise ConfigError(f"protocol name={name!r} is not an evaluation protocol; choose from {available()} "
                            "(a new one is vitlab/protocols/<name>.py with an Evaluator + conf/protocol/<name>.yaml)")
    return module


def build(name: str, datamodule: Any, **options: Any):
    """``vitlab.protocols.<name>.Evaluator(datamodule, **options)``; its own checks raise :class:`vitlab.errors.ConfigError`."""
    try:
        return find(name).Evaluator(datamodule, **options)
    except TypeError as e:  # an option the protocol does not have
        raise ConfigError(f"protocol {name}: {e}; its options are the keys of conf/protocol/{name}.yaml") from None


def options(cfg: Any) -> dict[str, Any]:
    """The evaluator's options from a ``conf/protocol/<name>.yaml`` mapping: everything but the callback's keys."""
    return {k: v for k, v in dict(cfg).items() if k not in NOT_OPTIONS}


# ---------------------------------------------------------------------------------------------------------
# What every frozen-network protocol shares: the representation, its features, the eval view of a split
# ---------------------------------------------------------------------------------------------------------

def representation(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pre-logits representation: pooled features, through the pretraining tanh layer if there is one."""
    feats = net.forward_features(x)
    pooled = net.forward_head(feats, pre_logits=True)
    head = getattr(net, "head", None)
    if isinstance(head, nn.Sequential) and hasattr(head, "pre_logits"):
        pooled = head.pre_logits(pooled)
    return pooled.flatten(1)


@torch.no_grad()
def extract_features(net: nn.Module, ds: Dataset, batch_size: int = 256, device: torch.device | str | None = None,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of every image of ``ds`` (in order), the network in eval mode, then restored."""
    was_training = net.training
    net.eval()
    device = device or next(net.parameters()).device
    xs, ys = [], []
    for x, y, *_ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        xs.append(representation(net, x.to(device)).float().cpu())
        ys.append(torch.as_tensor(y))
    net.train(was_training)
    return torch.cat(xs), torch.cat(ys).long()


def eval_view(dm: Any, split: str, pipeline: str | None = None) -> Dataset:
    """A split with the *eval* pipeline (no augmentation), also for the training images: the DataModule's own, or
    the named one of :mod:`vitlab.data.transforms` at the DataModule's eval resolution (few-shot: ``fewshot``)."""
    dm.setup()
    ds = getattr(dm, f"{split}_set")
    if pipeline is not None:
        return TransformedDataset(ds.base, build_transform(pipeline, dm.eval_img_size, dm.normalization))
    if split == "train":
        return TransformedDataset(ds.base, dm.eval_transform())
    return ds


def labels(ds: Dataset) -> np.ndarray:
    return np.asarray(dataset_targets(ds))


def cap(ds: Dataset, n: int | None) -> Dataset:
    """At most ``n`` images of ``ds`` (a seeded, sorted draw); None or 0 = all."""
    if not n or len(ds) <= n:
        return ds
    idx = np.random.default_rng(0).choice(len(ds), int(n), replace=False)
    return Subset(ds, np.sort(idx).tolist())
