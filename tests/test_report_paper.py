"""vitlab.report puts the paper's number beside a run wherever the paper reports the same model, pretraining data
and fine-tuning dataset (issue 13, "your run beside the paper's"); the numbers come only from vitlab.paper."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest
import yaml

from vitlab import paper
from vitlab.metrics import PAPER_ACC, PAPER_EXAFLOPS, PAPER_SOURCE
from vitlab.metrics import TRAIN_EXAFLOPS as EXAFLOPS
from vitlab.report.figures import paper_points
from vitlab.report.paper_points import annotate, paper_match
from vitlab.report.task import make_report


def _row(model: str, data: str, pre: str | None, epochs: int | None = None, **extra) -> dict:
    return {"model/name": model, "data/name": data, "paper.pretrain_data": pre, "paper.pretrain_epochs": epochs,
            **extra}


@pytest.mark.parametrize(("row", "acc", "source"), [
    (_row("vit_b16", "cifar10", "imagenet21k"), 98.95, "Table 5, ViT-B/16, ImageNet-21k rows"),
    (_row("vit_b16", "imagenet", "imagenet"), 77.91, "Table 5, ViT-B/16, ImageNet rows"),
    (_row("bit_r50x1", "pets", "jft300m"), 91.11, "Table 6 row 7"),          # one JFT row: 7 epochs
    (_row("vit_l16", "cifar100", "jft300m"), 94.04, "Table 5, ViT-L/16, JFT-300M rows"),  # no epochs: Table 5
    (_row("vit_l16", "cifar100", "jft300m", 7), 93.46, "Table 6 row 4"),     # ... or the run's epochs
    (_row("vit_l16", "imagenet", "imagenet21k"), 85.15, "Table 5, ViT-L/16, ImageNet-21k rows"),  # 384 px: not 85.30
    (_row("vit_l16", "vtab", "imagenet21k"), 72.72, "Table 2, column ViT-L/16 (I21k)"),  # only Table 2 has it
])
def test_a_run_the_paper_reports_gets_its_number_and_source(row, acc, source):
    m = paper_match(row)
    assert m[PAPER_ACC] == pytest.approx(acc / 100) and m[PAPER_SOURCE] == source


@pytest.mark.parametrize("row", [
    _row("vit_micro", "cifar10", "imagenet21k"),  # a model the paper never trained
    _row("vit_b16", "cifar10", None),             # pretraining data unknown: never guessed
    _row("vit_b16", "shapes", "imagenet21k"),     # a dataset the paper never fine-tuned on
    _row("vit_h14", "cifar10", "imagenet"),       # Table 5's own empty cell: no number rather than a wrong one
])
def test_runs_the_paper_does_not_report_get_nothing(row):
    assert paper_match(row) is None


def test_only_table6_rows_carry_the_papers_compute():
    assert paper_match(_row("bit_r50x1", "pets", "jft300m"))[PAPER_EXAFLOPS] == paper.TABLE6[("bit_r50x1", 7)]["exaflops"]
    assert PAPER_EXAFLOPS not in paper_match(_row("vit_b16", "cifar10", "imagenet21k"))


def test_an_unknown_pretraining_set_is_named_not_matched(caplog):
    rows = [_row("vit_b16", "cifar10", "imagenet-21k", job_dir="logs/x/0")]
    assert annotate(rows) == 0 and PAPER_ACC not in rows[0]
    assert "paper.pretrain_data='imagenet-21k'" in caplog.text and "imagenet21k" in caplog.text


def _job(root: Path, i: int, model: str, family: str, data: str, acc: float, pre: str | None) -> None:
    """A job dir as vitlab.train writes it: metrics.json plus Hydra's .hydra/config.yaml."""
    job = root / str(i)
    (job / ".hydra").mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({
        "model/name": model, "model/family": family, "model/gflops": 35.0, "data/name": data,
        "data/train_size": 49_000, "val/acc_best": acc, "test/acc": acc, EXAFLOPS: 0.5}))
    cfg = {"model": {"name": model}, "data": {"name": data}, "optim": {"lr": 0.01}, "paper": {"pretrain_data": pre}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_report_adds_the_paper_column_and_grey_points(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "vit_b16", "vit", "cifar10", 0.981, "imagenet21k")   # Table 5: 98.95
    _job(sweep, 1, "bit_r50x1", "bit", "cifar10", 0.970, "jft300m")     # Table 6 row 7: 97.67, 50 exaFLOPs
    _job(sweep, 2, "vit_micro", "vit", "cifar10", 0.60, None)           # the paper has no such run
    res = make_report(sweep, tmp_path / "out")
    table = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    by_model = {r["model/name"]: r for r in table}
    assert float(by_model["vit_b16"][PAPER_ACC]) == pytest.approx(0.9895)
    assert by_model["bit_r50x1"][PAPER_SOURCE] == "Table 6 row 7" and by_model["vit_micro"][PAPER_ACC] == ""
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| paper |" in md.splitlines()[2] and "98.95%" in md and "97.67%" in md
    assert "2 with the paper's number beside them" in html.unescape((tmp_path / "out" / "report.html").read_text())
    # grey points: at the run's own x on the data-scaling figure, at the paper's compute on the compute figure
    assert paper_points(res["rows"], "data/train_size") == [(49_000.0, pytest.approx(97.67)),
                                                            (49_000.0, pytest.approx(98.95))]
    assert paper_points(res["rows"], EXAFLOPS) == [(50.0, pytest.approx(97.67))]
    plain = make_report(sweep, tmp_path / "plain", figures=("compute",))
    for r in plain["rows"]:
        r.pop(PAPER_ACC, None)
    from vitlab.report.figures import plot_compute

    without = plot_compute(plain["rows"], tmp_path / "without.png").read_bytes()
    assert without != (tmp_path / "out" / "compute.png").read_bytes()  # the paper's point changes the figure


def test_finetune_recipes_carry_the_pretraining_data_key(compose_train):
    cfg = compose_train("experiment=paper/finetune_cifar10", "model.pretrained=x.npz",
                        "paper.pretrain_data=imagenet21k")
    assert cfg.paper.pretrain_data == "imagenet21k" and cfg.paper.pretrain_epochs is None
