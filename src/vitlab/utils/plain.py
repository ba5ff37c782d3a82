"""A job's config as plain data: resolved containers (safe for ``torch.load(weights_only=True)`` and JSON),
without Hydra's own node, secrets masked: what config.yaml, the checkpoints and every logger hold."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.utils.secrets import redact


def to_plain(cfg: Any) -> Any:
    """A resolved, plain-container copy (safe for ``torch.load(weights_only=True)`` and JSON)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's resolved config as plain containers, without Hydra's own ``hydra`` node, secrets masked."""
    return redact({k: v for k, v in to_plain(cfg).items() if k != "hydra"})
