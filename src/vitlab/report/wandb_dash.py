"""W&B as the dashboard: figures as ``wandb.Image``, result tables as ``wandb.Table``.

The best-value run summaries are a training callback, :mod:`vitlab.callbacks.wandb_summary`; the scaling keys
(model family/variant/patch/params/GFLOPs, data/train_size, resolution) reach the run config through
``vitlab.runs.assemble.run_stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def log_figures(run, figures: Mapping[str, str | Path], prefix: str = "figures/") -> None:
    """Log PNG files as ``wandb.Image`` under ``prefix + name``."""
    import wandb

    run.log({f"{prefix}{name}": wandb.Image(str(path)) for name, path in figures.items()})


def log_table(run, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Log rows of results (a sweep table, a few-shot table) as one ``wandb.Table``."""
    import wandb

    columns = list(columns or sorted({k for r in rows for k in r}))
    data = [[_cell(r.get(c)) for c in columns] for r in rows]
    run.log({name: wandb.Table(columns=columns, data=data)})


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
