"""Preemption and Ctrl-C: save ``last.ckpt`` at the end of the current step, then exit cleanly.

On SIGTERM (SLURM preemption / time limit, ``kill``, Kubernetes), SIGUSR1 (SLURM ``--signal=USR1@90``)
or a first Ctrl-C (SIGINT), the handler only sets a flag. At the end of the running training step all
processes agree on it (one all-reduce under DDP), write ``last.ckpt`` atomically, close the loggers
(the W&B run is finished, not crashed) and exit with ``128 + signal number`` (143, 138, 130): the job is
not complete, and scripts can tell. Re-running in the same directory resumes from that checkpoint
(``resume=auto``). A second Ctrl-C interrupts at once (the last periodic ``last.ckpt`` is still there).

Under SLURM, ``requeue=auto`` requeues the job (``scontrol requeue $SLURM_JOB_ID``) after saving on
SIGUSR1; the requeued job runs in the same output directory and resumes automatically.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import lightning as L

from vitlab.callbacks.checkpoint import atomic_save, find_checkpoint_callback

log = logging.getLogger("vitlab.signals")

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Preempted(SystemExit):
    """Raised after the checkpoint is saved; the process exits with ``128 + signum`` without a traceback."""

    def __init__(self, signum: int, ckpt_path: str | None, step: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.ckpt_path, self.step = signum, ckpt_path, step


def requeue_slurm() -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    if not job:
        return False
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("could not requeue SLURM job %s: %s", job, e)
        return False
    if out.returncode:
        log.error("scontrol requeue %s failed (%d): %s", job, out.returncode, out.stderr.strip())
        return False
    print(f"vitlab: requeued SLURM job {job}", file=sys.stderr, flush=True)
    return True


class GracefulShutdown(L.Callback):
    def __init__(self, signals: list[str] | tuple[str, ...] = DEFAULT_SIGNALS, requeue: bool | str = "auto") -> None:
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.requeue = requeue
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    # ---- handlers --------------------------------------------------------------------------------
    def _handler(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = signum
        print(f"\nvitlab: received {signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler before this hook; ours replaces it for the fit.
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM/SIGUSR1/Ctrl-C will not save a checkpoint")
            return
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            try:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            except (ValueError, TypeError):
                pass
        self._previous.clear()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    # ---- the stop ----------------------------------------------------------------------------------
    def _maybe_stop(self, trainer: L.Trainer) -> None:
        flag = self.received is not None
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
        if not flag:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        cb = find_checkpoint_callback(trainer)
        if cb is not None and hasattr(cb, "save_last_now"):
            path = cb.save_last_now(trainer)
        else:
            d = cb.dirpath if cb is not None and cb.dirpath else os.path.join(trainer.default_root_dir, "checkpoints")
            os.makedirs(d, exist_ok=True)
            path = atomic_save(trainer, os.path.join(d, "last.ckpt"))
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            print(f"vitlab: {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}: saved {path}. "
                  f"Re-run with hydra.run.dir={trainer.default_root_dir} to resume from it (resume=auto).",
                  file=sys.stderr, flush=True)
            want = self.requeue is True or (self.requeue == "auto" and signum == signal.SIGUSR1)
            if want and os.environ.get("SLURM_JOB_ID"):
                requeue_slurm()
        self._restore()
        raise Preempted(signum, path, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._maybe_stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_stop(trainer)
