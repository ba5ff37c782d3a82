"""Appendix D ablations: the table printed at the end of a sweep holds the paper's numbers (vitlab.paper) and the
numbers the sweep's jobs wrote (metrics.json), each on its own row."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vitlab import metrics as M
from vitlab import paper
from vitlab.results import write_results
from vitlab.runs.assemble import save_resolved_config
from vitlab.utils.plain import job_config


def _job(compose_train, sweep, num: int, overrides: list[str], acc: float):
    """One finished job of the sweep as vitlab.train leaves it: its resolved config.yaml and its metrics.json."""
    out = sweep / str(num)
    cfg = compose_train(*overrides, out=out)
    save_resolved_config(job_config(cfg), out)
    write_results(out, {M.MODEL_NAME: cfg.model.name, M.DATA_NAME: "shapes", M.DATA_TRAIN_SIZE: 2000,
                        M.TRAIN_IMAGES_SEEN: 6000.0, M.fewshot_key("digits", 5): acc, M.fewshot_key("digits", 1): 0.11})
    return cfg


@pytest.mark.parametrize("experiment, jobs, table", [
    ("ablate_pos_embed", [(["paper.cell=none-stem"], 0.3125), (["paper.cell=2d-every_layer"], 0.4375)], "table8"),
    ("ablate_resnet_optimizer", [(["model=bit_micro", "paper.row=bit_r50x1", "optim.name=sgd"], 0.3125),
                                 (["model=bit_micro", "paper.row=bit_r50x1"], 0.4375)], "table7"),
])
def test_a_shrunk_ablation_prints_the_papers_table_beside_its_runs(compose_train, tmp_path, capsys, experiment,
                                                                    jobs, table):
    sweep = tmp_path / "multirun"
    base = [f"experiment=paper/{experiment}", "+experiment/paper/shrink=cpu_ablation"]
    for num, (overrides, acc) in enumerate(jobs):
        cfg = _job(compose_train, sweep, num, [*base, *overrides], acc)
    summary = instantiate(cfg.hydra.callbacks.ablation)  # the experiment's own callback, as Hydra calls it
    summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    printed = capsys.readouterr().out
    assert (sweep / "ablation.md").read_text().strip() == printed.strip()
    lines = {line.split(" | ")[0].lstrip("| "): line for line in printed.splitlines() if line.startswith("| ")}
    rows = paper.TABLE7 if table == "table7" else paper.TABLE8
    field = "average" if table == "table7" else "fewshot_5"
    measured = {("none", "stem"): 0.3125, ("2d", "every_layer"): 0.4375} if table == "table8" else \
        {("bit_r50x1", "sgd"): 0.3125, ("bit_r50x1", "adam_decoupled"): 0.4375}
    for key, row in rows.items():  # every row of the paper's table, with its number from vitlab.paper
        line = lines[" / ".join(key)]
        assert f"{row[field]:.5f}" in line if table == "table8" else f"{row[field]:.2f}" in line
        assert (f"| {measured[key]:.4f} |" in line) if key in measured else "| – |" in line
    assert "fewshot/digits_5shot" in printed and "CPU-shrunk reproduction of the mechanism" in printed


def test_figure9_runs_and_vitlabs_extra_run_are_named():
    text = paper.table_d_markdown("figure9", {("token", 8e-4): 0.5, ("token", 3e-4): 0.25})
    assert "| token / 0.0008 | the reference curve | 0.5000 |" in text
    assert "| token / 0.0003 | – | 0.2500 | not in the paper (vitlab's extra run) |" in text
    assert all(f"| {c} / {lr:g} |" in text for c, lr in paper.FIGURE9["runs"])
