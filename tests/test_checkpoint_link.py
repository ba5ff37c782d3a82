"""The best checkpoint and ``last.ckpt`` of one step are serialised once (issue 23: epoch-boundary cost)."""

from __future__ import annotations

import os

import torch

from vitlab.callbacks.checkpoint import AtomicModelCheckpoint


class _Strategy:
    def barrier(self, name: str | None = None) -> None:
        pass


class _Trainer:
    """What ``AtomicModelCheckpoint._save_checkpoint`` asks of a single-process trainer."""

    world_size, is_global_zero, loggers = 1, True, []

    def __init__(self) -> None:
        self.global_step, self.writes, self.strategy = 7, [], _Strategy()

    def save_checkpoint(self, path: str, weights_only: bool = False) -> None:
        self.writes.append(path)
        torch.save({"global_step": self.global_step}, path)


def test_best_and_last_of_one_step_are_one_write_and_a_hard_link(tmp_path):
    cb, trainer = AtomicModelCheckpoint(dirpath=str(tmp_path)), _Trainer()
    best, last = str(tmp_path / "epoch000-val_acc0.5000.ckpt"), str(tmp_path / "last.ckpt")
    cb._save_checkpoint(trainer, best)
    cb._save_checkpoint(trainer, last)
    assert len(trainer.writes) == 1 and os.path.samefile(best, last)
    assert torch.load(last, weights_only=True) == {"global_step": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch000-val_acc0.5000.ckpt", "last.ckpt"]  # no .tmp left
    trainer.global_step = 8  # a later step is written afresh, and replaces last.ckpt without touching the best
    cb._save_checkpoint(trainer, last)
    assert len(trainer.writes) == 2 and not os.path.samefile(best, last)
    assert torch.load(best, weights_only=True) == {"global_step": 7}
    assert torch.load(last, weights_only=True) == {"global_step": 8}
