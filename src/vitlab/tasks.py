"""What every task shares: the command-line entry point (:func:`hydra_app`), the error formatting of the command
line (:func:`run_task`, a plain function: tests call it in-process), the wrapper of every task, which refuses a
literal secret, owns the run directory and always closes the W&B run (:func:`task_wrapper`), and result reporting.

This module imports nothing heavy (no torch, no Lightning), so that a command refused at start-up (a literal
secret, a busy run directory, a wrong value) answers in about two seconds.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vitlab import CONF_DIR
from vitlab.config import register_resolvers
from vitlab.errors import ConfigError, UserError
from vitlab.utils.clock import mark_main
from vitlab.utils.run_owner import acquire, release
from vitlab.utils.secrets import check_no_literal_secrets, redact
from vitlab.wandb_io import finish_wandb

_VITLAB_DIR = str(Path(__file__).resolve().parent)


def task_wrapper(fn: Callable) -> Callable:
    """Run a task ``fn(cfg, ...)`` (every task is one: from its command line, a notebook or another task) once its
    config holds no literal secret (``check_no_literal_secrets``; the Hydra callback ``RunGuard`` has already masked
    it in everything Hydra saves or prints), as the owner of ``cfg.paths.output_dir`` (:mod:`vitlab.utils.run_owner`:
    a second process in the same directory is refused before it writes anything); whatever happens, finish the W&B
    run (exit code 1 on failure) before returning or raising."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        cfg = args[0] if args else kwargs.get("cfg")
        if isinstance(cfg, DictConfig):
            check_no_literal_secrets(cfg)
        out_dir = OmegaConf.select(cfg, "paths.output_dir", default=None) if isinstance(cfg, DictConfig) else None
        if out_dir:
            acquire(out_dir, key="paths.output_dir")
        try:
            try:
                out = fn(*args, **kwargs)
            except BaseException:
                finish_wandb(exit_code=1)
                raise
            finish_wandb(exit_code=0)
        finally:
            if out_dir:
                release(out_dir)
        return out

    return wrapped


def user_error(exc: BaseException) -> BaseException | None:
    """The user's mistake behind ``exc``, or None for a bug.

    A mistake is an error class of vitlab's own that derives from ``ValueError`` (``ConfigError``,
    ``DataConfigError``, ``ModelConfigError``, ``PretrainedError``, ...: each names the key or file and the fix),
    or a ``FileNotFoundError`` raised by vitlab's code (a path the user gave). Hydra's ``instantiate`` wraps
    errors raised while building an object, so the ``__cause__`` chain is searched too.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ValueError) and type(exc).__module__.startswith("vitlab."):
            return exc
        if isinstance(exc, FileNotFoundError) and _raised_in_vitlab(exc):
            return exc
        # OmegaConf drops the cause of an error raised by a resolver (unless OC_CAUSE=1): it is the context
        nxt = exc.__cause__
        if nxt is None and type(exc).__module__.startswith("omegaconf"):
            nxt = exc.__context__
        exc, seen = nxt, seen + 1
    return None


def check_no_missing_values(cfg: DictConfig) -> None:
    """A required key left at ``???`` (``data.root`` of data=folder, ``ckpt_path`` of evaluate) is named with the
    fix, instead of the resolver traceback of the first value that reads it."""
    key = _first_missing(cfg)
    if key is not None:
        section = key.split(".")[0]
        group = cfg[section].get("name") if "." in key and OmegaConf.is_dict(cfg[section]) else None
        where = f" (data={group} needs it)" if section == "data" and isinstance(group, str) else ""
        raise ConfigError(f"{key} is not set{where}: pass {key}=<value> on the command line")


def _first_missing(node: Any, prefix: str = "") -> str | None:
    """The first key left at ``???`` (OmegaConf.missing_keys resolves interpolations, which fail on it)."""
    for key in node.keys() if OmegaConf.is_dict(node) else range(len(node)):
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            return path
        child = node._get_node(key)
        if OmegaConf.is_config(child) and not OmegaConf.is_interpolation(node, key):
            found = _first_missing(child, f"{path}.")
            if found:
                return found
    return None


def _raised_in_vitlab(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(_VITLAB_DIR)


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig, returns: str | None = None) -> Any:
    """Run task ``fn`` on a composed ``cfg`` exactly as its command line does (what :func:`hydra_app` calls).

    - A key left at ``???`` is named with the fix before the task runs (:func:`check_no_missing_values`); a
      literal secret is refused by the task itself (:func:`task_wrapper`).
    - A user's mistake (:func:`user_error`) is raised as :class:`UserError` ``Error: <message>`` (which names the
      key or file and the fix), secrets masked: Hydra prints it without a Python traceback, exit code 1
      (``HYDRA_FULL_ERROR=1`` shows the full trace). Anything else is a bug and keeps its stack trace.

    ``returns``: the metric the command returns (to a sweeper) from the task's result dict; None returns the
    task's own return value.
    """
    try:
        check_no_missing_values(cfg)
        out = fn(cfg)
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        raise UserError(f"Error: {redact(str(cause))}") from e
    return out.get(returns) if returns is not None else out


def hydra_app(config_name: str, returns: str | None = None) -> Callable:
    """``@hydra.main`` for a vitlab task (``conf/<config_name>.yaml``) whose job is :func:`run_task`; the config
    resolvers (``${vitlab.uid:}``, ``${vitlab.paper:...}``, ...) are registered first."""
    register_resolvers()

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            return run_task(fn, cfg, returns)

        # Hydra names the job (and its log file) after the task function's module; run as `python -m vitlab.X`
        # that module is __main__, and Hydra would fall back to the file of this wrapper: name the real one.
        if task.__module__ == "__main__":
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            task.__module__ = spec.name if spec is not None else Path(sys.argv[0]).stem
        app = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(task)

        @functools.wraps(app)
        def main(*args, **kwargs) -> Any:
            mark_main()  # the imports are done: the start-up bench's split point
            return app(*args, **kwargs)

        return main

    return decorate


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            continue
    return out


def print_metrics(metrics: Mapping[str, float], prefixes=("val/", "test/")) -> None:
    """The closing lines of every run: one ``name value`` pair per line."""
    keys = [k for k in sorted(metrics) if k.startswith(prefixes)]
    width = max((len(k) for k in keys), default=0)
    print("\nfinal metrics:")
    for k in keys:
        print(f"  {k:<{width}}  {metrics[k]:.4f}")
