"""The scaling dashboard as code (wandb-workspaces): one W&B workspace per sweep group, built offline.

Sections: Fig. 3/4 (accuracy vs pretraining data size, runs grouped by model family), Fig. 5 (accuracy vs
training compute in exaFLOPs), loss curves, and the run table with the scaling keys pinned. Every key is one
``vitlab.runs.assemble.run_stats`` / the W&B callbacks log, so the panels have data as soon as the runs are synced.

Building and serialising the spec needs no network (``dashboard_spec``); only ``push_dashboard`` talks to W&B:

    WANDB_API_KEY=... python -m vitlab.report sweep_dir=<multirun dir> wandb.dashboard=true wandb.push=true
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from vitlab import metrics as M

#: run-config keys (from vitlab.runs.assemble.run_stats) the run table pins and the panels group by
SCALING_KEYS = (M.MODEL_FAMILY, M.MODEL_NAME, M.MODEL_VARIANT, M.MODEL_PATCH_SIZE, M.MODEL_PARAMS_M,
                M.MODEL_GFLOPS, M.DATA_NAME, M.DATA_TRAIN_SIZE, M.DATA_IMG_SIZE)
#: summary metrics (best values: vitlab.wandb_io.logger.SUMMARIES)
ACCURACY, COMPUTE = M.VAL_ACC_BEST, M.TRAIN_EXAFLOPS
LOSSES = (M.TRAIN_LOSS, M.VAL_LOSS)


def build_workspace(entity: str, project: str, group: str):
    """The ``wandb_workspaces`` Workspace for the runs of W&B group ``group`` (validated by pydantic here)."""
    fig34 = [
        wr.ScatterPlot(title=f"Fig. 3/4: {ACCURACY} vs pretraining images (per family)",
                       x=wr.Config(M.DATA_TRAIN_SIZE), y=wr.SummaryMetric(ACCURACY), log_x=True),
        wr.ScatterPlot(title="Fig. 3/4: test/acc vs pretraining images (per family)",
                       x=wr.Config(M.DATA_TRAIN_SIZE), y=wr.SummaryMetric(M.TEST_ACC), log_x=True),
    ]
    fig5 = [
        wr.ScatterPlot(title=f"Fig. 5: {ACCURACY} vs training exaFLOPs", x=wr.SummaryMetric(COMPUTE),
                       y=wr.SummaryMetric(ACCURACY), log_x=True),
        wr.LinePlot(title=f"Fig. 5 (curves): {ACCURACY} vs exaFLOPs", x=COMPUTE, y=[M.VAL_ACC], log_x=True,
                    groupby=wr.Config(M.MODEL_NAME)),
    ]
    curves = [wr.LinePlot(title=f"{k} per model", x="Step", y=[k], groupby=wr.Config(M.MODEL_NAME),
                          groupby_aggfunc="mean", groupby_rangefunc="minmax") for k in LOSSES]
    table = [wr.RunComparer()]
    return ws.Workspace(
        entity=entity, project=project, name=f"vitlab scaling: {group}",
        sections=[ws.Section(name="Fig. 3/4: data scaling", panels=fig34, is_open=True),
                  ws.Section(name="Fig. 5: compute", panels=fig5, is_open=True),
                  ws.Section(name="Loss curves", panels=curves, is_open=True),
                  ws.Section(name="Runs", panels=table, is_open=False)],
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == group],
            groupby=[ws.Config(M.MODEL_FAMILY)],
            pinned_columns=[f"config:{k}" for k in SCALING_KEYS] + [f"summary:{ACCURACY}", "summary:test/acc",
                                                                    f"summary:{COMPUTE}"],
        ),
    )


def dashboard_spec(entity: str, project: str, group: str) -> dict[str, Any]:
    """The workspace as W&B's own view JSON (what ``Workspace.save`` uploads), built without a network."""
    return json.loads(build_workspace(entity, project, group)._to_model().model_dump_json())


def write_dashboard(out_dir: str | Path, entity: str, project: str, group: str) -> Path:
    out = Path(out_dir) / "wandb_dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dashboard_spec(entity, project, group), indent=2))
    return out


def push_dashboard(entity: str, project: str, group: str) -> str:
    """Create the workspace on the W&B server (needs WANDB_API_KEY); returns its URL."""
    workspace = build_workspace(entity, project, group)
    workspace.save()
    return workspace.url
