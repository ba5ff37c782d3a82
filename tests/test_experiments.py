"""Experiments say each thing once (issue 12): one paper fine-tune (and pretrain) body that each dataset's recipe
extends, every old `experiment=<name>` spelling kept, demo jobs and knobs under conf/experiment/<name>/, and no
dated measurement in a config comment (those live in docs/, beside the command that re-measures them)."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vitlab import CONF_DIR

CONF = Path(CONF_DIR)
FINETUNE = ["cifar10", "cifar100", "flowers102", "imagenet", "pets"]


def _resolved(cfg) -> dict:
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("paths", None)  # per-job output dirs (uid, date)
    return out


@pytest.mark.parametrize("data", FINETUNE)
def test_every_finetune_spelling_is_the_one_recipe(compose_train, data):
    """experiment=paper/finetune_<d> and the body itself with data=<d> compose to the same run and the same
    Table 4 lr sweep."""
    runs = [compose_train(f"experiment={e}", "model.pretrained=x.npz", *extra, fast=False)
            for e, *extra in ([f"paper/finetune_{data}"], ["paper/finetune", f"data={data}"])]
    bodies = [{k: v for k, v in _resolved(c).items() if k != "hydra"} for c in runs]
    assert bodies[0] == bodies[1]
    grids = {c.hydra.sweeper.params["optim.lr"] for c in runs}
    assert len(grids) == 1 and runs[0].paper.data == data and runs[0].task_name == f"paper_finetune_{data}"


@pytest.mark.parametrize("recipe", [f"finetune_{d}" for d in FINETUNE] + ["pretrain_imagenet", "pretrain_imagenet21k",
                                                                           "pretrain_jft300m"])
def test_per_dataset_recipes_hold_only_their_differences(recipe):
    """The body is written once: a per-dataset recipe only picks its data (and jft300m says where JFT lives); a
    pretraining recipe also names its Table 3 rows (paper.data), which a run shrunk to other data keeps."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / "paper" / f"{recipe}.yaml"), resolve=False)
    body = "finetune" if recipe.startswith("finetune") else "pretrain"
    assert raw["defaults"][0] == f"/experiment/paper/{body}@_here_"
    assert set(raw) - {"defaults"} <= {"data", "module", *(["paper"] if body == "pretrain" else [])}, sorted(raw)
    if body == "pretrain":
        assert raw["paper"] == {"data": recipe.removeprefix("pretrain_")}


def test_a_pretraining_recipe_shrunk_to_other_data_keeps_its_table3_rows(compose_train):
    """The I21k recipe's numbers on vit_micro / shapes (paper.row picks the model), as +experiment/paper/shrink=cpu does."""
    cfg = compose_train("experiment=paper/pretrain_imagenet21k", "model=vit_micro", "paper.row=vit_b16", "data=shapes",
                        "data.img_size=32", "data.global_batch_size=64", "optim.warmup=20")
    assert cfg.paper.data == "imagenet21k" and cfg.data.name == "shapes"
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.module.head_bias_init) == (1e-3, 0.03, -10.0)


def test_no_private_top_level_config_groups():
    """A top-level folder of conf/ is a group some task selects in its defaults list; the pieces of one experiment
    (demo jobs, recipe bodies) live under conf/experiment/<name>/."""
    selected = set()
    for primary in CONF.glob("*.yaml"):
        for entry in OmegaConf.to_container(OmegaConf.load(primary)).get("defaults", []):
            key = next(iter(entry)) if isinstance(entry, dict) else str(entry)
            selected.add(key.removeprefix("optional ").removeprefix("override ").split("@")[0].split("/")[0])
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert groups - selected == set()
    assert not (CONF / "quickstart").exists() and not (CONF / "transfer_demo").exists() and not (CONF / "paper").exists()


def test_demo_knobs_are_written_once(compose_train):
    owners = [p for p in CONF.rglob("*.yaml") if re.search(r"^demo:", p.read_text(), re.M)]
    assert [p.relative_to(CONF).as_posix() for p in owners] == ["experiment/transfer_demo.yaml"]
    transfer, mpp = compose_train("experiment=transfer_demo"), compose_train("experiment=mpp_demo")
    assert transfer.demo == mpp.demo
    assert mpp.hydra.sweeper.params["+experiment/transfer_demo"] == "mpp_pretrain,finetune,scratch"
    assert (mpp.task_name, transfer.task_name) == ("mpp_demo", "transfer_demo")


@pytest.mark.parametrize("job, model", [("vit", "vit_micro"), ("bit", "bit_micro")])
def test_quickstart_jobs_live_under_the_experiment(compose_train, job, model):
    qs = compose_train("experiment=quickstart", fast=False)
    assert qs.hydra.sweeper.params["+experiment/quickstart"] == "vit,bit"
    cfg = compose_train("experiment=quickstart", f"+experiment/quickstart={job}", fast=False)
    assert (cfg.model.name, cfg.data.name, cfg.optim.name, cfg.trainer.max_epochs) == (model, "digits", "adamw", 30)


def test_no_dated_measurement_in_a_config_comment():
    dated = [f"{p.relative_to(CONF)}:{i}" for p in sorted(CONF.rglob("*.yaml"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "#" in line and re.search(r"\b20\d\d-\d\d(-\d\d)?\b", line.split("#", 1)[1])]
    assert not dated, f"measurements with a date belong in docs/ (scaling.md, performance.md, protocols.md): {dated}"


def test_ablate_pos_embed_sweeps_all_of_table8(compose_train):
    from vitlab import paper

    cfg = compose_train("experiment=paper/ablate_pos_embed", "+experiment/paper/shrink=cpu_ablation")
    cells = cfg.hydra.sweeper.params["paper.cell"].split(",")
    jobs = [compose_train("experiment=paper/ablate_pos_embed", f"paper.cell={c}").model for c in cells]
    assert [(m.pos_embed, m.pos_embed_at) for m in jobs] == list(paper.TABLE8)  # one job per cell, each its own


def test_appendix_d_experiments_compose_to_the_papers_runs(compose_train):
    from vitlab import paper

    t7 = compose_train("experiment=paper/ablate_resnet_optimizer", "data=shapes", fast=False)
    assert {(m, o) for m in t7.hydra.sweeper.params["model"].split(",")
            for o in t7.hydra.sweeper.params["optim.name"].split(",")} == set(paper.TABLE7)
    assert "fewshot" in t7.callbacks  # each job logs the 5-shot number printed beside Table 7
    assert t7.optim.lr == paper.TABLE3[("bit_r50x1", "jft300m")]["lr"] and t7.trainer.max_epochs == 7
    f9 = compose_train("experiment=paper/ablate_classifier", "data=shapes")
    assert f9.model.name == "vit_b16" and "fewshot" in f9.callbacks
    assert paper.FIGURE9["lrs"] == sorted({lr for _, lr in paper.FIGURE9["runs"]}, reverse=True)
    for name in ("ablate_resnet_optimizer", "ablate_classifier", "ablate_pos_embed"):
        text = (Path(CONF_DIR) / "experiment" / "paper" / f"{name}.yaml").read_text()
        assert "hydra:\n  mode: MULTIRUN" in text and ("Table" in text.splitlines()[1] or "Figure" in text)
    f9text = (Path(CONF_DIR) / "experiment" / "paper" / "ablate_classifier.yaml").read_text()
    assert "optim.lr: ${vitlab.paper_sweep:figure9,lrs}" in f9text
