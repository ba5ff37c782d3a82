"""What every task shares: the run wrapper that always closes loggers, and result reporting."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vitlab.utils.hydra_callbacks import RESULT_FILE
from vitlab.utils.instantiate import finish_wandb

log = logging.getLogger("vitlab")


def task_wrapper(fn: Callable) -> Callable:
    """Run a task; whatever happens, finish the W&B run (exit code 1 on failure) before returning or raising."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            finish_wandb(exit_code=1)
            raise
        finish_wandb(exit_code=0)
        return out

    return wrapped


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            continue
    return out


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (what sweeps and reports read) atomically."""
    out = Path(out_dir) / RESULT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True))
    tmp.replace(out)
    return out


def print_metrics(metrics: Mapping[str, float], prefixes=("val/", "test/")) -> None:
    """The closing lines of every run: one ``name value`` pair per line."""
    keys = [k for k in sorted(metrics) if k.startswith(prefixes)]
    width = max((len(k) for k in keys), default=0)
    print("\nfinal metrics:")
    for k in keys:
        print(f"  {k:<{width}}  {metrics[k]:.4f}")
