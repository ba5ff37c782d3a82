"""Few-shot linear evaluation (paper §4.1), as big_vision's ``fewshot_lsr`` evaluator does it.

Frozen features of k images per class are whitened (per-feature mean/std of the k-shot set), a constant
feature of 100 is appended as an almost unregularised bias, and an L2-regularised least-squares map onto
{-1, 1}^K one-hot targets is solved in closed form: one eigendecomposition, of x^T x (D x D) when N >= D,
of x x^T (N x N) otherwise. As in big_vision (``evaluators/fewshot_lsr.py``, ``configs/common_fewshot.py``):

- the L2 penalty is fixed, ``l2 = 2^10``;
- the shot sets are nested: per seed, one random permutation of each class's training images, and the
  k-shot set is its first k images (the 5-shot set lies inside the 10-shot set);
- the reported number is the mean test accuracy over ``seeds`` = 3 such draws (seeds 0, 1, 2);
- every image (k-shot, val and test) goes through big_vision's few-shot preprocessing,
  ``resize(256) | central_crop(224)``, whatever the DataModule's own eval pipeline: :data:`PIPELINE`, the
  ``fewshot`` pipeline of :mod:`vitlab.data.transforms` (the rule, and how it scales to other resolutions).

vitlab's option beyond the paper, ``l2_select=val_grid``: pick the penalty on the dataset's *validation*
split from :data:`L2_GRID` (2^-10 ... 2^19; vitlab's grid, not big_vision's), so the test split still
selects nothing.

Options and their defaults: ``conf/protocol/fewshot.yaml``. The same :class:`Evaluator` runs standalone
(``python -m vitlab.fewshot``) and periodically inside training (``callbacks=fewshot``, the generic
:class:`vitlab.callbacks.protocols.ProtocolCallback`), logging ``fewshot/<data>_<k>shot``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from vitlab import metrics as M
from vitlab.errors import ConfigError
from vitlab.protocols import cap, eval_view, extract_features, labels

BIAS_CONSTANT = 100.0
#: the paper's fixed penalty: big_vision ``configs/common_fewshot.py`` (``config.fewshot.l2_reg = 2.0 ** 10``)
L2_FIXED = 2.0**10
#: vitlab's grid for ``l2_select=val_grid``: 2^-10 ... 2^19, the penalty chosen on the validation split
L2_GRID: tuple[float, ...] = tuple(2.0**i for i in range(-10, 20))
#: ``l2_select``: fixed (the paper / big_vision) | val_grid (vitlab's option)
L2_SELECT = ("fixed", "val_grid")
#: the images' preprocessing: big_vision ``configs/common_fewshot.py`` (``pp_train`` = ``pp_eval`` =
#: ``decode|resize(256)|central_crop(224)|value_range(-1,1)``), :func:`vitlab.data.transforms.build_transform`
PIPELINE = "fewshot"


# ---------------------------------------------------------------------------------------------------------
# The closed-form solver
# ---------------------------------------------------------------------------------------------------------

@dataclass
class RidgeCache:
    """Everything needed to solve for any L2 penalty: ``w(l2) = lhs diag(1 / (eigs + l2)) rhs``."""

    eigs: torch.Tensor
    lhs: torch.Tensor
    rhs: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def weights(self, l2: float) -> torch.Tensor:
        return (self.lhs * (1.0 / (self.eigs + l2)).unsqueeze(0)) @ self.rhs

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return _with_bias((x.double() - self.mean) / self.std)

    def predict(self, x: torch.Tensor, l2: float) -> torch.Tensor:
        return (self.prepare(x) @ self.weights(l2)).argmax(1)


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], 1), BIAS_CONSTANT, dtype=x.dtype)], 1)


def targets_pm1(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rescaled into {-1, 1}."""
    return 2.0 * torch.nn.functional.one_hot(y.long(), num_classes).double() - 1.0


def precompute(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> RidgeCache:
    """Whiten, add the bias feature, eigendecompose x^T x (N >= D) or x x^T (N < D). float64 throughout."""
    x = x.double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True, unbiased=False) + 1e-5
    xb = _with_bias((x - mean) / std)
    t = targets_pm1(y, num_classes)
    n, d = xb.shape
    if n >= d:
        eigs, q = torch.linalg.eigh(xb.T @ xb)
        rhs, lhs = q.T @ (xb.T @ t), q
    else:
        eigs, q = torch.linalg.eigh(xb @ xb.T)
        rhs, lhs = q.T @ t, xb.T @ q
    return RidgeCache(eigs=eigs, lhs=lhs, rhs=rhs, mean=mean, std=std)


