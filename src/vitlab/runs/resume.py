"""Where a training run resumes from (:func:`resolve_resume`, called by ``vitlab.runs.assemble`` before anything is built),
its checkpoint read cheaply and checked against the run it is asked to continue:

- ``resume=auto`` (default): the job directory's own ``checkpoints/last.ckpt`` if it exists (a re-run
  with ``hydra.run.dir=<that dir>``, a SLURM requeue), else start from scratch; either way one log line says so.
- ``ckpt_path=last``: that same ``last.ckpt``, which must exist (clear error otherwise, never silently from scratch).
- ``ckpt_path=<file>``: that file (or, once this job has its own ``last.ckpt``, the newer one).
- ``resume=never``: start from scratch, and refuse a directory that already holds checkpoints
  rather than overwrite them.

The state an exact resume needs beyond Lightning's own is saved and restored by the training callback
:class:`vitlab.callbacks.resume.ResumeState`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vitlab.callbacks.checkpoint import TMP_SUFFIX
from vitlab.callbacks.resume import RESUME_KEY
from vitlab.errors import ConfigError, ResumeError
from vitlab.models import build_model
from vitlab.models.checkpoints import MAX_EXPANDED_BYTES, load_torch_file
from vitlab.runs.read import check_checkpoint
from vitlab.wandb_io import is_run_id, resume_wandb_run

log = logging.getLogger("vitlab.resume")

RESUME_MODES = ("auto", "never")
LAST = "last.ckpt"


@dataclass
class ResumePlan:
    ckpt_path: str | None
    message: str
    global_step: int = 0
    epoch: int = 0
    wandb_id: str | None = None


def checkpoint_dir(cfg: DictConfig) -> Path:
    d = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(d) if d else Path(cfg.paths.output_dir) / "checkpoints"


def peek_checkpoint(path: str | Path, cfg: DictConfig | None = None) -> dict[str, Any]:
    """Read a checkpoint's counters and vitlab state cheaply and safely (``weights_only=True``, memory-mapped, zip
    records checked before anything expands), and check that it fits the run ``cfg`` asks for (:func:`check_fits`).

    A file that needs arbitrary code to unpickle (anything but tensors and plain containers) is refused.
    """
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        others = sorted(q.name for q in p.parent.glob("*.ckpt") if q != p and q.stat().st_size > 0)
        raise ResumeError(
            f"{p} is empty (0 bytes): a checkpoint whose write never happened (disk full, or the job was killed "
            f"as it began). vitlab does not delete it: move it away (e.g. mv {p} {p}.empty) and re-run, with "
            "ckpt_path=<another .ckpt> to resume from an earlier checkpoint"
            + (f" (next to it: {', '.join(others[:4])})" if others else "") + ", or without to start from scratch."
        )
    try:
        ckpt = load_torch_file("ckpt_path", p, MAX_EXPANDED_BYTES, error=ResumeError)
    except ResumeError as e:
        raise ResumeError(f"{e} Pass another ckpt_path (or resume=never in a new directory).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ResumeError(f"{p} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by vitlab.train")
    try:  # a checkpoint is data: one that names code (a `_target_` anywhere) is refused, as by every task
        check_checkpoint(ckpt, p)
    except ConfigError as e:
        raise ResumeError(str(e)) from None
    extra = ckpt.get(RESUME_KEY) or {}
    wandb_id = extra.get("wandb_id") if isinstance(extra, dict) else None
    if wandb_id is not None and not is_run_id(wandb_id):
        raise ResumeError(f"checkpoint {p}: {RESUME_KEY}.wandb_id={wandb_id!r} is not a W&B run id "
                          "(letters, digits, '-', '_'); it would name the W&B run directory")
    for key in ("global_step", "epoch"):
        if not isinstance(ckpt.get(key, 0), int) or isinstance(ckpt.get(key, 0), bool):
            raise ResumeError(f"checkpoint {p}: {key}={ckpt.get(key)!r} is not an int")
    if cfg is not None:
        check_fits(ckpt, cfg, p)
    return {"global_step": int(ckpt.get("global_step", 0)), "epoch": int(ckpt.get("epoch", 0)),
            "wandb_id": wandb_id}


def check_fits(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse to resume a checkpoint into a run it does not belong to, before anything is built: another dataset
    (``vitlab_config.data.name``), or weights whose names or shapes differ from the network ``cfg.model`` builds
    (another family, size, resolution or class count; an empty ``state_dict``). The network is built on the
    meta device: nothing is allocated."""
    stored = (ckpt.get("vitlab_config") or {}).get("data") if isinstance(ckpt.get("vitlab_config"), dict) else None
    stored_name = stored.get("name") if isinstance(stored, dict) else None
    name = OmegaConf.select(cfg, "data.name", default=None)
    if stored_name is not None and name is not None and stored_name != name:
        raise ResumeError(
            f"checkpoint {path} was trained on data={stored_name}, but this run asks for data={name}: resuming "
            f"would continue its optimiser, schedule and sampler on another dataset. Resume with data={stored_name}, "
            f"or start a new run from its weights: model.pretrained={path} in a new hydra.run.dir."
        )
    sd = ckpt.get("state_dict")
    weights = {k[len("net."):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith("net.")} if isinstance(
        sd, dict) else {}
    try:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") is not None else None
    except Exception:  # noqa: BLE001 - an unresolvable model config fails where the model is built, with its key
        return
    if not isinstance(model_cfg, dict) or "family" not in model_cfg:
        return
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("pretrained", "compile")}
    try:
        with torch.device("meta"):  # the shapes this run's network has, without allocating them
            expected = build_model(**model_cfg).state_dict()
    except Exception:  # noqa: BLE001 - a wrong model config fails where the model is built, with its key
        return
    fix = (f"Resume with the model config it was trained with (its vitlab_config.model), or start a new run "
           f"from its weights: model.pretrained={path} in a new hydra.run.dir.")
    if not weights:
        raise ResumeError(f"checkpoint {path} holds none of the network's weights (its state_dict has no 'net.' "
                          f"entries{'; it is empty' if not sd else ''}): it is not a vitlab.train checkpoint. {fix}")
    heads = [k for k in {*expected, *weights} if k.startswith("head.")]  # a headless (mpp) run: its own objective
    missing = sorted(k for k in expected if k not in weights and k not in heads)
    unexpected = sorted(k for k in weights if k not in expected and k not in heads)
    wrong = sorted(k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        what = "; ".join(
            [f"net.{k} checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3]]
            + ([f"not in the checkpoint: net.{', net.'.join(missing[:3])}"] if missing else [])
            + ([f"not in model={model_cfg.get('name', model_cfg['family'])}: net.{', net.'.join(unexpected[:3])}"]
               if unexpected else []))
        stored_model = ((ckpt.get("hyper_parameters") or {}).get("model") or {}) if isinstance(
            ckpt.get("hyper_parameters"), dict) else {}
        family = stored_model.get("family") if isinstance(stored_model, dict) else None
        other = (f"; it holds a model.family={family} network, this run builds model.family={model_cfg['family']}"
                 if family is not None and family != model_cfg["family"] else "")
        raise ResumeError(f"checkpoint {path} does not fit this run's model={model_cfg.get('name', model_cfg['family'])}"
                          f"{other} ({what}). {fix}")


def resolve_resume(cfg: DictConfig) -> ResumePlan:
    """Decide what to resume from (see the module docstring); never silently start from scratch when asked to resume.
    A checkpoint that names a W&B run points ``logger.wandb`` at it, so the resumed job logs into the same run."""
    mode = str(cfg.get("resume", "auto")).lower()
    if mode in ("false", "none", "no"):
        mode = "never"
    if mode in ("true", "yes"):
        mode = "auto"
    if mode not in RESUME_MODES:
        raise ResumeError(f"resume={cfg.get('resume')!r} is not one of {list(RESUME_MODES)}")
    asked = cfg.get("ckpt_path")
    asked = None if asked in (None, "", "null") else str(asked)
    ckpt_dir = checkpoint_dir(cfg)
    own_last = ckpt_dir / LAST
    for stale in ckpt_dir.glob(f"*{TMP_SUFFIX}") if ckpt_dir.is_dir() else []:
        log.warning("removing %s: a checkpoint write that was interrupted (the complete checkpoints are kept)", stale)
        stale.unlink(missing_ok=True)
    existing = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []

    if mode == "never":
        if asked:
            raise ResumeError(f"resume=never contradicts ckpt_path={asked}: drop one of them")
        if existing:
            raise ResumeError(
                f"resume=never but {ckpt_dir} already holds checkpoints ({', '.join(p.name for p in existing[:4])}): "
                "vitlab does not overwrite them. Use a new hydra.run.dir, or resume=auto to continue that run."
            )
        return ResumePlan(None, "resume=never: starting from scratch")

    if asked in ("best", "hpc", "registry"):
        raise ResumeError(f"ckpt_path={asked} is not supported by vitlab.train: use ckpt_path=last or a file path")
    if asked == "last" and not own_last.is_file():
        others = f" (it holds: {', '.join(p.name for p in existing[:4])})" if existing else ""
        raise ResumeError(
            f"ckpt_path=last but there is no {own_last}{others}. To continue an earlier run, re-run in its "
            "directory: hydra.run.dir=<that run's dir> ckpt_path=last, or pass ckpt_path=<file>.ckpt. "
            "resume=auto (without ckpt_path) starts from scratch when no checkpoint exists."
        )
    if own_last.is_file():
        path, why = own_last, "this job's directory holds it"
        if asked not in (None, "last"):
            why += f" (newer than ckpt_path={asked}, which this job started from)"
    elif asked not in (None, "last"):
        p = Path(asked).expanduser()
        if not p.is_file():
            raise ResumeError(f"ckpt_path={asked}: no such checkpoint file ({p.resolve()})")
        path, why = p, "ckpt_path"
    else:
        if existing:
            raise ResumeError(
                f"{ckpt_dir} holds checkpoints ({', '.join(p.name for p in existing[:4])}) but no {LAST}: "
                "pass one of them as ckpt_path=<file>, or use a new hydra.run.dir"
            )
        return ResumePlan(None, f"resume=auto: no checkpoint in {ckpt_dir}; starting from scratch")
    info = peek_checkpoint(path, cfg)
    resume_wandb_run(cfg, info["wandb_id"])  # the resumed job logs into the same W&B run
    return ResumePlan(
        str(path),
        f"resuming from {path} ({why}): epoch {info['epoch']}, global step {info['global_step']}"
        + (f", W&B run {info['wandb_id']}" if info["wandb_id"] else ""),
        global_step=info["global_step"], epoch=info["epoch"], wandb_id=info["wandb_id"],
    )
