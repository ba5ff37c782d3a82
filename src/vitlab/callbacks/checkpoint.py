"""Checkpoints that are never half-written, and a ``last.ckpt`` that is also saved every N steps.

:class:`AtomicModelCheckpoint` writes ``<name>.tmp`` first, fsyncs it and renames it over the old file
(``os.replace`` is atomic on POSIX): at every instant the file named ``last.ckpt`` is a complete checkpoint,
after a kill and, with the fsync, after a power cut. A failed write (disk full, quota, permissions) removes the
temporary file, keeps the previous checkpoint and raises :class:`CheckpointWriteError` naming the directory.
With Lightning's stock strategy and CheckpointIO, ``torch.save`` writes straight into the temporary file.

When the epoch end writes a best-``monitor`` checkpoint and ``last.ckpt`` at the same step (the same weights,
optimizer and loop state, and a stored ``last_model_path`` that names ``last.ckpt``: a run's first best stores
the path that the ``last.ckpt`` save right after it takes), ``last.ckpt`` becomes a second hard link to the file
just written (made under a temporary name and renamed over the old one, as above) instead of a second copy: one
write and one fsync per epoch instead of two. It stays a regular file that outlives the best file's deletion;
where the filesystem has no hard links, it is written in full as before.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import Strategy

from vitlab.errors import CheckpointWriteError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. certain network mounts) refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _error_number(e: BaseException) -> int | None:
    """The ``errno`` of ``e`` or of the ``OSError`` behind it (torch's writer turns a failed write into a
    ``RuntimeError`` whose context is the file's ``OSError``)."""
    while e is not None:
        if getattr(e, "errno", None):
            return e.errno
        e = e.__cause__ or e.__context__
    return None


def _writes_plain_torch_files(trainer: L.Trainer) -> bool:
    """The strategy and its CheckpointIO are Lightning's stock ones: the file is ``torch.save(dump_checkpoint())``.
    (DeepSpeed, FSDP and custom CheckpointIO plugins write their own way: they go through
    ``trainer.save_checkpoint``.)"""
    return (type(trainer.strategy).save_checkpoint is Strategy.save_checkpoint
            and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO)


def atomic_save(trainer: L.Trainer, filepath: str | os.PathLike, weights_only: bool = False) -> str:
    """``trainer.save_checkpoint`` to ``filepath`` via ``filepath.tmp`` + fsync + rename (collective under DDP).

    With Lightning's stock strategy and CheckpointIO, ``torch.save`` writes straight into the temporary file (the
    same bytes as ``trainer.save_checkpoint``, without its in-memory copy and fsspec's second temporary file)."""
    filepath = str(filepath)
    tmp = filepath + TMP_SUFFIX
    try:
        if _writes_plain_torch_files(trainer):
            with trainer.profiler.profile("save_checkpoint"):
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)
                if trainer.is_global_zero:
                    os.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
                    with open(tmp, "wb", buffering=0) as fh:  # unbuffered: a failed write keeps its errno
                        torch.save(checkpoint, fh)
                        os.fsync(fh.fileno())
        else:
            trainer.save_checkpoint(tmp, weights_only)
            if trainer.is_global_zero:
                fsync_path(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
            fsync_path(os.path.dirname(filepath) or ".", directory=True)
    except Exception as e:
        if trainer.is_global_zero:
            Path(tmp).unlink(missing_ok=True)
        directory = os.path.dirname(os.path.abspath(filepath))
        previous = sorted(p.name for p in Path(directory).glob("*.ckpt")) if os.path.isdir(directory) else []
        number = _error_number(e)
        why = "the disk or quota is full" if number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else (
            "see the error above")
        raise CheckpointWriteError(
            number or errno.EIO,
            f"could not write checkpoint {os.path.basename(filepath)} in {directory} ({type(e).__name__}: {e}); "
            f"{why}. The previous checkpoints there are untouched: {', '.join(previous) or 'none yet'}. "
            f"Free space (or point callbacks.model_checkpoint.dirpath elsewhere), then resume from last.ckpt.",
        ) from e
    trainer.strategy.barrier("vitlab.atomic_save")
    return filepath


def atomic_link(trainer: L.Trainer, source: str | os.PathLike, filepath: str | os.PathLike) -> bool:
    """``filepath`` as a second hard link to the complete checkpoint ``source`` (``filepath.tmp`` + rename, so the
    old ``filepath`` stays whole until the new one is in place). False (nothing changed) where the filesystem
    refuses hard links; the caller then writes the file. Collective under DDP."""
    ok = True
    if trainer.is_global_zero:
        tmp = str(filepath) + TMP_SUFFIX
        try:
            Path(tmp).unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, filepath)
            fsync_path(os.path.dirname(str(filepath)) or ".", directory=True)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            ok = False
    return bool(trainer.strategy.broadcast(ok, src=0))


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with atomic writes, plus ``last.ckpt`` every ``last_every_n_train_steps`` steps.

    The best-``monitor`` checkpoints are kept as usual (at validation end); ``last.ckpt`` is rewritten
    every N optimizer steps and at every epoch end, whether or not the monitored metric improved,
    so a resumed run loses at most N steps.
    """

    def __init__(self, *args: Any, last_every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_train_steps is not None and int(last_every_n_train_steps) < 1:
            raise ValueError(f"last_every_n_train_steps={last_every_n_train_steps} must be >= 1 or null")
        self.last_every_n_train_steps = int(last_every_n_train_steps) if last_every_n_train_steps else None
        self._last_saved_step: int | None = None
        self._written_step: int | None = None  # the global step of the latest checkpoint written in full
        self._written_last_path: str | None = None  # the last_model_path stored in it

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """Lightning's top-k save; a run's first one also stores the ``last_model_path`` that the ``last.ckpt`` save
        right after it at the same step will take (Lightning sets it only there), so that ``last.ckpt`` can be a link
        to this file from the first epoch on."""
        if self.save_last is True and not self.last_model_path:
            self.last_model_path = self._last_filepath(trainer, monitor_candidates)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _last_filepath(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> str:
        """The path ``ModelCheckpoint._save_last_checkpoint`` picks: ``last.ckpt``, or ``last-vN.ckpt`` past files of
        an earlier run in the same directory."""
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        while self._enable_version_counter and self.file_exists(filepath, trainer) and filepath != self.last_model_path:
            filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        return filepath

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        is_last = os.path.basename(filepath).startswith(self.CHECKPOINT_NAME_LAST or "last")
        written = self._last_checkpoint_saved  # the latest file saved (a link only if it is last.ckpt itself)
        # The link's bytes carry the state stored at the full write: the same step, and a last_model_path naming
        # this file (Lightning sets it before a last save; _save_topk_checkpoint sets it for a run's first best).
        same_state = (is_last and written and written != filepath and self._written_step == trainer.global_step
                      and self._written_last_path == filepath)
        if not (same_state and atomic_link(trainer, written, filepath)):
            atomic_save(trainer, filepath, self.save_weights_only)
            self._written_step, self._written_last_path = trainer.global_step, self.last_model_path
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if is_last:
            self._last_saved_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def save_last_now(self, trainer: L.Trainer) -> str:
        """Write ``last.ckpt`` for the current state (used on SIGTERM / SIGUSR1 / Ctrl-C)."""
        keep = self._last_global_step_saved  # a step save must not stop the epoch-end best/last save
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = keep
        return self.last_model_path

    def _last_is_stale(self, trainer: L.Trainer) -> bool:
        return bool(self.save_last) and not trainer.sanity_checking and not trainer.fast_dev_run and (
            self._last_saved_step != trainer.global_step) and trainer.global_step > 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if n and trainer.global_step % n == 0 and self._last_is_stale(trainer):
            is_last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            if not is_last_batch:  # the epoch-end save follows right after, with validation results
                self.save_last_now(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._last_is_stale(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._last_is_stale(trainer) and self._should_save_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_saved_step": self._last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's restore, then every restored path that is not this run's own checkpoint file is forgotten.

        The paths come from the checkpoint being resumed (data): ``best_model_path`` is what the test step
        loads, and ``best_k_models`` / ``kth_best_model_path`` are what ``save_top_k`` deletes. A path outside
        this callback's ``dirpath``, or one that is not a regular file there (a FIFO would hang the test step, a
        link may lead anywhere), is dropped with a warning, so the test step tests this run's weights."""
        super().load_state_dict(state_dict)
        self._last_saved_step = state_dict.get("last_saved_step")
        own = {p: v for p, v in self.best_k_models.items() if self.is_own_checkpoint(p)}
        dropped = sorted({str(p) for p in (*self.best_k_models, self.best_model_path, self.kth_best_model_path,
                                           self.last_model_path) if p and not self.is_own_checkpoint(p)})
        if dropped:
            log.warning("ignoring checkpoint paths stored in the resumed checkpoint that are not this run's own "
                        "files in %s: %s", self.dirpath, ", ".join(dropped))
        self.best_k_models = own
        if not self.is_own_checkpoint(self.best_model_path):
            self.best_model_path, self.best_model_score = "", None
        if not self.is_own_checkpoint(self.kth_best_model_path):
            self.kth_best_model_path = ""
        if not self.is_own_checkpoint(self.last_model_path):
            self.last_model_path = ""

    def is_own_checkpoint(self, path: Any) -> bool:
        """``path`` is a regular file (not a link, FIFO or device) directly in this callback's ``dirpath``."""
        if not path or not self.dirpath or not isinstance(path, (str, os.PathLike)):
            return False
        p = Path(path)
        try:
            return (p.parent.resolve() == Path(self.dirpath).resolve() and p.suffix == self.FILE_EXTENSION
                    and stat.S_ISREG(os.lstat(p).st_mode))
        except (OSError, ValueError):
            return False


def find_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The callback that owns ``last.ckpt`` (an :class:`AtomicModelCheckpoint` if there is one)."""
    cbs = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    for c in cbs:
        if isinstance(c, AtomicModelCheckpoint) and c.save_last:
            return c
    return next((c for c in cbs if c.save_last), cbs[0] if cbs else None)
