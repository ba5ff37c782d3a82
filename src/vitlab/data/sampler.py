"""The training sampler that makes a resumed run see exactly the batches an uninterrupted one would.

Two facts make an exact mid-epoch resume possible, with any number of workers and any number of
DDP processes:

- **Order**: epoch ``e``'s order is a pure function of ``(seed, e)`` (``DistributedSampler``'s seeded
  permutation; one process is ``num_replicas=1``). The checkpoint stores ``(seed, epoch, batches
  consumed)``; a resumed run rebuilds the same permutation and skips what was consumed, without
  reading those images.
- **Augmentation**: every index comes with its own seed, ``sample_seed(seed, epoch, index)``, and
  :class:`~vitlab.data.base.TransformedDataset` runs the read + transform under that seed. So a
  sample's crop/flip does not depend on which worker read it, how far the workers had prefetched,
  or what RNG state the process had when it was killed: the workers' RNG is part of the saved state
  by construction.

With 2 processes and a per-process batch ``b``, global batch ``i`` holds exactly the samples of batch
``i`` of one process with batch ``2b``: DDP and single-process runs see the same data.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

#: version of the state layout stored in checkpoints
STATE_VERSION = 1


def global_seed(default: int = 0) -> int:
    """The run's seed as ``lightning.seed_everything`` recorded it (``PL_GLOBAL_SEED``)."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", default))
    except ValueError:
        return default


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one (run seed, epoch, sample index)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block with python's and torch's (CPU) RNGs seeded by ``seed``; restore them afterwards.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed CUDA, i.e. the model's dropout).
    numpy's global RNG is left alone: no pipeline draws from it (torchvision's v2 transforms draw from torch,
    timm's crops and erasing from python's ``random``), and seeding it costs 150 us per image, a third of the
    digits pipeline. A custom transform must draw from torch or ``random`` to be exact on resume.
    """
    py, th = random.getstate(), torch.random.default_generator.get_state()
    random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        torch.random.default_generator.set_state(th)


class ResumableSampler(DistributedSampler):
    """A shuffling sampler for the training split whose position is saved and restored with the run.

    Yields ``(index, sample_seed)`` pairs for :class:`~vitlab.data.base.TransformedDataset`. Lightning
    leaves it in place under DDP (it already is a ``DistributedSampler``) and calls ``set_epoch``.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None, shuffle: bool = True,
                 state: dict[str, Any] | None = None) -> None:
        if dist.is_available() and dist.is_initialized():
            replicas, rank = dist.get_world_size(), dist.get_rank()
        else:
            replicas, rank = 1, 0
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle,
                         seed=global_seed() if seed is None else int(seed))
        self._skip = 0  # samples of this process to skip in the next iteration (resume)
        if state:
            self.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        super().set_epoch(epoch)

    def skip_batches(self, batches: int, batch_size: int) -> None:
        """Skip the first ``batches`` batches of this epoch in the next iteration (the resume position)."""
        self._skip = max(0, int(batches) * int(batch_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        for i in indices[skip:]:
            yield int(i), sample_seed(self.seed, self.epoch, int(i))

    def __len__(self) -> int:
        return self.num_samples

    # ---- the state stored in checkpoints ---------------------------------------------------------
    def state_dict(self, batches_done: int = 0, epoch_done: bool = False, batch_size: int = 1) -> dict[str, Any]:
        return {"version": STATE_VERSION, "seed": int(self.seed), "epoch": int(self.epoch),
                "batches_done": int(batches_done), "epoch_done": bool(epoch_done), "batch_size": int(batch_size),
                "num_replicas": int(self.num_replicas), "dataset_len": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dataset_len") not in (None, len(self.dataset)):
            raise ValueError(
                f"the checkpoint's training set had {state['dataset_len']} images, this one has {len(self.dataset)}: "
                "resume with the same data config (data.train_size, data.root, split), or start a new run"
            )
        self.seed = int(state["seed"])
        if state.get("epoch_done"):
            self.epoch, self._skip = int(state["epoch"]) + 1, 0
        else:
            self.epoch = int(state["epoch"])
            if int(state.get("num_replicas", self.num_replicas)) != self.num_replicas and state.get("batches_done"):
                raise ValueError(
                    f"the checkpoint was saved mid-epoch by {state['num_replicas']} processes, this run has "
                    f"{self.num_replicas}: resume with the same number of devices (or from an end-of-epoch checkpoint)"
                )
            self.skip_batches(state.get("batches_done", 0), state.get("batch_size", 1))
