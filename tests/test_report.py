"""vitlab.report: the same numbers from metrics.json, CSV logs and W&B offline files; the figures; the page."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_cfg
from vitlab.errors import ReportError, WandbFileError
from vitlab.report.collect import collect, read_job
from vitlab.report.task import make_report
from vitlab.report.wandb_offline import read_offline_run, wait_until_finished


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One real tiny training run logging to CSV and to W&B offline."""
    from hydra.core.global_hydra import GlobalHydra

    from vitlab.train import train

    out = tmp_path_factory.mktemp("run") / "job"
    cfg = compose_cfg("train", [
        "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1", "data.batch_size=16", "logger=default", "group=report_test",
    ], out)
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    wait_until_finished(next((out / "wandb").glob("offline-run-*")))  # W&B flushes its file asynchronously
    return out


def test_offline_run_file_has_what_metrics_json_has(real_run):
    res = json.loads((real_run / "metrics.json").read_text())
    run = read_offline_run(next((real_run / "wandb").glob("offline-run-*")))
    assert run.group == "report_test" and run.exit_code == 0
    assert run.config["model/name"] == res["model/name"] and run.config["model/gflops"] == res["model/gflops"]
    assert run.summary["test/acc"] == pytest.approx(res["test/acc"])
    assert run.best("val/acc") == pytest.approx(res["val/acc_best"])
    assert any("train/exaflops" in row for row in run.history)


def test_same_row_from_each_source(real_run, tmp_path):
    """metrics.json, then the CSV log alone, then the W&B offline file alone: the same key numbers."""
    sweep = tmp_path / "sweep"
    full, csv_only, wandb_only = sweep / "0", sweep / "1", sweep / "2"
    shutil.copytree(real_run, full)
    shutil.copytree(real_run, csv_only, ignore=shutil.ignore_patterns("metrics.json", "wandb"))
    wandb_only.mkdir()
    shutil.copytree(real_run / "wandb", wandb_only / "wandb", symlinks=True)
    rows = collect(sweep)
    assert [r["source"] for r in rows] == ["metrics.json", "csv", "wandb"]
    for key in ("test/acc", "val/acc_best", "model/params", "data/train_size"):
        assert rows[1][key] == pytest.approx(rows[0][key]), key
        assert rows[2][key] == pytest.approx(rows[0][key]), key
    assert rows[1]["train/exaflops"] == pytest.approx(rows[0]["train/exaflops"], rel=1e-4)


def test_bad_inputs_name_the_culprit(tmp_path, real_run):
    with pytest.raises(ReportError, match="no such directory"):
        collect(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no job dirs"):
        collect(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"bad/metrics.json: not valid JSON"):
        read_job(bad)
    junk = tmp_path / "junk" / "run-x.wandb"
    junk.parent.mkdir()
    junk.write_bytes(b"definitely not a wandb file")
    with pytest.raises(WandbFileError, match="run-x.wandb: not a W&B run file"):
        read_offline_run(junk.parent)
    # a run killed mid-write: the truncated tail is dropped, the rest still reads
    src = next((real_run / "wandb").glob("offline-run-*/run-*.wandb"))
    cut = tmp_path / "cut" / src.name
    cut.parent.mkdir()
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert read_offline_run(cut.parent).config["model/name"] == "vit_micro"


def _fake_sweep(root: Path, with_compute: bool = True) -> Path:
    """Job dirs in exactly the layout and keys vitlab.train writes, for 3 families x 4 sizes x 2 seeds."""
    rng = np.random.default_rng(0)
    i = 0
    for fam, name, gfl in (("vit", "vit_micro", 0.0287), ("bit", "bit_micro", 0.0556), ("hybrid", "hybrid_micro", 0.064)):
        for n in (500, 2000, 8000, 32000):
            for seed in (0, 1):
                job = root / str(i)
                job.mkdir(parents=True)
                acc = 0.3 + 0.1 * np.log10(n) + (0.05 if fam == "bit" else 0) + rng.normal(0, 0.01)
                res = {"model/name": name, "model/family": fam, "model/params_m": 1.0, "model/gflops": gfl,
                       "model/train_gflops": 3 * gfl, "data/name": "shapes", "data/train_size": n,
                       "val/acc_best": acc, "test/acc": acc - 0.01, "seed": seed, "time/wall_s": 10.0}
                if with_compute:
                    res["train/exaflops"] = 19200 * 3 * gfl * 1e9 / 1e18 * (n / 500) ** 0.5
                (job / "metrics.json").write_text(json.dumps(res))
                i += 1
    return root


def test_figures_table_and_page_from_fixture_sweep(tmp_path):
    res = make_report(_fake_sweep(tmp_path / "sweep"), tmp_path / "out", title="fixture study")
    assert res["skipped"] == {}
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert len(rows) == 24 and {r["model/family"] for r in rows} == {"vit", "bit", "hybrid"}
    assert (tmp_path / "out" / "report.md").read_text().count("| hybrid_micro |") == 8
    for png in ("data_scaling.png", "compute.png"):
        img = (tmp_path / "out" / png).read_bytes()
        assert img[:4] == b"\x89PNG" and len(img) > 10_000
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and page.count("<tr>") == 25  # header + 24 runs


def test_missing_compute_skips_only_that_figure(tmp_path):
    res = make_report(_fake_sweep(tmp_path / "sweep", with_compute=False), tmp_path / "out")
    assert set(res["skipped"]) == {"compute"} and "train/exaflops" in res["skipped"]["compute"]
    assert (tmp_path / "out" / "data_scaling.png").is_file() and not (tmp_path / "out" / "compute.png").exists()


def test_report_logs_images_and_table_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    res = make_report(_fake_sweep(tmp_path / "sweep"), tmp_path / "out", log_to_wandb=True)
    run = read_offline_run(res["files"]["wandb"])
    assert run.job_type == "report"
    logged = {k: v for row in run.history for k, v in row.items()}
    assert logged["figures/data_scaling/_type"] == logged["figures/compute/_type"] == "image-file"
    assert logged["report/runs/_type"] == "table-file" and logged["report/runs/nrows"] == 24
    media = Path(res["files"]["wandb"]) / "files" / logged["figures/compute/path"]
    assert media.read_bytes() == (tmp_path / "out" / "compute.png").read_bytes()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    make_report(_fake_sweep(tmp_path / "sweep"), tmp_path / "out", title="fixture study")
    page = (tmp_path / "out" / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>fixture study</h1>" in dom and dom.count("<tr>") == 25 and dom.count("<img") == 2
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,1200", page], capture_output=True,
                   timeout=120, check=False)
    px = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def near(rgb):  # pixels of a plot colour: the figures were decoded and drawn
        return int((np.abs(px - np.array(rgb)).sum(1) < 40).sum())

    assert near((31, 119, 180)) > 200 and near((255, 127, 14)) > 200  # ViT blue, BiT orange
