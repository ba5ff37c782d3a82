"""The files of a run directory, read as data: the one reader behind vitlab.report, the sweep summary and the
transfer demo's summary.

A run directory may come from someone else (a colleague's sweep, a downloaded archive), so its files are read
like any other file from outside:

- regular files only, at most :data:`MAX_RUN_FILE_BYTES` (a FIFO named ``metrics.json`` would block ``open``,
  a link to ``/dev/zero`` would be read until memory runs out);
- YAML with the safe loader and without anchors or aliases: Hydra and vitlab never write them, and nine nested
  aliases of nine make a 2 kB file that expands to a billion nodes (an "alias bomb");
- a job's results file: :mod:`vitlab.results` reads it through :func:`read_bytes`;
- a config's ``${...}`` interpolations resolved against the config itself and nothing else
  (:func:`resolve_config`): ``${demo.finetune_lr}`` becomes the value it points at, while a resolver
  (``${oc.env:...}``, ``${hydra:...}``, ``${now:...}``), a loop or an over-long result becomes a readable
  placeholder (:data:`UNRESOLVED`). Nothing is instantiated, no environment variable is read.

Every refusal is a :class:`~vitlab.errors.ReportError` that names the file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vitlab.errors import ReportError

#: 1 MiB: a job's Hydra config is about 10 kB and its metrics.json 1 kB; a bigger run file is not vitlab's
MAX_RUN_FILE_BYTES = 2**20
#: what an interpolation that cannot be resolved from the file itself shows instead of its value
UNRESOLVED = "(unresolved: {expr})"
#: a resolved string longer than this is a placeholder (``a: ${b}${b}``, ``b: ${c}${c}``, ... doubles each time)
MAX_RESOLVED_CHARS = 4096
_MAX_DEPTH = 32  # interpolations followed in a chain before it is called a loop


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_RUN_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``, else a ReportError naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ReportError(f"{path}: cannot read this run file ({e.strerror})") from e
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReportError(f"{path}: not a regular file ({os.path.realpath(path)}); a run file must be one. "
                              "Replace or delete it")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ReportError(f"{path}: more than {max_bytes:,} bytes, too big for a run file (a job's config is about "
                          "10 kB); replace or delete it")
    return data


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors and aliases (nothing vitlab or Hydra writes uses them)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"an anchor or alias (&/*{event.anchor}) is not allowed in a run file", event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike, max_bytes: int = MAX_RUN_FILE_BYTES) -> Any:
    """A run's YAML file (``.hydra/config.yaml``, ``overrides.yaml``, ``hparams.yaml``), bounded, without aliases."""
    text = read_bytes(path, max_bytes)
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML for a run file ({' '.join(str(e).split())})") from e
    except RecursionError:
        raise ReportError(f"{path}: nested too deeply to be a run file") from None


def read_overrides(job_dir: str | os.PathLike) -> list[str]:
    """The job's command-line overrides (``.hydra/overrides.yaml``), or [] when there is none."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    data = read_yaml(path)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ReportError(f"{path}: holds a {type(data).__name__}, not Hydra's list of overrides")
    return [str(o) for o in data if isinstance(o, (str, int, float, bool))]


def read_config(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's config with its interpolations resolved (:func:`resolve_config`), or None when there is none.

    ``<job>/config.yaml`` (vitlab.train's resolved copy) first, else Hydra's ``.hydra/config.yaml`` (which keeps the
    ``${...}``)."""
    for path in (Path(job_dir) / "config.yaml", Path(job_dir) / ".hydra" / "config.yaml"):
        if path.is_file():
            data = read_yaml(path)
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ReportError(f"{path}: holds a {type(data).__name__}, not a config (a mapping)")
            try:
                return resolve_config(data)
            except RecursionError:
                raise ReportError(f"{path}: nested too deeply to be a config") from None
    return None


# ---- ${...} without OmegaConf's resolvers ------------------------------------------------------------------
_INTERP = re.compile(r"\$\{([^${}]*)\}")
_NODE = re.compile(r"[A-Za-z_][\w-]*(?:(?:\.[\w-]+)|(?:\[\d+\]))*")


def _lookup(root: Any, key: str) -> Any:
    node = root
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(key)
    return node


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every ``${a.b}`` replaced by the value at ``a.b`` of ``cfg`` (as OmegaConf would), each key once.

    Only references to values are followed. A resolver call (``${oc.env:HOME}``, ``${hydra:sweep.dir}``,
    ``${now:%H}``), a reference to a missing key or to a whole section, a loop and a result over
    :data:`MAX_RESOLVED_CHARS` characters become ``(unresolved: ${...})``: readable in a table, and nothing
    outside the file is read or run.
    """
    memo: dict[str, Any] = {}
    busy = object()

    def unresolved(expr: str) -> str:
        return UNRESOLVED.format(expr=expr if len(expr) <= 200 else expr[:200] + "...")

    def value(key: str) -> Any:
        if key not in memo:
            memo[key] = busy
            try:
                node = _lookup(cfg, key)
            except KeyError:
                node = None
                memo[key] = unresolved(f"${{{key}}}")
            if isinstance(node, (dict, list)):
                memo[key] = unresolved(f"${{{key}}}")  # a whole section: not a table cell, and not copied around
            elif memo[key] is busy:
                memo[key] = string(node) if isinstance(node, str) else node
        got = memo[key]
        return unresolved(f"${{{key}}}") if got is busy else got  # busy: a loop

    def failed(v: Any) -> bool:
        return isinstance(v, str) and v.startswith(_UNRESOLVED_HEAD)

    def string(s: str) -> Any:
        if "${" not in s:
            return s
        whole = _INTERP.fullmatch(s)
        if whole and _NODE.fullmatch(whole.group(1).strip()):
            v = value(whole.group(1).strip())  # a whole-value reference keeps the type (0.001, not "0.001")
            return unresolved(s) if failed(v) else v

        def sub(m: re.Match) -> str:
            expr = m.group(1).strip()
            if not _NODE.fullmatch(expr):  # a resolver call, a relative or nested interpolation
                raise LookupError(m.group(0))
            v = value(expr)
            if failed(v):
                raise LookupError(m.group(0))
            return "null" if v is None else str(v)

        try:
            out = _INTERP.sub(sub, s)
        except LookupError:
            return unresolved(s)
        return unresolved(s) if "${" in out or len(out) > MAX_RESOLVED_CHARS else out

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return string(node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(cfg)


_UNRESOLVED_HEAD = UNRESOLVED.split("{expr}")[0]
