"""Values a user types by mistake are refused with one ``Error:`` line that names the key and the fix, in-process
through the command line's own formatting (:func:`vitlab.tasks.run_task`), before anything slow starts
(issue #20 item 8, issue #24 item 5). Each used to end in a traceback, a misleading message, or a W&B run
created for nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg, refusal
from dataset_writers import write_class_folders
from vitlab.data.folder import FolderDataModule
from vitlab.evaluate import evaluate
from vitlab.runs.assemble import build_loggers
from vitlab.runs.probe import probe
from vitlab.train import train

TINY = ["data.img_size=16", "data.batch_size=32", "data.train_size=64"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["data.global_batch_size=1e21"], "Error: data.global_batch_size=1e+21 is larger than vitlab accepts (1048576"),
    (["data.img_size=100000"], "Error: data.img_size=100000 is larger than vitlab accepts (4096 px)"),
    (["trainer.max_epochs=1.5"], "Error: trainer.max_epochs=1.5 must be a whole number, e.g. trainer.max_epochs=2"),
    (["data.num_classes=1e11"], "is larger than vitlab accepts (1000000 classes): use at most data.num_classes="),
    (["data.img_size=0.5"], "Error: data.img_size=0.5 must be a whole number"),
    (["data.img_size=nan"], "Error: data.img_size=nan must be a whole number"),
    (["data.batch_size=0"], "Error: data.batch_size=0 must be > 0"),
    (["data.num_workers=-1"], "Error: data.num_workers=-1 must be >= 0 or 'auto'"),
    (["data=folder"], "Error: data.root is not set (data=folder needs it): pass data.root=<value>"),
    (["data=packed"], "Error: data.root is not set (data=packed needs it): pass data.root=<value>"),
    (["data=folder", "data.root=/nonexistent/vitlab"], "Error: data.root=/nonexistent/vitlab does not exist"),
])
def test_a_wrong_value_is_one_error_line_naming_the_key(refuse, tmp_path, overrides, expected):
    assert expected in refuse(*overrides)
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without the GPU asked for")
def test_a_device_the_machine_lacks_is_one_error_line(refuse):
    msg = refuse("trainer.accelerator=gpu", "trainer.devices=[7]")
    assert "Error: trainer.accelerator='gpu' trainer.devices=[7] does not fit this machine" in msg
    assert "use trainer=cpu" in msg


def test_a_warmup_longer_than_the_run_is_refused_before_wandb_starts(refuse, tmp_path):
    """README's `model=bit_r50x1 data=shapes data.train_size=50000 optim=adam_pretrain`, at CPU size: the paper's
    10k warmup steps (App. B.1) do not fit the run; refused naming the keys, and no W&B run is made for it."""
    msg = refuse("model=bit_micro", "data=shapes", "data.train_size=500", "optim=adam_pretrain", "logger=default")
    assert "Error: optim.warmup=10000 steps is longer than the whole run (8 optimiser steps" in msg
    assert "trainer.max_epochs" in msg and "lower optim.warmup" in msg
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("*.wandb"))


def test_test_only_with_another_networks_checkpoint_names_the_model(refuse, tiny_ckpt):
    """`train=false ckpt_path=<checkpoint>` with the wrong model= used to print a 9 KB state_dict traceback."""
    msg = refuse("train=false", f"ckpt_path={tiny_ckpt}", "model=bit_micro")
    assert f"Error: ckpt_path={tiny_ckpt} holds another network than model=bit_micro builds: model.family='vit'" in msg
    assert "Pass model=vit_micro" in msg and "python -m vitlab.evaluate" in msg


@pytest.mark.parametrize(("name", "task", "overrides"), [
    ("evaluate", evaluate, ["seed=-1"]),
    ("fewshot", probe, ["data=digits", "data.img_size=16", "seed=abc"]),
])
def test_seed_of_evaluate_and_fewshot_is_checked_like_trains(tiny_ckpt, tmp_path, name, task, overrides):
    try:
        cfg = compose_cfg(name, [f"ckpt_path={tiny_ckpt}", *overrides], tmp_path / "out")
        msg = refusal(task, cfg)
    finally:
        GlobalHydra.instance().clear()
    assert "must be an int from 0 to 4294967295 (numpy's seed range)" in msg and msg.startswith("Error: seed=")


def test_debug_limit_runs_on_the_default_data(compose_train):
    """`debug=limit` (LHT's table) limited by fractions: 1% of digits' batches is no batch, and Lightning stopped."""
    res = train(compose_train("debug=limit", *TINY, "trainer.max_epochs=1"))
    assert "test/acc" in res


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_logger_many_without_tensorboard_names_the_extra(compose_train):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = build_loggers(compose_train("logger=many").logger, start=False)
    assert "TensorBoardLogger" not in {type(lg).__name__ for lg in loggers}
    (line,) = [str(w.message) for w in caught if "logger 'tensorboard'" in str(w.message)]
    assert "pip install -e '.[tensorboard]'" in line and "training goes on without it" in line


def test_folder_without_a_test_split_says_test_is_the_val_split(tmp_path, caplog):
    root = tmp_path / "tree"
    write_class_folders(root, ["a", "b"], per_class=6, ext=".png")
    dm = FolderDataModule(root=str(root), img_size=16, batch_size=4, num_classes=2)
    with caplog.at_level(logging.WARNING, logger="vitlab.data"):
        dm.setup()
    (line,) = [r.getMessage() for r in caplog.records if "no test/ folder" in r.getMessage()]
    assert "test/acc is measured on the val split" in line and str(root) in line
