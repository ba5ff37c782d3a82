"""Hydra callbacks: after a multirun, print and save one table of every job's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

RESULT_FILE = "metrics.json"

# (header, result key, format)
COLUMNS = (
    ("model", "model/name", "{}"),
    ("params (M)", "model/params_m", "{:.2f}"),
    ("data", "data/name", "{}"),
    ("train size", "data/train_size", "{:,}"),
    ("val/acc (best)", "val/acc_best", "{:.2%}"),
    ("test/acc", "test/acc", "{:.2%}"),
    ("wall (s)", "time/wall_s", "{:.1f}"),
)


def collect_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's ``metrics.json`` under a sweep directory, in job order."""
    rows = []
    for p in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        row = json.loads(p.read_text())
        row["job_dir"] = str(p.parent)
        rows.append(row)
    return rows


def fmt_cell(v: Any, fmt: str) -> str:
    """One table cell: ``fmt`` applied to ``v``, ``-`` for missing, ``str(v)`` where the format does not fit."""
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    head = "| " + " | ".join(c for c, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt_cell(r.get(k), f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


class SweepSummary(Callback):
    """On multirun end: print a Markdown table of all jobs and write ``summary.md`` / ``summary.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_results(sweep_dir)
        if not rows:
            print(f"[vitlab] no job under {sweep_dir} wrote {RESULT_FILE} (did every job fail?)")
            return
        table = markdown_table(rows)
        (sweep_dir / "summary.md").write_text(table + "\n")
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2))
        total = sum(r.get("time/wall_s") or 0 for r in rows)
        print(f"\n{table}\n\n{len(rows)} runs, {total:.0f} s of training in total; table saved to {sweep_dir / 'summary.md'}")
