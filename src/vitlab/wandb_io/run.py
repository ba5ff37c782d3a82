"""The one W&B run of a task that logs figures and tables (analyze, report), and figures and result tables as W&B
media. (A training run's W&B run is its logger's: :mod:`vitlab.wandb_io.logger`.)"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb

from vitlab.utils.secrets import redact
from vitlab.wandb_io import wandb_offline


@contextlib.contextmanager
def wandb_run(name: str, group: Any, job_type: str, out_dir: str | Path) -> Iterator[Any]:
    """One W&B run of a task that logs figures and tables (analyze, report): offline unless a key is set, names
    masked after interpolation, always finished."""
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vitlab"), name=redact(name), group=redact(group),
                     job_type=job_type, dir=str(out_dir), mode="offline" if wandb_offline() else "online")
    try:
        yield run
    finally:
        run.finish()


def log_figures(run, figures: Mapping[str, str | Path], prefix: str = "figures/") -> None:
    """Log PNG files as ``wandb.Image`` under ``prefix + name``."""
    run.log({f"{prefix}{name}": wandb.Image(str(path)) for name, path in figures.items()})


def log_table(run, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Log rows of results (a sweep table, a few-shot table) as one ``wandb.Table``."""
    columns = list(columns or sorted({k for r in rows for k in r}))
    data = [[_cell(r.get(c)) for c in columns] for r in rows]
    run.log({name: wandb.Table(columns=columns, data=data)})


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
