"""Exact resume: the state Lightning does not save by itself (where a run resumes from is
:mod:`vitlab.runs.resume`).

What :class:`ResumeState` adds to every checkpoint (Lightning saves weights, optimizer, schedulers,
loop counters; the data module saves the sampler position, see ``vitlab/data/sampler.py``):

- the RNG states of python, numpy, torch (CPU and CUDA), restored on resume; and, so that they do
  not depend on prefetching or on where the run was killed, the model's randomness (dropout, drop
  path) is reseeded at each training batch from ``(seed, epoch, batch index, rank)``;
- the torchmetrics states (running train loss/accuracy of the interrupted epoch, ``val/acc_best``),
  so the epoch-level and best-so-far metrics continue as if nothing happened;
- the W&B run id, so the resumed run logs into the same W&B run (online or offline).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import MaxMetric, Metric, MinMetric

from vitlab.data.sampler import global_seed
from vitlab.wandb_io.logger import logger_run_id

log = logging.getLogger("vitlab.resume")

RESUME_KEY = "vitlab_resume"


def _step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, batch_idx, rank, 0x5EED]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain containers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError) as e:  # fewer GPUs than when saved
            log.warning("CUDA RNG state not restored (%s)", e)


def _metrics(pl_module: L.LightningModule) -> dict[str, Any]:
    return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric) and name}


def _is_best_tracker(metric) -> bool:
    return isinstance(metric, (MaxMetric, MinMetric))


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    if isinstance(v, list):
        return [_clone(x) for x in v]
    return v


class ResumeState(L.Callback):
    """Saves and restores what an exact resume needs beyond Lightning's own state (see the module docstring)."""

    def __init__(self, reseed_every_batch: bool = True) -> None:
        self.reseed_every_batch = reseed_every_batch
        self._pending: dict[str, Any] | None = None
        self.resumed_from_step: int | None = None

    @staticmethod
    def _seed() -> int:
        return global_seed()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        ready = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        checkpoint[RESUME_KEY] = {
            "version": 1,
            "seed": self._seed(),
            "rng": rng_state(),
            "metrics": {name: {k: _clone(v) for k, v in m.metric_state.items()} for name, m in _metrics(pl_module).items()},
            "mid_epoch": 0 < ready < trainer.num_training_batches,
            "world_size": int(trainer.world_size),
            "wandb_id": logger_run_id(trainer),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(RESUME_KEY)
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and self._pending.get("rng"):
            set_rng_state(self._pending["rng"])

    def _restore_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        saved = (state or {}).get("metrics") or {}
        # Epoch accumulators only make sense mid-epoch and per process; best-so-far trackers always.
        all_states = bool(state.get("mid_epoch")) and int(trainer.world_size) == 1 == int(state.get("world_size", 1))
        for name, m in _metrics(pl_module).items():
            if name not in saved or not (all_states or _is_best_tracker(m)):
                continue
            for k, v in saved[name].items():
                cur = getattr(m, k, None)
                if isinstance(cur, torch.Tensor) and isinstance(v, torch.Tensor):
                    setattr(m, k, v.to(cur.device, cur.dtype))
                elif isinstance(cur, list) and isinstance(v, list):
                    setattr(m, k, [x.to(pl_module.device) if isinstance(x, torch.Tensor) else x for x in v])
            m._update_count = max(m._update_count, 1)
            m._computed = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            self._restore_metrics(trainer, pl_module)
        if self.reseed_every_batch:
            s = _step_seed(self._seed(), trainer.current_epoch, batch_idx, trainer.global_rank)
            torch.random.default_generator.manual_seed(s)
            random.seed(s)
            np.random.seed(s % (1 << 32))
            if pl_module.device.type == "cuda":
                torch.cuda.manual_seed(s)
