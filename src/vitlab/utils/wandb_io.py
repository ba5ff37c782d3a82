"""W&B, the parts every layer may use: whether a run logs offline, and figures and result tables as W&B media.

The best-value run summaries are a training callback (:mod:`vitlab.callbacks.wandb_summary`), offline run files
are read back by :mod:`vitlab.report.wandb_offline`, dashboards are :mod:`vitlab.report.dashboard`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def wandb_offline() -> bool:
    """W&B is offline unless a key is configured; WANDB_MODE=online|offline forces either way."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    return not os.environ.get("WANDB_API_KEY")


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
