"""The end of an Appendix D ablation sweep: the paper's table with vitlab's measured number beside each row.

:class:`AblationSummary` is a Hydra callback of ``experiment=paper/ablate_resnet_optimizer`` (Table 7),
``paper/ablate_classifier`` (Figure 9) and ``paper/ablate_pos_embed`` (Table 8). Each job's row of the paper's table
comes from its own resolved config (``<job>/config.yaml``: the keys of :data:`vitlab.paper.APPENDIX_D`, e.g.
``model.pos_embed`` and ``model.pos_embed_at``), its number from its ``metrics.json``: the ``shots``-shot linear
accuracy that the few-shot callback logged (``fewshot/<data>_<k>shot``). Jobs of the same row (seeds) are averaged.

Shrunk to a CPU (``+experiment/paper/shrink=cpu_ablation``), the runs are tiny models on embedded data: the table
then shows that vitlab runs the paper's comparison, measured the paper's way, not the paper's numbers.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.errors import ReportError
from vitlab.paper import APPENDIX_D, table_d_markdown
from vitlab.results import collect_results
from vitlab.utils.run_files import read_config

#: the file the table is also written to, in the sweep directory
TABLE_FILE = "ablation.md"


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fewshot_metric(row: dict[str, Any], shots: int) -> tuple[str, float] | None:
    """The one ``fewshot/<data>_<shots>shot`` number of a job's results (None when it has none)."""
    found = [(k, v) for k, v in row.items() if k.startswith(M.FEWSHOT_PREFIX) and k.endswith(f"_{int(shots)}shot")
             and isinstance(v, (int, float))]
    if len(found) > 1:
        raise ReportError(f"{row.get('job_dir')}: several {shots}-shot results ({', '.join(k for k, _ in found)}); "
                          "an ablation table reads one")
    return found[0] if found else None


def measured_runs(sweep_dir: str | Path, table: str, shots: int = 5) -> tuple[dict[tuple, float], list[dict[str, Any]]]:
    """(the table's key -> mean measured accuracy over the jobs of that key, the jobs' results) of a sweep."""
    keys = APPENDIX_D[table]["keys"]
    rows, by_key = collect_results(sweep_dir), {}
    for row in rows:
        got, cfg = fewshot_metric(row, shots), read_config(row["job_dir"]) or {}
        if got is None:
            continue
        row["fewshot_metric"] = got[0]
        by_key.setdefault(tuple(_select(cfg, k) for k in keys), []).append(float(got[1]))
    return {k: statistics.fmean(v) for k, v in by_key.items()}, rows


def ablation_table(sweep_dir: str | Path, table: str, shots: int = 5) -> str:
    """The paper's table (:func:`vitlab.paper.table_d_markdown`) with the sweep's measured numbers, and a line on
    what was run (model, data, images, few-shot data) from the jobs' results."""
    runs, rows = measured_runs(sweep_dir, table, shots)
    done = [r for r in rows if "fewshot_metric" in r]
    if not done:
        return f"[vitlab] no job under {sweep_dir} logged a {shots}-shot result: no {table} table\n"
    first = done[0]
    metric = first["fewshot_metric"]
    seen = first.get(M.TRAIN_IMAGES_SEEN)
    what = (f"{first.get(M.MODEL_NAME)} pretrained on {first.get(M.DATA_TRAIN_SIZE)} {first.get(M.DATA_NAME)} images"
            + (f" ({seen:,.0f} seen)" if isinstance(seen, (int, float)) else "")
            + f", then {metric} ({len(done)} jobs, {len(runs)} rows)")
    shrunk = any(r.get(M.MODEL_NAME) not in APPENDIX_D[table]["models"] for r in done)
    label = f"vitlab{' (CPU shrink)' if shrunk else ''}: {metric}"
    paper_metric = APPENDIX_D[table]["metric"]
    note = f"vitlab's runs: {what}."
    if "5-shot" not in paper_metric:
        note += f" The paper's number is {paper_metric}: the 5-shot number stands in for it."
    if shrunk:
        note += (" A CPU-shrunk reproduction of the mechanism (the paper's sweep and measurement), not of the paper's "
                 "numbers: tiny models on embedded data land far from them, and differ by about noise.")
    return table_d_markdown(table, runs, measured=label) + "\n" + note + "\n"


class AblationSummary(Callback):
    """On multirun end: print the Appendix D ``table`` beside the sweep's numbers, and save it as ``ablation.md``."""

    def __init__(self, table: str, shots: int = 5) -> None:
        if table not in APPENDIX_D:
            raise ReportError(f"AblationSummary table={table!r} is not one of {list(APPENDIX_D)}")
        self.table, self.shots = table, int(shots)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        text = ablation_table(sweep_dir, self.table, self.shots)
        (sweep_dir / TABLE_FILE).write_text(text)
        print("\n" + text)
