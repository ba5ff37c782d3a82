"""VTAB-1k suite: the task table, the group/mean arithmetic, and the suite end to end on VTAB-1k fixtures."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitlab.data.catalog import VTAB_GROUPS, VTAB_TASKS
from vitlab.protocols.vtab import format_vtab_table, vtab_table


def test_task_table_has_19_tasks_in_3_groups():
    assert len(VTAB_TASKS) == 19
    assert {g: len(t) for g, t in VTAB_GROUPS.items()} == {"natural": 7, "specialized": 4, "structured": 8}
    assert VTAB_TASKS["sun397"] == ("natural", 397) and VTAB_TASKS["patch_camelyon"] == ("specialized", 2)


def test_group_means_and_overall_mean():
    acc = {t: 0.5 for t in VTAB_GROUPS["natural"]} | {t: 0.8 for t in VTAB_GROUPS["specialized"]}
    acc |= {t: 0.2 for t in VTAB_GROUPS["structured"]}
    s = vtab_table(acc)
    assert s["groups"]["natural"]["mean"] == pytest.approx(0.5) and s["groups"]["structured"]["mean"] == pytest.approx(0.2)
    assert s["mean"] == pytest.approx((7 * 0.5 + 4 * 0.8 + 8 * 0.2) / 19) and s["complete"]
    part = vtab_table({"dtd": 0.4, "eurosat": 0.9})
    assert not part["complete"] and part["groups"]["natural"]["n"] == 1 and part["groups"]["structured"]["mean"] is None
    table = format_vtab_table(part)
    assert "| Natural | dtd | 47 | 40.00 |" in table and "| **all** | **65.00** | 2/19 |" in table
    with pytest.raises(ValueError, match="not VTAB-1k tasks"):
        vtab_table({"imagenet": 0.9})


def write_vitlab_checkpoint(path):
    """A real Lightning checkpoint of a vit_micro ClassificationModule (one optimiser step on noise)."""
    from vitlab.modules import ClassificationModule

    model = {"family": "vit", "variant": "micro", "patch_size": 8, "img_size": 32, "num_classes": 10, "name": "vit_micro"}
    optim = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "warmup": 0, "decay": "constant"}
    module = ClassificationModule(model=model, optim=optim)
    dl = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4)), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=dl)
    trainer.save_checkpoint(path)
    return path


def _run_suite(tmp_path, main_cli, tasks, lr_grid):
    """``python -m vitlab.vtab ...`` in ``tmp_path``, through vitlab.vtab's main in-process (``main_cli``)."""
    from dataset_writers import write_vtab_task
    from vitlab.vtab import main

    root = tmp_path / "vtab-1k"
    for task in tasks:
        write_vtab_task(root, task, VTAB_TASKS[task][1], n_train=8, n_val=4, n_test=6)
    ckpt = write_vitlab_checkpoint(tmp_path / "pre.ckpt")
    code, out, err = main_cli(
        main, f"ckpt_path={ckpt}", f"data.root={root}", f"data.task={','.join(tasks)}",
        "vtab.steps=2", f"vtab.lr_grid=[{','.join(map(str, lr_grid))}]", "data.batch_size=4", "data.num_workers=0",
        "vtab.resolution=null", "data.global_batch_size=null", "optim.warmup=0",  # CPU-sized, not the paper's
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
        "~callbacks.model_summary", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, out[-3000:] + err[-3000:]
    summary = json.loads((tmp_path / "sweep" / "vtab_summary.json").read_text())
    assert set(summary["tasks"]) == set(tasks) and all(0.0 <= v <= 1.0 for v in summary["tasks"].values())
    assert "| **all** |" in out and f"{len(tasks)}/19" in out
    return out, ckpt


def test_vtab_suite_end_to_end_on_fixtures(tmp_path, main_cli):
    out, ckpt = _run_suite(tmp_path, main_cli, ("dtd", "clevr_count"), [0.01])
    assert "| Natural | dtd | 47 |" in out and "| Structured | 100.00" not in out
    job = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert job["vtab/task"] == "dtd" and job["vtab/group"] == "natural" and job["vtab/lr"] == 0.01
    assert job["pretrained"] == str(ckpt) and job["data/train_size"] == 12  # train800val200 = 8 + 4 here
    assert (tmp_path / "sweep" / "vtab_summary.md").read_text().count("| Structured |") == 9  # 8 tasks + group row


@pytest.mark.slow
def test_vtab_lr_selection_on_val200(tmp_path, main_cli):
    _run_suite(tmp_path, main_cli, ("dtd", "eurosat", "clevr_count"), [0.01, 0.1])
    for j, task in enumerate(("dtd", "eurosat", "clevr_count")):
        job = json.loads((tmp_path / "sweep" / str(j) / "metrics.json").read_text())
        assert job["vtab/task"] == task and set(job["vtab/val_by_lr"]) == {"0.01", "0.1"}
        assert job["vtab/lr"] == max((0.01, 0.1), key=lambda v: job["vtab/val_by_lr"][str(v)])
        assert (tmp_path / "sweep" / str(j) / "dev" / "lr0.1" / "metrics.json").is_file()
        assert job["data/train_size"] == 12
