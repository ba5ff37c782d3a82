"""Keep secrets (W&B keys, tokens, passwords) out of logs, config dumps, checkpoints and W&B.

- A config key that looks like a secret (``api_key``, ``token``, ``password``, ...) may only take its
  value from the environment (``${oc.env:NAME}``): a literal value is refused (:func:`check_no_literal_secrets`),
  because the command line is saved in ``.hydra/overrides.yaml``, W&B's run metadata and shell history.
- Every resolved config vitlab writes (``config.yaml``, hyperparameters for CSV/W&B, the checkpoint's
  ``vitlab_config``) goes through :func:`redact`: secret-named keys become ``***`` and the value of any
  secret-named environment variable (``WANDB_API_KEY``, ``HF_TOKEN``, ...) is masked wherever it appears.
- Hydra writes ``.hydra/*.yaml`` before the task starts; :func:`redact_hydra_dir` rewrites them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vitlab.config import ConfigError

SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|passw(or)?d|credential|private[_-]?key|access[_-]?key)", re.I)
MASK = "***"


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables (8+ characters, longest first)."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= 8}
    return sorted(vals, key=len, reverse=True)


def _mask_str(s: str, values: list[str]) -> str:
    for v in values:
        if v in s:
            s = s.replace(v, MASK)
    m = re.match(r"^(\+{0,2}~?)([\w./-]+)=(.*)$", s)  # a Hydra override "key=value"
    if m and SECRET_NAME.search(m.group(2).rsplit(".", 1)[-1]) and m.group(3) and not m.group(3).startswith("${"):
        s = f"{m.group(1)}{m.group(2)}={MASK}"
    return s


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of plain containers with secret-named keys masked and secret env values replaced."""
    values = secret_env_values() if values is None else values
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and SECRET_NAME.search(k) and v not in (None, "") else redact(v, values))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, values) for v in obj)
    if isinstance(obj, str):
        return _mask_str(obj, values)
    return obj


def check_no_literal_secrets(cfg: DictConfig, prefix: str = "") -> None:
    """Refuse a secret-named key whose value is written in the config or on the command line."""
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for k, _ in items:
        key = f"{prefix}{k}"
        if key == "hydra":
            continue
        node = cfg._get_node(k)
        if isinstance(node, (DictConfig, ListConfig)):
            check_no_literal_secrets(node, f"{key}.")
            continue
        raw = node._value()
        if isinstance(k, str) and SECRET_NAME.search(k) and isinstance(raw, str) and raw and not raw.startswith("${"):
            raise ConfigError(
                f"{key} holds a literal secret: put it in the environment and reference it, e.g. "
                f"{key}='${{oc.env:MY_SECRET}}' (W&B reads WANDB_API_KEY by itself). Values typed in configs or on "
                "the command line end up in .hydra/overrides.yaml, W&B metadata and shell history."
            )


def redact_hydra_dir(out_dir: str | Path) -> None:
    """Rewrite ``<out_dir>/.hydra/*.yaml`` with secrets masked (Hydra saved them before the task started)."""
    import yaml

    values = secret_env_values()
    for p in Path(out_dir, ".hydra").glob("*.yaml"):
        try:
            text = p.read_text()
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            continue
        clean = redact(data, values)
        if clean != data:
            tmp = p.with_suffix(".yaml.tmp")
            tmp.write_text(yaml.safe_dump(clean, sort_keys=False))
            tmp.replace(p)


def redacted_container(cfg: DictConfig) -> Any:
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
