"""Hydra callbacks: guard a run before Hydra writes anything; after a multirun, print and save one table.

Hydra calls ``on_run_start`` / ``on_multirun_start`` after composing the config and before it creates the
output directory, saves ``.hydra/*.yaml``, configures the job's log file or launches any job
(``hydra._internal.hydra.Hydra.run`` / ``multirun``, then ``hydra.core.utils.run_job``), so that is where
:class:`RunGuard` masks secrets and takes the directory's lock.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vitlab import metrics as M
from vitlab.errors import RunDirBusyError
from vitlab.results import RESULT_FILE, collect_results
from vitlab.utils.run_owner import acquire, own, release
from vitlab.utils.secrets import mask_hydra_config, redact

log = logging.getLogger("vitlab")

#: how a result key is shown in the summary and report tables: key -> (header, format)
COLUMN_SPECS: dict[str, tuple[str, str]] = {
    M.MODEL_NAME: ("model", "{}"), M.MODEL_FAMILY: ("family", "{}"), M.MODEL_PARAMS_M: ("params (M)", "{:.2f}"),
    M.MODEL_GFLOPS: ("GFLOPs/img", "{:.3g}"), M.MODEL_IMG_SIZE: ("res", "{}"), M.DATA_NAME: ("data", "{}"),
    M.DATA_TRAIN_SIZE: ("train size", "{:,}"), "optim.lr": ("lr", "{:g}"),
    M.PROTOCOL: ("protocol", "{}"),
    M.VAL_ACC_BEST: ("val/acc (best)", "{:.2%}"), M.TEST_ACC: (M.TEST_ACC, "{:.2%}"),
    M.PAPER_ACC: ("paper", "{:.2%}"),  # the paper's number for the same model, pretraining and fine-tuning data
    M.TRAIN_EXAFLOPS: ("exaFLOPs", "{:.3g}"), M.TIME_WALL_S: ("wall (s)", "{:.1f}"), "source": ("source", "{}"),
}


def columns(*keys: str) -> tuple[tuple[str, str, str], ...]:
    """``(header, key, format)`` for each key, from :data:`COLUMN_SPECS`."""
    return tuple((COLUMN_SPECS[k][0], k, COLUMN_SPECS[k][1]) for k in keys)


#: the sweep summary's table
COLUMNS = columns(M.MODEL_NAME, M.MODEL_PARAMS_M, M.DATA_NAME, M.DATA_TRAIN_SIZE, M.VAL_ACC_BEST, M.TEST_ACC,
                  M.TIME_WALL_S)


def fmt_cell(v: Any, fmt: str) -> str:
    """One table cell: ``fmt`` applied to ``v``, ``-`` for missing, ``str(v)`` where the format does not fit."""
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_text(s: Any) -> str:
    """``s`` as the text of one Markdown table cell: HTML escaped, ``|`` and ``\\`` escaped, line breaks as spaces
    (a value from a run file can neither end its row nor inject markup)."""
    s = html.escape(str(s), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(s.splitlines())


def markdown_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    head = "| " + " | ".join(markdown_text(c) for c, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(markdown_text(fmt_cell(r.get(k), f)) for _, k, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _exit_busy(e: Exception) -> None:
    """Stop this process before Hydra touches the directory (Hydra turns a callback's exception into a warning
    and goes on, so a clean exit is the only way to refuse here)."""
    raise SystemExit(f"Error: {redact(str(e))}")


class RunGuard(Callback):
    """Before Hydra saves ``.hydra/`` or starts a job: mask literal secrets in the config
    (:func:`vitlab.utils.secrets.mask_hydra_config`) and own the run directory (single run) or the sweep
    directory (multirun) for the life of the process (:mod:`vitlab.utils.run_owner`). A directory that another
    live process owns stops this one with a message naming the directory and the owner's pid, exit code 1."""

    def _own(self, config: DictConfig, key: str) -> None:
        try:
            d = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - unresolvable here: the task takes the lock on its output dir
            return
        if not d:
            return
        try:
            acquire(d, key=key, task=f"vitlab.{config.get('task_name', 'run')}")
        except RunDirBusyError as e:
            _exit_busy(e)
        self._dirs.append(str(d))

    def _release(self) -> None:
        while getattr(self, "_dirs", None):
            release(self._dirs.pop())

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._dirs: list[str] = []
        mask_hydra_config(config)
        self._own(config, "hydra.run.dir")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._dirs = []
        mask_hydra_config(config)
        self._own(config, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()  # Hydra calls end hooks in reverse order: the summaries below ran under this lock


class SweepSummary(Callback):
    """On multirun end: print a Markdown table of all jobs and write ``summary.md`` / ``summary.json``, as the
    owner of the sweep directory (a second sweep writing the same directory is refused, see ``RunGuard``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            with own(sweep_dir, key="hydra.sweep.dir", task="vitlab sweep summary"):
                self._write(sweep_dir)
        except RunDirBusyError as e:
            print(f"[vitlab] no summary written: {e}")

    def _write(self, sweep_dir: Path) -> None:
        rows = collect_results(sweep_dir)
        if not rows:
            print(f"[vitlab] no job under {sweep_dir} wrote {RESULT_FILE} (did every job fail?)")
            return
        table = markdown_table(rows)
        (sweep_dir / "summary.md").write_text(table + "\n")
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2))
        total = sum(r.get(M.TIME_WALL_S) or 0 for r in rows)
        print(f"\n{table}\n\n{len(rows)} runs, {total:.0f} s of training in total; table saved to {sweep_dir / 'summary.md'}")


def self_sweeping_experiments(overrides: list[str], config_name: str = "train") -> dict[str, dict[str, Any]]:
    """The experiments a multirun sweeps over (``experiment=a,b`` / ``experiment=glob(*)``) that carry their own
    ``hydra.sweeper.params``, with those params. Hydra composes the sweeper from the config *without* the swept
    overrides, so such an experiment's own sweep is dropped and each of its jobs would run something else."""
    swept: list[str] = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.get_key_element().lstrip("+~") != "experiment" or not ov.is_sweep_override():
            continue
        val = ov.value()
        if isinstance(val, Glob):
            options = GlobalHydra.instance().config_loader().get_group_options("experiment")
            swept += val.filter(options)
        elif isinstance(val, ChoiceSweep):
            swept += [str(v) for v in val.list]
    out = {}
    for name in dict.fromkeys(swept):
        cfg = compose(config_name=config_name, overrides=[f"experiment={name}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params")
        if params:
            out[name] = dict(params)
    return out


class ExperimentSweepGuard(Callback):
    """Refuse ``-m experiment=glob(*)`` (or ``experiment=a,b``) when a swept experiment sweeps itself, before any
    job starts: those jobs would silently run plain training instead of the experiment's own sweep (a Hydra
    callback's exceptions are only warned about, so this exits with the message)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = list(config.hydra.overrides.task)
        config_name = kwargs.get("config_name") or "train"
        bad = self_sweeping_experiments(overrides, config_name)
        if not bad:
            return
        rest = [o for o in overrides if not o.lstrip("+~").startswith("experiment=")]
        lines = [f"  python -m vitlab.{config_name} experiment={n}"
                 f"{' ' + ' '.join(rest) if rest else ''}    # sweeps {', '.join(f'{k}={v}' for k, v in p.items())}"
                 for n, p in bad.items()]
        raise SystemExit(
            "[vitlab] refusing this multirun: these experiments sweep themselves (their own hydra.sweeper.params), "
            "which Hydra ignores when the experiment is itself swept, so their jobs would run something else:\n"
            + "\n".join(lines)
            + "\nRun each of them on its own (the commands above); sweep only experiments that are single jobs."
        )
