"""Keep secrets (W&B keys, tokens, passwords) out of logs, config dumps, checkpoints, W&B and the console.

- A config key that looks like a secret (``api_key``, ``token``, ``password``, ...) may only take its
  value from the environment (``${oc.env:NAME}``): a literal value is refused (:func:`check_no_literal_secrets`,
  run by every task), because the command line is saved in ``.hydra/overrides.yaml``, W&B's run metadata and
  shell history.
- :func:`redact` is the one masking function: secret-named keys become ``***``, and so does every known secret
  value wherever it appears: the values of secret-named environment variables (``WANDB_API_KEY``,
  ``HF_TOKEN``, ...) and the literal secrets typed on this command line (:func:`register_secret`).
  Everything vitlab writes or shows goes through it: ``config.yaml``, hyperparameters for CSV/W&B, the
  checkpoint's ``vitlab_config``, the W&B run's name/group/tags after interpolation, error messages.
- Hydra saves ``.hydra/*.yaml`` before the task starts, and prints the overrides of a failed job; the Hydra
  callback ``RunGuard`` masks the config in place first (:func:`mask_hydra_config`, on run/multirun start), so
  what Hydra saves, logs and echoes is already masked and a refused key is never shown.
"""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from vitlab.errors import ConfigError

SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|passw(or)?d|credential|private[_-]?key|access[_-]?key)", re.I)
MASK = "***"
#: a Hydra override ``key=value`` (``+``/``++``/``~`` prefixes allowed)
OVERRIDE = re.compile(r"^(\+{0,2}~?)([\w./@-]+)=(.*)$", re.S)
#: the ``user:password@`` of a URL (``AWS_ENDPOINT_URL=http://key:secret@host`` echoed in botocore's messages)
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")

#: literal secrets seen in this process (typed on the command line or in a config file), masked like env values
_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` from now on wherever :func:`redact` runs (values under 8 characters are too common to mask)."""
    if isinstance(value, str) and len(value.strip("'\"")) >= 8:
        _registered.add(value)
        _registered.add(value.strip("'\""))


def is_literal_secret(key: str, value: object) -> bool:
    """A secret-named key whose value is written out (not ``${oc.env:...}``, not empty, not already masked)."""
    name = str(key).rsplit(".", 1)[-1]
    return (bool(SECRET_NAME.search(name)) and isinstance(value, str) and value.strip("'\"") not in ("", MASK)
            and not value.startswith("${"))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables (8+ characters) and registered literal secrets, longest first."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= 8} | _registered
    return sorted(vals, key=len, reverse=True)


def _mask_str(s: str, values: list[str]) -> str:
    for v in values:
        if v in s:
            s = s.replace(v, MASK)
    s = URL_USERINFO.sub(f"{MASK}@", s)
    m = OVERRIDE.match(s)  # a Hydra override "key=value"
    if m and is_literal_secret(m.group(2), m.group(3)):
        s = f"{m.group(1)}{m.group(2)}={MASK}"
    return s


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of plain containers with secret-named keys masked and secret env values replaced."""
    values = secret_values() if values is None else values
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
        if isinstance(k, str) and isinstance(raw, str) and raw and not raw.startswith("${") and SECRET_NAME.search(k):
            raise ConfigError(
                f"{key} holds a literal secret: put it in the environment and reference it, e.g. "
                f"{key}='${{oc.env:MY_SECRET}}' (W&B reads WANDB_API_KEY by itself). Values typed in configs or on "
                "the command line end up in .hydra/overrides.yaml, W&B metadata and shell history."
            )


def mask_hydra_config(cfg: DictConfig) -> None:
    """Mask literal secrets in a composed Hydra config, in place, before Hydra saves ``.hydra/`` or echoes overrides.

    Called by the Hydra callback ``RunGuard`` on run/multirun start (Hydra saves the config and, for a failed
    job, prints its overrides after that). The literal values are registered first, so every later message,
    log line and file (:func:`redact`) masks them too; the task then refuses the masked key
    (:func:`check_no_literal_secrets`) with a message that names the key and not the value.
    ``${oc.env:...}`` references are left alone: they hold no secret.
    """
    for ov in OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []:
        m = OVERRIDE.match(str(ov))
        if m and is_literal_secret(m.group(2), m.group(3)):
            register_secret(m.group(3))
    _walk_register(cfg)
    values = secret_values()

    for parent, k, raw in list(_raw_leaves(cfg)):  # listed first: masking edits the tree
        if not isinstance(raw, str):
            continue
        new = MASK if isinstance(k, str) and is_literal_secret(k, raw) else _mask_str(raw, values)
        if new != raw:
            with read_write(parent), open_dict(parent):
                parent[k] = new


def _raw_leaves(node: DictConfig | ListConfig):
    """``(parent, key, raw value)`` for every leaf of a config, interpolations left unresolved (``${oc.env:..}``
    holds no secret, and resolving it here would put one into the tree)."""
    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        child = node._get_node(k)
        if isinstance(child, (DictConfig, ListConfig)):
            if not (child._is_none() or child._is_missing() or child._is_interpolation()):
                yield from _raw_leaves(child)
            continue
        yield node, k, (child._value() if child is not None else None)


def _walk_register(node: DictConfig | ListConfig) -> None:
    """Register the literal values of secret-named keys (from config files) as secrets."""
    for _, k, raw in _raw_leaves(node):
        if isinstance(k, str) and is_literal_secret(k, raw):
            register_secret(raw)
