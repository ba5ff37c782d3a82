"""The bench's hooks inside ``Trainer.fit``.

- :class:`WindowTimer` tells a window counter (``vitlab.bench.worker.Windows``) when a train batch or a
  (non-sanity) validation batch ends, so ``vitlab.train`` is timed by the same windows as the hand-written
  loop it is compared with;
- :class:`HookProfiler` is what ``make bench`` (and ``python -m vitlab.bench startup`` / ``timm_script``) adds
  to a ``python -m vitlab.train`` run (``+callbacks.bench_probe``) to time that run as users get it: the end of
  every train batch, each epoch's training img/s, the end of the fit, the seconds from launch to the fit's
  set-up, the first batch and the first optimiser step, and the time each other callback and logger spends in
  its hooks (per step, per epoch, set-up), written as JSON when the fit ends.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

import lightning as L

from vitlab.utils import clock

#: hooks that run once per training batch; every other hook counts as set-up (before the first batch ends),
#: or epoch work (validation, epoch ends, checkpoint writes)
STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad")
LOGGER_METHODS = ("log_metrics", "log_hyperparams", "save", "finalize", "after_save_checkpoint")
#: the environment variable in which ``make bench`` passes the launch time (``time.time()``) to the run
LAUNCH_ENV = "VITLAB_BENCH_LAUNCH_T"


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


class HookProfiler(L.Callback):
    """Times a whole ``Trainer.fit`` as run, and the share of it each callback and logger takes.

    At ``setup`` it wraps the hooks of every other callback (and the loggers' writing methods) in a timer; a
    hook's time counts as *per step* (:data:`STEP_HOOKS` of the batches after the first ``warmup``), *set-up* (anything
    before the first batch has ended, and the warm-up batches' step hooks) or *epoch* work (the rest). The JSON written to ``out`` at the
    end of the fit holds the batch end times, the fit's end, launch → first optimiser step (when the launcher
    set :data:`LAUNCH_ENV`) and the per-callback seconds.
    """

    def __init__(self, out: str, warmup: int = 1) -> None:
        self.out, self.warmup = Path(out), int(warmup)
        self.train_t: list[float] = []
        self.costs: dict[str, dict[str, float]] = {}
        self.first_step_unix: float | None = None
        self.setup_unix: float | None = None  # Trainer.fit has set up (the callbacks' ``setup``)
        self.first_batch_start_unix: float | None = None
        self.cpu: dict[str, float] = {}  # this process's CPU seconds (all threads, since launch) at those points
        self.epochs = 0
        self.epoch_start_t: list[float] = []  # per training epoch: its start, last batch end, images
        self.epoch_end_t: list[float] = []
        self.epoch_images: list[int] = []

    def _batch(self, trainer) -> int:  # 1-based index of the batch in progress (0 before the first)
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    def _wrap(self, name: str, obj: Any, method: str, trainer, step_hook: bool) -> None:
        fn = getattr(obj, method, None)
        if fn is None:
            return
        cost = self.costs.setdefault(name, {"step_s": 0.0, "epoch_s": 0.0, "setup_s": 0.0})

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                if step_hook:  # the warm-up batches (FLOP counting, first allocations) count as set-up
                    cost["step_s" if self._batch(trainer) > self.warmup else "setup_s"] += dt
                else:
                    cost["epoch_s" if self.train_t else "setup_s"] += dt

        setattr(obj, method, timed)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.setup_unix is None:
            self.setup_unix = time.time()
            self.cpu["fit_setup"] = time.process_time()
        for cb in trainer.callbacks:
            if cb is self:
                continue
            name = type(cb).__name__
            for hook in vars(L.Callback):
                if hook.startswith(("on_", "setup", "teardown", "state_dict", "load_state_dict")) and \
                        getattr(type(cb), hook, None) is not getattr(L.Callback, hook):
                    self._wrap(name, cb, hook, trainer, hook in STEP_HOOKS)
        for lg in trainer.loggers:
            for method in LOGGER_METHODS:
                self._wrap(f"logger {type(lg).__name__}", lg, method, trainer, method == "log_metrics")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start_t.append(time.perf_counter())
        self.epoch_end_t.append(self.epoch_start_t[-1])
        self.epoch_images.append(0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch_start_unix is None:
            self.first_batch_start_unix = time.time()
            self.cpu["first_batch"] = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.train_t.append(now)
        if self.first_step_unix is None:
            self.first_step_unix = time.time()
            self.cpu["first_step"] = time.process_time()
        if self.epoch_images:
            self.epoch_end_t[-1] = now
            self.epoch_images[-1] += _batch_len(batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_fit_end(self, trainer, pl_module) -> None:
        launch = os.environ.get(LAUNCH_ENV)

        def since(t: float | None) -> float | None:
            return t - float(launch) if launch and t else None

        main_unix, main_cpu = clock.main_started or (None, None)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({
            "train_t": self.train_t, "end_t": time.perf_counter(), "epochs": self.epochs,
            "steps_timed": max(0, len(self.train_t) - self.warmup), "warmup": self.warmup,
            "launch_to_first_step_s": since(self.first_step_unix),
            "launch_to_main_s": since(main_unix),  # the process's imports are done (vitlab.utils.clock)
            "launch_to_fit_setup_s": since(self.setup_unix),
            "launch_to_first_batch_s": since(self.first_batch_start_unix),
            "cpu_s": self.cpu | ({"main": main_cpu} if main_cpu is not None else {}),
            # each epoch's training images / (its last batch end - its start): timm train.py's per-epoch rate
            "epoch_img_per_s": [n / (e - s) for n, s, e in zip(self.epoch_images, self.epoch_start_t, self.epoch_end_t,
                                                                strict=True) if n and e > s],
            "callbacks": self.costs,
        }, indent=1))


def _batch_len(batch: Any) -> int:
    """Images in a training batch: the first dimension of its first tensor (``(x, y)`` or ``{"image": x, ...}``)."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0] if isinstance(batch, list | tuple) else batch
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)
