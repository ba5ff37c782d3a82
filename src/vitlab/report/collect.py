"""Collect finished runs into one table: from ``metrics.json``, CSV logs, or W&B offline run files.

A *job dir* is what one training job wrote (``metrics.json``, ``.hydra/``, ``csv/metrics.csv``,
``wandb/offline-run-*``). A sweep dir is a folder of job dirs (a Hydra multirun dir). Each row is a
flat dict keyed like the loggers (``model/name``, ``data/train_size``, ``val/acc_best``,
``train/exaflops``...), plus ``job_dir``, ``source``, the job's Hydra ``overrides`` and its ``protocol``
(:func:`protocol`), with config values as resolved (``vitlab.utils.run_files``: bounded, no YAML aliases, no
resolvers).
Sources, best first: ``metrics.json`` (what ``vitlab.train`` writes at the end), the CSV logger's
``metrics.csv`` + ``hparams.yaml`` (a run that died before the end), a W&B offline run (a run logged
only to W&B, or a synced copy of one). What ``vitlab.report`` itself wrote (a folder holding
:data:`REPORT_MARKER`, a W&B run with ``job_type=report``) is never read back as a result.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vitlab import metrics as M
from vitlab.errors import ReportError
from vitlab.results import RESULT_FILE, read_results
from vitlab.utils.run_files import read_config, read_overrides, read_yaml
from vitlab.wandb_io.offline import read_offline_run

log = logging.getLogger("vitlab.report")

#: what a fine-tune run's checkpoint was pretrained on (and for how many epochs): read from its config for
#: vitlab.report.paper_points, which matches the run to the paper's tables
PRETRAIN_DATA_KEY, PRETRAIN_EPOCHS_KEY = "paper.pretrain_data", "paper.pretrain_epochs"
#: a file every report output folder holds: such a folder (and its W&B run) is never a job of its own
REPORT_MARKER = "report.json"
#: the W&B job type of the report's own run
REPORT_JOB_TYPE = "report"
#: how a run was trained, from its config (:func:`protocol`): from a random init, from a pretrained checkpoint,
#: a frozen model's few-shot linear evaluation, or an evaluation of a checkpoint
SCRATCH, FINETUNE, FEWSHOT, EVAL = "scratch", "fine-tune", "few-shot", "eval"


def _num(v: Any) -> Any:
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def is_job_dir(p: Path) -> bool:
    if not p.is_dir() or (p / REPORT_MARKER).exists():
        return False
    return any((p / n).exists() for n in (RESULT_FILE, ".hydra/config.yaml", "csv/metrics.csv")) \
        or bool(list(p.glob("wandb/*/run-*.wandb")))


def find_job_dirs(root: str | Path) -> list[Path]:
    """Job dirs at or below ``root`` (a job dir itself, a multirun dir, or a folder of multirun dirs)."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"sweep_dir={root}: no such directory (pass a Hydra multirun dir, e.g. logs/data_scaling/multiruns/<date>)")
    if is_job_dir(root):
        return [root]
    found: set[Path] = set()
    for marker in (RESULT_FILE, ".hydra/config.yaml", "csv/metrics.csv"):
        for f in root.rglob(marker):
            job = f.parent if marker == RESULT_FILE else f.parent.parent
            if "wandb" not in job.parts[len(root.parts):]:
                found.add(job)
    for f in root.rglob("run-*.wandb"):
        run_dir = f.parent  # .../<job>/wandb/offline-run-*/run-*.wandb, or a bare offline-run dir
        job = run_dir.parent.parent if run_dir.parent.name == "wandb" else run_dir
        if not any(job == j or j in job.parents for j in found):
            found.add(job)
    found = {j for j in found if not (j / REPORT_MARKER).exists()}  # the report's own output
    return sorted(found, key=lambda p: (len(p.parts), _natural(p.name), str(p)))


