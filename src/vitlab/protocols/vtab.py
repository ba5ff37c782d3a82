"""VTAB-1k results: per-task, per-group (Natural, Specialized, Structured) and mean accuracy (paper Table 2).

The task table (19 tasks, their group and class count) is the data layer's: ``vitlab.data.catalog.VTAB_TASKS``.
:class:`VTABSummary` is a Hydra callback: after the ``vitlab.vtab`` multirun (one job per task) it reads every
job's ``metrics.json`` and prints and saves the table (``vtab_summary.md`` / ``vtab_summary.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.data.catalog import VTAB_GROUPS, VTAB_TASKS
from vitlab.results import collect_results

GROUP_NAMES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


def vtab_table(task_acc: dict[str, float]) -> dict[str, Any]:
    """Group means and the overall mean (over tasks, as the paper reports) from ``{task: test accuracy}``.

    A group mean over only some of its tasks is flagged ``complete: False``; unknown task names fail loudly.
    """
    unknown = sorted(set(task_acc) - set(VTAB_TASKS))
    if unknown:
        raise ValueError(f"not VTAB-1k tasks: {unknown}; the 19 tasks are {list(VTAB_TASKS)}")
    groups = {}
    for g, tasks in VTAB_GROUPS.items():
        have = [task_acc[t] for t in tasks if t in task_acc]
        groups[g] = {"mean": sum(have) / len(have) if have else None, "n": len(have), "of": len(tasks),
                     "complete": len(have) == len(tasks)}
    accs = list(task_acc.values())
    return {"tasks": dict(task_acc), "groups": groups, "mean": sum(accs) / len(accs) if accs else None,
            "n": len(accs), "complete": len(accs) == len(VTAB_TASKS)}


def format_vtab_table(summary: dict[str, Any], extra: dict[str, dict[str, Any]] | None = None) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    extra = extra or {}
    lines = ["| group | task | classes | test acc (%) | lr |", "|---|---|---|---|---|"]
    for g, tasks in VTAB_GROUPS.items():
        for t in tasks:
            lr = extra.get(t, {}).get(M.VTAB_LR)
            lines.append(f"| {GROUP_NAMES[g]} | {t} | {VTAB_TASKS[t][1]} | {pct(summary['tasks'].get(t))} | "
                         f"{'-' if lr is None else lr} |")
    lines.append("")
    lines.append("| group | mean acc (%) | tasks |")
    lines.append("|---|---|---|")
    for g, s in summary["groups"].items():
        lines.append(f"| {GROUP_NAMES[g]} | {pct(s['mean'])} | {s['n']}/{s['of']} |")
    lines.append(f"| **all** | **{pct(summary['mean'])}** | {summary['n']}/{len(VTAB_TASKS)} |")
    return "\n".join(lines)


def summarise_sweep(sweep_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    rows = [r for r in collect_results(sweep_dir) if r.get(M.VTAB_TASK)]
    if not rows:
        return None
    acc = {r[M.VTAB_TASK]: float(r[M.TEST_ACC]) for r in rows if r.get(M.TEST_ACC) is not None}
    summary = vtab_table(acc)
    table = format_vtab_table(summary, {r[M.VTAB_TASK]: r for r in rows})
    return summary, table


class VTABSummary(Callback):
    """On multirun end: the VTAB-1k table of every finished task job."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        out = summarise_sweep(sweep_dir)
        if out is None:
            print(f"[vitlab.vtab] no task job under {sweep_dir} finished (see each job's log)")
            return
        summary, table = out
        (sweep_dir / "vtab_summary.md").write_text(table + "\n")
        (sweep_dir / "vtab_summary.json").write_text(json.dumps(summary, indent=2))
        note = "" if summary["complete"] else f" ({summary['n']} of {len(VTAB_TASKS)} tasks: a partial mean)"
        print(f"\nVTAB-1k{note}\n{table}\n\nsaved to {sweep_dir / 'vtab_summary.md'}")
