"""The bench's timing hook inside ``Trainer.fit``: it tells a window counter (``vitlab.bench.worker.Windows``)
when a train batch or a (non-sanity) validation batch ends, so vitlab.train is timed by the same windows as the
hand-written loop it is compared with."""

from __future__ import annotations

from typing import Protocol

import lightning as L


class BatchWindows(Protocol):
    def train_batch_end(self) -> None: ...

    def eval_batch_end(self) -> None: ...


class WindowTimer(L.Callback):
    """Feeds the bench's windows from inside ``Trainer.fit`` (train batches, then the fit's validation batches)."""

    def __init__(self, win: BatchWindows) -> None:
        self.win = win

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.win.train_batch_end()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.win.eval_batch_end()
