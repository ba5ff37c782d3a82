"""What lightning-hydra-template (LHT) users expect of a Lightning + Hydra project (issue 14): the four defects
its test suite found in vitlab, and LHT's conventions (debug/extras/trainer/callbacks/local/aliases)."""

from __future__ import annotations

import json
import shutil
import sys
import typing
import warnings
from pathlib import Path

import pytest
from omegaconf import open_dict, read_write

from conftest import REPO
from vitlab import CONF_DIR
from vitlab.errors import ConfigError
from vitlab.runs.assemble import PRECISIONS, check_trainer_cfg
from vitlab.train import train

#: a training run of a few seconds: 100 digits, one epoch
TINY = ["data.train_size=100", "trainer.max_epochs=1", "extras.print_config=false"]


# ---- defect 1: no logger -----------------------------------------------------------------------------
def test_no_logger_trains_and_tests(compose_train):
    """LHT runs everything with `logger=[]`: Lightning refuses the LR monitor without a logger, so it is dropped."""
    res = train(compose_train("logger=[]", *TINY))
    assert 0.0 <= res["test/acc"] <= 1.0 and "val/acc" in res


def test_wandb_failing_alone_does_not_stop_training(compose_train, monkeypatch):
    """README: a W&B that cannot start is skipped and 'training goes on', also when it was the only logger."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(compose_train("logger=wandb", *TINY))
    assert "test/acc" in res
    assert any("logger 'wandb'" in str(w.message) for w in caught)


def test_lr_monitor_kept_when_a_logger_exists(compose_train):
    from vitlab.runs.assemble import build_callbacks

    cfg = compose_train()
    names = lambda cbs: {type(cb).__name__ for cb in cbs}  # noqa: E731
    assert "LearningRateMonitor" in names(build_callbacks(cfg.callbacks, cfg.trainer, has_logger=True))
    assert "LearningRateMonitor" not in names(build_callbacks(cfg.callbacks, cfg.trainer, has_logger=False))


# ---- defect 2: multirun + ddp_spawn, and the CSV header ----------------------------------------------
def _as_multirun(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_multirun_allows_ddp_spawn_but_not_ddp(compose_train):
    from vitlab.runs.assemble import check_launch

    check_launch(_as_multirun(compose_train("trainer=ddp_sim")))  # workers are spawned: sys.argv is not re-run
    with pytest.raises(ConfigError, match="re-launch the whole sweep"):
        check_launch(_as_multirun(compose_train("trainer=ddp_cpu")))


def test_csv_writer_keeps_columns_another_process_wrote(tmp_path):
    """ddp_spawn: fit and test log from different processes; a writer that never saw the fit columns must not
    rewrite the file with its own shorter header (Lightning's crashes: 'dict contains fields not in fieldnames')."""
    import csv

    from vitlab.utils.csvlog import CSVLogger

    stale = CSVLogger(tmp_path, name="csv", version="")
    stale.experiment  # created before the file exists, as in the parent process  # noqa: B018
    fit = CSVLogger(tmp_path, name="csv", version="")
    fit.log_metrics({"train/loss": 1.0, "val/acc": 0.5}, step=0)
    fit.save()
    stale.log_metrics({"test/acc": 0.7}, step=1)
    stale.save()
    stale.log_metrics({"test/acc5": 0.9}, step=1)
    stale.save()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert set(rows[0]) == {"step", "train/loss", "val/acc", "test/acc", "test/acc5"}
    assert [r["val/acc"] for r in rows] == ["0.5", "", ""] and [r["test/acc"] for r in rows] == ["", "0.7", ""]
    assert rows[2]["test/acc5"] == "0.9"


@pytest.mark.slow
def test_ddp_sim_multirun_runs_each_job_once_with_csv(cli, tmp_path):
    """LHT's `-m trainer=ddp_sim` sweep: 2 jobs, each fit + test in 2 spawned processes, CSV logs, one summary."""
    r = cli("vitlab.train", "-m", "trainer=ddp_sim", "logger=csv", "seed=1,2", *TINY, "data.eval_batch_size=64",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    rows = json.loads((sweep / "summary.json").read_text())
    assert sorted(r["seed"] for r in rows) == [1, 2] and all(r["test/acc"] is not None for r in rows)
    for job in ("0", "1"):
        header = (sweep / job / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"train/loss_epoch", "val/acc", "test/acc"} <= set(header)


# ---- defect 3: Lightning's precision aliases -----------------------------------------------------------
@pytest.mark.parametrize("value", ["16", "'16'", "bf16", "64", "32", "'32'", "16-mixed", "bf16-mixed", "32-true"])
def test_lightning_precision_aliases_pass_validation(compose_train, value):
    check_trainer_cfg(compose_train(f"trainer.precision={value}").trainer)


def test_precisions_are_exactly_lightnings():
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    lightning = {str(v) for arg in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(arg)}
    assert lightning == set(PRECISIONS)


# ---- defect 4: sweeping experiments that sweep themselves --------------------------------------------
def test_glob_over_self_sweeping_experiments_is_refused_before_any_job(main_cli, tmp_path, monkeypatch):
    from vitlab.train import main

    monkeypatch.chdir(tmp_path)  # the command line's default log dir: ./logs
    code, out, err = main_cli(main, "-m", "experiment=glob(*)", "logger=none")
    assert code != 0
    msg = out + err
    assert "sweep themselves" in msg and "Traceback" not in msg
    assert "python -m vitlab.train experiment=mpp_demo logger=none" in msg
    assert "experiment=quickstart" in msg and "+experiment/quickstart=vit,bit" in msg
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))


