"""The W&B scaling dashboard as code (wandb-workspaces), built, validated and serialised with no network."""

from __future__ import annotations

import json
import socket

import pytest

from test_report import _fake_sweep


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the dashboard spec must be built without a network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _panels(spec):
    return {s["name"]: s["panels"] for s in spec["spec"]["section"]["panel_bank_config"]["sections"]}


def test_dashboard_spec_has_the_papers_panels_queries_and_grouping(no_network):
    from vitlab.wandb_io.dashboard import SCALING_KEYS, dashboard_spec

    spec = dashboard_spec("my-team", "vitlab", "data_scaling")
    assert (spec["entity"], spec["project"], spec["display_name"]) == ("my-team", "vitlab", "vitlab scaling: data_scaling")
    panels = _panels(spec)
    assert list(panels) == ["Fig. 3/4: data scaling", "Fig. 5: compute", "Loss curves", "Runs"]
    fig34 = panels["Fig. 3/4: data scaling"][0]["config"]
    assert (fig34["x_axis"], fig34["y_axis"], fig34["x_axis_log_scale"]) == (
        "config:data/train_size.value", "summary:val/acc_best", True)
    fig5 = panels["Fig. 5: compute"][0]["config"]
    assert (fig5["x_axis"], fig5["y_axis"]) == ("summary:train/exaflops", "summary:val/acc_best")
    loss_keys = [p["config"]["metrics"] for p in panels["Loss curves"]]
    assert loss_keys == [["train/loss"], ["val/loss"]]
    assert panels["Runs"][0]["view_type"] == "Run Comparer"
    text = json.dumps(spec)
    assert "data_scaling" in text and "model/family" in text  # the runset filter (group) and grouping key
    for k in SCALING_KEYS:
        assert k in text


def test_dashboard_keys_are_what_training_logs(compose_train):
    """Every config key the panels read is one vitlab.train.run_stats puts in the W&B config."""
    from hydra.utils import instantiate

    from vitlab.runs.assemble import build_module, run_stats
    from vitlab.utils.plain import job_config
    from vitlab.wandb_io.dashboard import SCALING_KEYS

    cfg = compose_train()
    config = job_config(cfg)
    stats = run_stats(build_module(cfg, config), instantiate(cfg.data, _convert_="all"), config["model"])
    assert set(SCALING_KEYS) <= set(stats)


@pytest.mark.slow  # the spec itself is tested in-process above (make test-slow)
def test_report_cli_writes_the_dashboard_spec(cli, tmp_path):
    sweep = _fake_sweep(tmp_path / "logs" / "data_scaling" / "multiruns" / "2026-01-01_00-00-00")
    r = cli("vitlab.report", f"sweep_dir={sweep}", f"out_dir={tmp_path / 'out'}", "wandb.dashboard=true",
            "wandb.entity=team", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    spec = json.loads((tmp_path / "out" / "wandb_dashboard.json").read_text())
    assert spec["entity"] == "team" and spec["display_name"] == "vitlab scaling: data_scaling"
    r = cli("vitlab.report", f"sweep_dir={sweep}", f"out_dir={tmp_path / 'o2'}", "wandb.dashboard=true",
            "wandb.push=true", timeout=300, env={"WANDB_API_KEY": ""})
    assert r.returncode != 0 and "needs WANDB_API_KEY" in r.stderr
