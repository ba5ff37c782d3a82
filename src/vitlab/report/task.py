"""vitlab.report: turn finished runs into the paper's figures, one table (CSV + Markdown) and one HTML page.

    python -m vitlab.report                                  # the latest multirun under logs/
    python -m vitlab.report sweep_dir=logs/data_scaling/multiruns/<date>
    python -m vitlab.report 'sweep_dir=[dirA,dirB]' out_dir=reports/fig5 wandb.log=true wandb.dashboard=true

The outputs are written as the owner of ``out_dir`` (``vitlab.utils.run_owner``): a second report into the same
folder at the same time is refused with the first one's pid. Table cells are escaped for where they go (a CSV
cell never starts a spreadsheet formula, a Markdown cell never breaks its row or carries HTML).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from vitlab import metrics as M
from vitlab.errors import ReportError
from vitlab.metrics import PAPER_SOURCE
from vitlab.report.collect import (
    REPORT_JOB_TYPE,
    REPORT_MARKER,
    collect,
    latest_sweep,
    write_csv,
)
from vitlab.report.figures import accuracy_key, html_page, plot_compute, plot_data_scaling
from vitlab.report.paper_points import annotate
from vitlab.tasks import hydra_app, task_wrapper
from vitlab.utils.hydra_callbacks import columns, markdown_table, markdown_text
from vitlab.utils.run_owner import own
from vitlab.wandb_io import wandb_offline
from vitlab.wandb_io.offline import wait_until_finished
from vitlab.wandb_io.run import log_figures, log_table, wandb_run

log = logging.getLogger("vitlab.report")

# the Markdown/HTML table (formats: utils/hydra_callbacks.COLUMN_SPECS); the CSV has every key
COLUMNS = columns(M.MODEL_NAME, M.MODEL_FAMILY, M.MODEL_PARAMS_M, M.MODEL_GFLOPS, M.MODEL_IMG_SIZE, M.DATA_NAME,
                  M.PROTOCOL, M.DATA_TRAIN_SIZE, "optim.lr", M.VAL_ACC_BEST, M.TEST_ACC, M.PAPER_ACC, M.TRAIN_EXAFLOPS,
                  M.TIME_WALL_S, "source")
SORT_KEYS = (M.MODEL_FAMILY, M.MODEL_NAME, M.DATA_NAME, M.PROTOCOL, M.DATA_TRAIN_SIZE, "optim.lr", "seed")


def _sort_key(r: dict[str, Any]) -> tuple:
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in (r.get(k) for k in SORT_KEYS))


def markdown(rows, columns=COLUMNS) -> str:
    return markdown_table(rows, columns)


def make_report(sweep_dirs, out_dir: str | Path, title: str = "vitlab report", log_to_wandb: bool = False,
                figures: tuple[str, ...] = ("data_scaling", "compute")) -> dict[str, Any]:
    """Collect, tabulate, plot; return ``{"rows", "files", "skipped"}``."""
    rows = sorted(collect(sweep_dirs), key=_sort_key)
    matched = annotate(rows)  # the paper's number beside each run it also reports (vitlab.report.paper_points)
    out = Path(out_dir)
    with own(out, key="out_dir", task="vitlab.report"):
        return _write(rows, matched, sweep_dirs, out, title, log_to_wandb, figures)


def _write(rows, matched: int, sweep_dirs, out: Path, title: str, log_to_wandb: bool,
           figures: tuple[str, ...]) -> dict[str, Any]:
    (out / REPORT_MARKER).write_text(json.dumps(rows, indent=2, default=str))  # first: marks the folder as a report's
    files: dict[str, Path] = {
        "csv": write_csv(rows, out / "report.csv", first=[k for _, k, _ in COLUMNS] + [PAPER_SOURCE, "job_dir"]),
    }
    table = markdown(rows)
    (out / "report.md").write_text(f"# {markdown_text(title)}\n\n{table}\n")
    files["md"] = out / "report.md"
    figs: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    try:
        y = accuracy_key(rows)
    except ValueError as e:
        y, skipped["all figures"] = None, str(e)
    plotters = {"data_scaling": plot_data_scaling, "compute": plot_compute}
    for name in figures if y else ():
        if name not in plotters:
            raise ReportError(f"figures: unknown figure {name!r}; choose from {sorted(plotters)}")
        try:
            figs[name] = plotters[name](rows, out / f"{name}.png", y=y)
        except ValueError as e:  # e.g. no run has train/exaflops: skip that figure, say why
            skipped[name] = str(e)
    files.update({f"png:{k}": v for k, v in figs.items()})
    notes = f"{len(rows)} runs from {', '.join(str(d) for d in _as_list(sweep_dirs))}; y = {y}; " \
            f"{matched} with the paper's number beside them (grey stars)."
    (out / "report.html").write_text(html_page(title, figs, rows, COLUMNS, notes))
    files["html"] = out / "report.html"
    files["json"] = out / REPORT_MARKER
    if log_to_wandb:
        files["wandb"] = _log_wandb(rows, figs, title, out)
    return {"rows": rows, "files": files, "skipped": skipped, "table": table}


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple, ListConfig)) else [x]


def _log_wandb(rows, figs, title: str, out: Path) -> Path:
    """One W&B run (job_type=report, group = the study) holding the figures (wandb.Image) and the table."""
    group = next((r.get("group") for r in rows if r.get("group")), None)
    with wandb_run(title, group, REPORT_JOB_TYPE, out) as run:
        log_figures(run, figs)
        log_table(run, "report/runs", rows, [k for _, k, _ in COLUMNS] + ["job_dir"])
        run_dir = Path(run.dir).parent
    if wandb_offline():
        wait_until_finished(run_dir)
    return run_dir


def dashboard_files(wb, sweeps: list[str], out_dir: str | Path) -> Path:
    """``wandb.dashboard=true``: the workspace spec as JSON; ``wandb.push=true`` also creates it on W&B."""
    # lazy: wandb-workspaces' import is ~0.5 s of every report's start-up; only wandb.dashboard=true needs it
    from vitlab.wandb_io.dashboard import push_dashboard, write_dashboard

    group = wb.get("group") or Path(sweeps[0]).resolve().parents[1].name  # logs/<task_name>/multiruns/<date>
    entity, project = wb.get("entity") or "", wb.get("project") or "vitlab"
    path = write_dashboard(out_dir, entity or "<entity>", project, group)
    print(f"[vitlab.report] W&B dashboard for group '{group}': {path}")
    if wb.get("push"):
        if not os.environ.get("WANDB_API_KEY") or not entity:
            raise ValueError("wandb.push=true needs WANDB_API_KEY and wandb.entity (or WANDB_ENTITY) set")
        print(f"[vitlab.report] pushed: {push_dashboard(entity, project, group)}")
    return path


@hydra_app("report")
@task_wrapper
def main(cfg: DictConfig) -> dict[str, Any]:
    sweep = cfg.sweep_dir
    if sweep in (None, "", "latest"):
        sweep = str(latest_sweep(cfg.paths.log_dir))
        print(f"sweep_dir=latest: {sweep}")
    sweeps = [str(s) for s in _as_list(sweep)]
    out_dir = cfg.out_dir or str(Path(sweeps[0]) / "report")
    wb = cfg.wandb if isinstance(cfg.wandb, DictConfig) else {"log": bool(cfg.wandb)}  # `wandb=true` still works
    res = make_report(sweeps, out_dir, title=cfg.title, log_to_wandb=bool(wb.get("log")), figures=tuple(cfg.figures))
    if wb.get("dashboard"):
        res["files"]["wandb_dashboard"] = dashboard_files(wb, sweeps, out_dir)
    print(res["table"])
    for name, why in res["skipped"].items():
        print(f"[vitlab.report] figure '{name}' skipped: {why}")
    print(f"\n{len(res['rows'])} runs; wrote " + ", ".join(str(p) for p in res["files"].values()))
    return res


if __name__ == "__main__":
    main()