def test_only_swept_experiments_with_their_own_sweep_are_flagged():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vitlab.utils.hydra_callbacks import self_sweeping_experiments

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert self_sweeping_experiments(["experiment=quickstart"]) == {}  # not swept: its own sweep applies
        assert self_sweeping_experiments(["seed=1,2"]) == {}
        found = self_sweeping_experiments(["experiment=quickstart,mpp_demo"])
    GlobalHydra.instance().clear()
    assert set(found) == {"quickstart", "mpp_demo"} and "+experiment/quickstart" in found["quickstart"]


# ---- conventions: debug ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["default", "fdr", "limit", "overfit", "profiler"])
def test_debug_configs_compose_as_lht(compose_train, mode):
    cfg = compose_train(f"debug={mode}", "trainer=ddp_cpu", "data=folder", "data.root=/x", "data.num_classes=3",
                        fast=False)
    assert cfg.task_name == "debug"  # logs kept apart: logs/debug/...
    assert cfg.trainer.detect_anomaly is True
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 1, "auto")
    assert cfg.data.num_workers == 0 and cfg.data.pin_memory is False
    assert cfg.callbacks is None and cfg.logger is None
    assert cfg.hydra.job_logging.root.level == "DEBUG"
    expected = {"fdr": ("fast_dev_run", True), "limit": ("limit_train_batches", 5),
                "overfit": ("overfit_batches", 3), "profiler": ("profiler", "simple"), "default": ("max_epochs", 1)}
    key, val = expected[mode]
    assert cfg.trainer[key] == val


def test_debug_fdr_runs(compose_train, tmp_path):
    res = train(compose_train("debug=fdr", *TINY))
    assert "test/acc" in res
    assert (tmp_path / "run" / "metrics.json").is_file()


# ---- conventions: extras -----------------------------------------------------------------------------
def test_print_config_prints_and_saves_the_tree(compose_train, tmp_path, capsys):
    from vitlab.utils.extras import apply_extras

    cfg = compose_train("extras.print_config=true", "optim.lr=0.00123")
    apply_extras(cfg)
    out = capsys.readouterr().out
    assert "CONFIG" in out and "vit_micro" in out and "0.00123" in out
    saved = (tmp_path / "run" / "config_tree.log").read_text()
    assert "optim" in saved and "0.00123" in saved


def test_enforce_tags_refuses_empty_tags(compose_train):
    from vitlab.utils.extras import apply_extras

    with pytest.raises(ConfigError, match=r"tags is empty.*tags=\["):
        apply_extras(compose_train("extras.enforce_tags=true", "extras.print_config=false"))
    apply_extras(compose_train("extras.enforce_tags=true", "extras.print_config=false", "tags=[a]"))


def test_ignore_warnings(compose_train):
    from vitlab.utils.extras import apply_extras

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_extras(compose_train("extras.ignore_warnings=true", "extras.print_config=false"))
        warnings.warn("noise", UserWarning, stacklevel=1)
    assert not caught


# ---- conventions: trainer / callbacks / aliases --------------------------------------------------------
def test_lht_trainer_names(compose_train):
    sim = compose_train("trainer=ddp_sim").trainer
    assert (sim.accelerator, sim.strategy, sim.devices) == ("cpu", "ddp_spawn", 2)
    assert compose_train("trainer=default").trainer == compose_train("trainer=cpu").trainer
    mps = compose_train("trainer=mps").trainer
    assert (mps.accelerator, mps.devices, mps.precision) == ("mps", 1, "32-true")


def test_callbacks_none_and_opt_in_early_stopping(compose_train):
    from vitlab.runs.assemble import build_callbacks

    assert build_callbacks(compose_train("callbacks=none").callbacks, None) == []
    cfg = compose_train("callbacks=early_stopping")
    es = [cb for cb in build_callbacks(cfg.callbacks, cfg.trainer) if type(cb).__name__ == "EarlyStopping"]
    assert len(es) == 1 and es[0].monitor == "val/acc" and es[0].mode == "max"
    assert "model_checkpoint" in cfg.callbacks  # the defaults stay
    assert "early_stopping" not in compose_train().callbacks  # opt-in


def test_lht_aliases(compose_train):
    a, b = compose_train("hparams_search=optuna"), compose_train("sweep=optuna")
    assert a.hydra.sweeper == b.hydra.sweeper and a.hydra.sweeper.params and a.task_name == b.task_name == "optuna"
    assert set(compose_train("logger=many_loggers").logger) == set(compose_train("logger=many").logger)


# ---- conventions: train=false / test=false / ckpt_path --------------------------------------------------
def test_evaluate_a_checkpoint_without_training(compose_train, tmp_path):
    first = train(compose_train(*TINY, "test=false", out=tmp_path / "fit"))
    assert "test/acc" not in first and "val/acc" in first
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    res = train(compose_train(*TINY, "train=false", f"ckpt_path={ckpt}", out=tmp_path / "eval"))
    assert "test/acc" in res and "val/acc" not in res and res["test/ckpt"] == str(ckpt)
    assert not (tmp_path / "eval" / "checkpoints").exists()  # nothing was trained
    with pytest.raises(ConfigError, match="train=false tests a trained model: pass ckpt_path"):
        train(compose_train(*TINY, "train=false", out=tmp_path / "bad"))


# ---- conventions: local/ ------------------------------------------------------------------------------
def test_local_group_is_optional_and_gitignored(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    shutil.rmtree(conf / "local")  # no local/ at all (a fresh clone has only the example): composes
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("train").paths.data_dir != "/my/datasets"
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  data_dir: /my/datasets\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("train").paths.data_dir == "/my/datasets"
    GlobalHydra.instance().clear()
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=REPO)
    example = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml.example"], cwd=REPO)
    assert ignored.returncode == 0 and example.returncode == 1
    assert Path(REPO, "conf/local/default.yaml.example").is_file()