def _natural(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_csv_metrics(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(last value of every column, all rows) of a Lightning CSVLogger ``metrics.csv``."""
    with path.open(newline="") as f:
        rows = [{k: _num(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    last: dict[str, Any] = {}
    for r in rows:
        last.update(r)
    accs = [r[M.VAL_ACC] for r in rows if isinstance(r.get(M.VAL_ACC), (int, float))]
    if accs:
        last[M.VAL_ACC_BEST] = max(accs)
    return last, rows


def _from_wandb(job: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    files = sorted(job.glob("wandb/*/run-*.wandb")) or sorted(job.glob("run-*.wandb"))
    if not files:
        return None
    run = read_offline_run(files[-1].parent)
    if run.job_type == REPORT_JOB_TYPE:  # a report's own run: its table holds other runs' results
        return None
    row = {k: v for k, v in run.config.items() if "/" in k and not isinstance(v, dict)}
    row.update({k: v for k, v in run.summary.items() if not k.startswith("_") and not isinstance(v, dict)})
    best = run.best(M.VAL_ACC)
    if best is not None:
        row[M.VAL_ACC_BEST] = max(best, row.get(M.VAL_ACC_BEST) or best)
    meta = {"wandb/run_id": run.run_id, "wandb/group": run.group, "wandb/job_type": run.job_type,
            "wandb/name": run.name}
    return row, meta


def protocol(cfg: dict[str, Any] | None) -> str | None:
    """scratch / fine-tune / few-shot / eval, from a job's resolved config (None without one).

    few-shot: ``vitlab.fewshot`` (``task_name: fewshot``); fine-tune: ``model.pretrained`` set, or
    ``job_type: finetune``; eval: ``job_type: eval`` (``vitlab.evaluate``); else trained from scratch."""
    if cfg is None:
        return None
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if cfg.get("task_name") == "fewshot":
        return FEWSHOT
    if model.get("pretrained") not in (None, "", False) or cfg.get("job_type") == "finetune":
        return FINETUNE
    if cfg.get("job_type") == "eval":
        return EVAL
    return SCRATCH


def read_job(job: str | Path) -> dict[str, Any]:
    """One row for one job dir (see the module docstring for the sources)."""
    job = Path(job)
    row: dict[str, Any] = {}
    source = None
    if (job / RESULT_FILE).is_file():
        row = read_results(job)
        source = RESULT_FILE
    csv_path = next(iter(sorted(job.glob("csv/**/metrics.csv"))), None)
    if csv_path is not None:
        last, _ = read_csv_metrics(csv_path)
        hp = csv_path.parent / "hparams.yaml"
        hparams = {}
        if hp.is_file():
            try:
                hparams = read_yaml(hp)
            except ReportError as e:  # the CSV log's extra keys only: its metrics still count
                log.warning("%s; reading %s without it", e, csv_path)
        extra = {k: v for k, v in (hparams if isinstance(hparams, dict) else {}).items()
                 if "/" in str(k) and not isinstance(v, (dict, list))}
        extra.update(last)
        row = {**extra, **row}  # metrics.json wins where both have a key
        source = source or "csv"
    wb = _from_wandb(job)
    if wb is not None:
        wrow, meta = wb
        row = {**wrow, **row, **meta}
        source = source or "wandb"
    if source is None:
        raise ReportError(f"{job}: no {RESULT_FILE}, csv/metrics.csv or wandb/offline-run-* to read")
    cfg = read_config(job)
    if cfg is not None:
        for key in ("group", "job_type", "task_name", "seed"):
            if key in cfg and not isinstance(cfg[key], (dict, list)):
                row.setdefault(key, cfg[key])
        flat = _flatten(cfg)
        for key in ("optim.lr", "optim.weight_decay", "data.batch_size", "trainer.max_steps", "trainer.max_epochs",
                    PRETRAIN_DATA_KEY, PRETRAIN_EPOCHS_KEY):
            if key in flat:
                row.setdefault(key, flat[key])
    row[M.PROTOCOL] = protocol(cfg)
    overrides = read_overrides(job)
    if overrides:
        row["overrides"] = " ".join(overrides)
    # older runs without the compute tracker: images seen x training FLOPs per image
    if row.get(M.TRAIN_EXAFLOPS) is None and _is_num(row.get(M.TRAIN_IMAGES_SEEN)) \
            and _is_num(row.get(M.MODEL_TRAIN_GFLOPS)):
        row[M.TRAIN_EXAFLOPS] = row[M.TRAIN_IMAGES_SEEN] * row[M.MODEL_TRAIN_GFLOPS] * 1e9 / 1e18
    row["job_dir"] = str(job)
    row["source"] = source
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def collect(sweep_dirs: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows for every job under one or more sweep dirs. A job whose files cannot be read is left out with a
    warning naming it and why; no readable job at all is an error."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    rows = []
    for d in sweep_dirs:
        jobs = find_job_dirs(d)
        if not jobs:
            raise ReportError(f"sweep_dir={d}: no job dirs under it (expected <job>/metrics.json, "
                              f"<job>/csv/metrics.csv or <job>/wandb/offline-run-*)")
        problems = []
        for j in jobs:
            try:
                rows.append(read_job(j))
            except ValueError as e:  # ReportError, WandbFileError: the message names the file
                problems.append(str(e))
                log.warning("skipped job %s: %s", j, e)
        if len(problems) == len(jobs):
            raise ReportError(f"sweep_dir={d}: no job could be read; the first: {problems[0]}")
    return rows


def latest_sweep(log_dir: str | Path) -> Path:
    """The most recently modified multirun dir under ``log_dir`` (``<task>/multiruns/<date>``)."""
    cands = [p for p in Path(log_dir).glob("*/multiruns/*") if p.is_dir()]
    if not cands:
        raise ReportError(f"no multirun dir under {Path(log_dir).resolve()}/*/multiruns/: run a sweep first "
                          "(make sweep) or pass sweep_dir=<dir>")
    return max(cands, key=lambda p: p.stat().st_mtime)


#: a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v: Any) -> Any:
    """``v`` as a CSV cell that a spreadsheet shows rather than runs: text starting with ``= + - @``, a tab or a
    carriage return gets a leading ``'`` (OWASP's rule); numbers stay numbers."""
    return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v


def write_csv(rows: Iterable[dict[str, Any]], path: Path, first: Sequence[str] = ()) -> Path:
    rows = list(rows)
    keys = list(dict.fromkeys([*first, *sorted({k for r in rows for k in r})]))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([csv_cell(k) for k in keys])
        for r in rows:
            w.writerow([csv_cell(r.get(k)) for k in keys])
    return path
