"""Sweeps: every study and launcher composes; a real 2-job multirun gives each job its own dir, W&B run and
checkpoint; multirun + DDP on a local launcher stops at once; a 2-trial Optuna sweep returns its metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import run_cli
from reliability_utils import Forked, env
from vitlab import CONF_DIR
from vitlab.config import register_resolvers
from vitlab.train import main as train_main

SWEEPS = sorted(p.stem for p in (Path(CONF_DIR) / "sweep").glob("*.yaml"))
TINY = [
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.batch_size=16",
]


def _compose(*overrides: str):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("train", list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _has_optuna() -> bool:
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        return False
    return True


def test_sweep_configs_listed():
    assert {"data_scaling", "model_scaling", "lr_grid", "optuna"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_composes(name):
    if name == "optuna" and not _has_optuna():
        pytest.skip("hydra-optuna-sweeper not installed (pip install -e '.[sweep]')")
    cfg = _compose(f"sweep={name}")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.group == name and cfg.task_name == name  # W&B group = study; dirs under logs/<study>/
    assert cfg.job_type in ("train", "finetune", "eval")
    assert "sweep" in cfg.tags and name in cfg.tags
    first = (Path(CONF_DIR) / "sweep" / f"{name}.yaml").read_text().splitlines()[1]
    assert first.startswith("# ") and len(first) > 20  # the first comment says what it is


def test_data_scaling_is_vit_vs_bit_at_four_sizes():
    cfg = _compose("sweep=data_scaling")
    params = cfg.hydra.sweeper.params
    assert params.model.split(",") == ["vit_micro", "bit_micro"]
    assert len(params["data.train_size"].split(",")) == 4
    assert cfg.data.name == "shapes" and cfg.trainer.max_steps > 0


def test_lr_grid_is_the_papers_grid():
    cfg = _compose("sweep=lr_grid")
    assert [float(x) for x in cfg.hydra.sweeper.params["optim.lr"].split(",")] == [0.001, 0.003, 0.01, 0.03]
    assert cfg.optim.name.startswith("sgd") and cfg.job_type == "finetune"


def test_model_scaling_has_vit_bit_and_hybrid():
    models = _compose("sweep=model_scaling").hydra.sweeper.params.model.split(",")
    assert any(m.startswith("vit_") for m in models) and any(m.startswith("bit_") for m in models)
    assert "r50_vit_b16" in models


def test_launchers_compose():
    assert "JoblibLauncher" in _compose("hydra/launcher=parallel").hydra.launcher._target_
    assert "BasicLauncher" in _compose("hydra/launcher=sequential").hydra.launcher._target_
    slurm = _compose("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2").hydra.launcher
    assert "SlurmLauncher" in slurm._target_
    # one SLURM task per device, so Lightning's DDP uses SLURM's processes
    assert (slurm.tasks_per_node, slurm.gpus_per_node, slurm.nodes) == (4, 4, 2)
    assert slurm.max_num_timeout > 0  # requeue on timeout/preemption


@pytest.mark.parametrize("launcher", ["sequential", pytest.param("parallel", marks=pytest.mark.slow)])
def test_multirun_with_ddp_on_a_local_launcher_is_refused(tmp_path, launcher, main_cli):
    code, out, err = main_cli(train_main, "-m", f"hydra/launcher={launcher}", "trainer=ddp", "trainer.accelerator=cpu",
                              "trainer.devices=2", "model=vit_micro,bit_micro", "logger=none",
                              f"hydra.sweep.dir={tmp_path}/sw")
    out = out + err
    assert code != 0, out[-3000:]
    assert "SLURM launcher" in out and "one device per job" in out, out[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped before any training


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real 2-job multirun through the command line (a forked process), logging to CSV and to W&B (offline)."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "multirun"
    r = Forked(train_main, ["-m", "model=vit_micro,bit_micro", *TINY, "logger=default", "group=tiny_study",
                      f"hydra.sweep.dir={sweep}"], tmp, env(), merge=False).result(timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return sweep


@pytest.mark.slow_process
def test_each_job_has_its_own_dir_run_and_checkpoint(sweep_dir):
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    run_ids = set()
    for job in jobs:
        res = json.loads((job / "metrics.json").read_text())
        assert res["output_dir"] == str(job)
        assert Path(res["test/ckpt"]).parent == job / "checkpoints"  # tested its own best checkpoint
        last = job / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert ckpt["vitlab_config"]["paths"]["output_dir"] == str(job)
        runs = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1
        run_ids.add(runs[0].stem)
        assert res["model/gflops"] > 0 and res["train/exaflops"] > 0
    assert len(run_ids) == 2
    assert {json.loads((j / "metrics.json").read_text())["model/name"] for j in jobs} == {"vit_micro", "bit_micro"}
    assert "vit_micro" in (sweep_dir / "summary.md").read_text()


def test_wandb_runs_grouped_with_scaling_keys(sweep_dir):
    from vitlab.wandb_io.offline import read_offline_run

    run = read_offline_run(next((sweep_dir / "0" / "wandb").glob("offline-run-*")))
    assert run.group == "tiny_study" and run.job_type == "train"
    for key in ("model/family", "model/variant", "model/patch_size", "model/params", "model/gflops",
                "data/train_size", "model/img_size"):
        assert key in run.config, key
    assert run.exit_code == 0


@pytest.mark.skipif(not _has_optuna(), reason="hydra-optuna-sweeper not installed (pip install -e '.[sweep]')")
@pytest.mark.slow  # end to end through the CLI; kept out of the default suite's 20-minute budget (make test-slow)
def test_optuna_two_trials_return_the_metric(tmp_path):
    sweep = tmp_path / "optuna"
    tiny = [o for o in TINY if not o.startswith("data.batch_size")]  # a CLI value would pin a searched param
    r = run_cli("vitlab.train", "sweep=optuna", "hydra.sweeper.n_trials=2", *tiny, "logger=none",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accs = [json.loads((sweep / str(i) / "metrics.json").read_text())["val/acc_best"] for i in (0, 1)]
    assert best["best_value"] == pytest.approx(max(accs))
    assert set(best["best_params"]) == {"optim.lr", "optim.weight_decay", "data.batch_size"}


def test_report_from_the_real_sweep(sweep_dir, tmp_path, main_cli):
    """`python -m vitlab.report sweep_dir=...` (its main, in-process) on the sweep above: one table (CSV +
    Markdown), PNGs, HTML."""
    from vitlab.report.task import main

    out = tmp_path / "report"
    code, stdout, stderr = main_cli(main, f"sweep_dir={sweep_dir}", f"out_dir={out}",
                                    f"hydra.run.dir={tmp_path / 'report_run'}")
    assert code == 0, (stdout + stderr)[-4000:]
    import csv

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert sorted(r["model/name"] for r in rows) == ["bit_micro", "vit_micro"]
    assert all(float(r["train/exaflops"]) > 0 and r["source"] == "metrics.json" for r in rows)
    md = (out / "report.md").read_text()
    assert "| vit_micro | vit |" in md and "| bit_micro | bit |" in md
    for png in ("data_scaling.png", "compute.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="results"' in (out / "report.html").read_text()