def ridge_direct(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor:
    """Reference: the same regression by a direct solve, (X^T X + l2 I)^-1 X^T T (for tests)."""
    x = x.double()
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True, unbiased=False) + 1e-5
    xb = _with_bias((x - mean) / std)
    return torch.linalg.solve(xb.T @ xb + l2 * torch.eye(xb.shape[1], dtype=xb.dtype), xb.T @ targets_pm1(y, num_classes))


def kshot_indices(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """``shots`` examples of every class, exactly as big_vision's ``fewshot_lsr`` draws them.

    ``np.random.default_rng(seed)`` permutes each class's indices once (classes in order); the k-shot set is the
    first k of every permutation. So for one seed the sets are nested: the 5-shot set is inside the 10-shot set.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels) if num_classes is None else np.arange(num_classes)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for c, perm in zip(classes, perms, strict=True):
        if len(perm) < shots:
            raise ValueError(f"class {c} has {len(perm)} training examples, fewer than {shots} shots")
    return np.concatenate([perm[:shots] for perm in perms])


def fewshot_accuracy(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor | None, y_val: torch.Tensor | None,
    x_test: torch.Tensor, y_test: torch.Tensor, num_classes: int, l2_grid: Sequence[float] = L2_GRID,
    l2: float | None = None,
) -> dict[str, float]:
    """Fit on the k-shot set and report test accuracy: at the fixed ``l2`` when given (big_vision; val unused),
    otherwise at the penalty of ``l2_grid`` that is best on val (``l2_select=val_grid``)."""
    cache = precompute(x_train, y_train, num_classes)
    xt = cache.prepare(x_test)
    if l2 is not None:
        test = (xt @ cache.weights(float(l2))).argmax(1).eq(y_test).double().mean().item()
        return {"val": float("nan"), "test": test, "l2": float(l2)}
    if x_val is None or y_val is None:
        raise ValueError("choosing L2 on val (l2_select=val_grid) needs validation features")
    xv = cache.prepare(x_val)
    best_l2, best_val = None, -1.0
    for cand in l2_grid:
        w = cache.weights(cand)
        acc = (xv @ w).argmax(1).eq(y_val).double().mean().item()
        if acc > best_val:
            best_l2, best_val = cand, acc
    test = (xt @ cache.weights(best_l2)).argmax(1).eq(y_test).double().mean().item()
    return {"val": best_val, "test": test, "l2": best_l2}


# ---------------------------------------------------------------------------------------------------------
# The evaluator: a DataModule + shots + seeds (options: conf/protocol/fewshot.yaml)
# ---------------------------------------------------------------------------------------------------------

class Evaluator:
    """k-shot linear accuracy of a frozen network on one dataset, averaged over seeds.

    Every option is given (its default is stated once, in ``conf/protocol/fewshot.yaml``) and checked here.
    """

    def __init__(self, datamodule, *, shots: Sequence[int], seeds: int, l2_select: str, l2: float,
                 l2_grid: Sequence[float] | None, max_eval: int | None, batch_size: int, name: str | None = None) -> None:
        if not shots or any(int(k) < 1 for k in shots):
            raise ConfigError(f"fewshot shots={list(shots)} must be positive ints")
        if int(seeds) < 1:
            raise ConfigError(f"fewshot seeds={seeds} must be >= 1")
        if l2_select not in L2_SELECT:
            raise ConfigError(f"fewshot l2_select={l2_select!r} is not one of {list(L2_SELECT)}: fixed = big_vision's "
                                "l2 = 2^10 (the paper), val_grid = choose on the validation split from l2_grid")
        if l2_select == "fixed" and l2_grid:
            raise ConfigError(f"fewshot l2_grid={list(l2_grid)} is only used with l2_select=val_grid "
                                f"(l2_select=fixed solves at l2={l2})")
        if not float(l2) > 0:
            raise ConfigError(f"fewshot l2={l2} must be > 0")
        self.dm = datamodule
        self.shots = [int(k) for k in shots]
        self.seeds = int(seeds)
        self.l2_select, self.l2 = l2_select, float(l2)
        self.l2_grid = tuple(float(v) for v in (l2_grid or L2_GRID))
        self.max_eval = max_eval
        self.batch_size = int(batch_size)
        self.name = name or getattr(datamodule, "name", "data")
        self._splits: dict[str, Any] | None = None

    def _prepare(self) -> dict[str, Any]:
        if self._splits is None:
            train = eval_view(self.dm, "train", PIPELINE)
            k = int(self.dm.num_classes)
            draws = {(s, seed): kshot_indices(labels(train), s, seed, k) for s in self.shots for seed in range(self.seeds)}
            needed = np.unique(np.concatenate(list(draws.values())))
            pos = {int(i): j for j, i in enumerate(needed)}
            val = cap(eval_view(self.dm, "val", PIPELINE), self.max_eval) if self.l2_select == "val_grid" else None
            test = cap(eval_view(self.dm, "test", PIPELINE), self.max_eval)
            self._splits = {"train": Subset(train, needed.tolist()), "draws": {key: np.array([pos[int(i)] for i in v])
                                                                                for key, v in draws.items()},
                            "val": val, "test": test, "num_classes": k}
        return self._splits

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        """``{f"fewshot/{name}_{k}shot": mean test accuracy, ..._std, ..._l2}`` for every k."""
        sp = self._prepare()
        xtr, ytr = extract_features(net, sp["train"], self.batch_size)
        xv, yv = extract_features(net, sp["val"], self.batch_size) if sp["val"] is not None else (None, None)
        xt, yt = extract_features(net, sp["test"], self.batch_size)
        fixed = self.l2 if self.l2_select == "fixed" else None
        out: dict[str, float] = {}
        for k in self.shots:
            accs, l2s = [], []
            for seed in range(self.seeds):
                idx = torch.as_tensor(sp["draws"][(k, seed)])
                r = fewshot_accuracy(xtr[idx], ytr[idx], xv, yv, xt, yt, sp["num_classes"], self.l2_grid, l2=fixed)
                accs.append(r["test"])
                l2s.append(r["l2"])
            key = M.fewshot_key(self.name, k)
            out[key] = float(np.mean(accs))
            out[f"{key}_std"] = float(np.std(accs))
            out[f"{key}_l2"] = float(math.exp(np.mean(np.log(l2s))))
        return out

    @property
    def score_key(self) -> str:
        """The headline metric: the mean accuracy at the largest k."""
        return M.fewshot_key(self.name, self.shots[-1])

    def logged(self, results: dict[str, float]) -> dict[str, float]:
        """What a training run logs every evaluation: the mean accuracies (not their std and L2)."""
        return {k: v for k, v in results.items() if not k.endswith(("_std", "_l2"))}

    def rows(self, results: dict[str, float]) -> list[dict[str, Any]]:
        """One row per k (data, shots, accuracy, std, l2): the task's table, also logged as ``fewshot/table``."""
        return [{"data": self.name, "shots": k, "accuracy": results[M.fewshot_key(self.name, k)],
                 "std": results[M.fewshot_key(self.name, k) + "_std"],
                 "l2": results[M.fewshot_key(self.name, k) + "_l2"]} for k in self.shots]

    def about(self) -> dict[str, Any]:
        """What a standalone run records beside the numbers (``metrics.json``)."""
        return {M.FEWSHOT_SEEDS: self.seeds, M.FEWSHOT_L2_SELECT: self.l2_select}

    def summary(self, results: dict[str, float]) -> str:
        """The table the task prints."""
        how = f"fixed L2 = {self.l2:g}, nested shot sets" if self.l2_select == "fixed" else "L2 chosen on val from l2_grid"
        lines = ["| data | shots | accuracy (mean over seeds) | std | L2 (geo. mean) |", "|---|---|---|---|---|"]
        lines += [f"| {r['data']} | {r['shots']} | {r['accuracy']:.2%} | {r['std']:.2%} | {r['l2']:.3g} |"
                  for r in self.rows(results)]
        return f"few-shot linear accuracy ({self.seeds} seeds, {how}):\n" + "\n".join(lines)
