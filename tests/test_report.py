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
from vitlab.wandb_io.offline import read_offline_run, wait_until_finished


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


def test_report_logs_images_and_table_to_wandb_and_never_reads_them_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = _fake_sweep(tmp_path / "sweep")
    out = sweep / "report"  # the default out_dir: inside the sweep
    res = make_report(sweep, out, log_to_wandb=True)
    run = read_offline_run(res["files"]["wandb"])
    assert run.job_type == "report"
    logged = {k: v for row in run.history for k, v in row.items()}
    assert logged["figures/data_scaling/_type"] == logged["figures/compute/_type"] == "image-file"
    assert logged["report/runs/_type"] == "table-file" and logged["report/runs/nrows"] == 24
    media = Path(res["files"]["wandb"]) / "files" / logged["figures/compute/path"]
    assert media.read_bytes() == (out / "compute.png").read_bytes()
    # the next report reads the 24 runs, not the report's own W&B run or files as a 25th
    again = make_report(sweep, out)
    assert len(again["rows"]) == 24 and all(Path(r["job_dir"]).parent == sweep for r in again["rows"])


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


# ---- run files from someone else: resolved, bounded, no aliases; outputs escaped, locked, never read back ----------
def _hydra_job(root: Path, name: str, overrides: list[str], metrics: dict | str) -> Path:
    """A job dir in the layout Hydra writes: `.hydra/config.yaml` (the composed config, interpolations kept) and
    `.hydra/overrides.yaml`, plus vitlab's metrics.json (no resolved config.yaml: an older run, or another task's)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vitlab.config import CONF_DIR

    job = root / name
    (job / ".hydra").mkdir(parents=True)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (job / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return job


DEMO_METRICS = {"model/name": "vit_micro", "model/family": "vit", "data/name": "digits", "data/num_classes": 10,
                "data/train_size": 200, "test/acc": 0.60, "train/exaflops": 9.6e-9}


def test_report_resolves_values_and_names_each_runs_protocol(tmp_path):
    sweep = tmp_path / "sweep"
    for i, stage in enumerate(("finetune", "scratch")):
        _hydra_job(sweep, str(i), ["experiment=transfer_demo", f"+experiment/transfer_demo={stage}"], DEMO_METRICS)
    res = make_report(sweep, tmp_path / "out")
    table = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert [(r["protocol"], r["optim.lr"], r["group"]) for r in table] == [
        ("fine-tune", "0.001", "transfer_demo"), ("scratch", "0.001", "transfer_demo")]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "${" not in md and "| protocol |" in md and "| fine-tune |" in md
    assert res["rows"][0]["protocol"] == "fine-tune"


def test_interpolations_resolve_only_within_the_file(monkeypatch):
    from vitlab.utils.run_files import MAX_RESOLVED_CHARS, resolve_config

    monkeypatch.setenv("VITLAB_TEST_SECRET", "hunter2")
    cfg = {"demo": {"lr": 1e-3}, "optim": {"lr": "${demo.lr}"}, "task_name": "t", "group": "${task_name}",
           "name": "a-${task_name}-${demo.lr}", "secret": "${oc.env:VITLAB_TEST_SECRET}",
           "ckpt": "${hydra:sweep.dir}/0/last.ckpt", "a": "${b}", "b": "${a}", "gone": "${no.such.key}",
           "section": "${demo}", "b0": "xy"}
    for i in range(1, 80):  # each doubles the last: 2^80 characters if expanded
        cfg[f"b{i}"] = f"${{b{i - 1}}}${{b{i - 1}}}"
    r = resolve_config(cfg)
    assert (r["optim"]["lr"], r["group"], r["name"]) == (1e-3, "t", "a-t-0.001")
    assert r["secret"] == "(unresolved: ${oc.env:VITLAB_TEST_SECRET})"  # no resolver runs, no variable is read
    assert r["ckpt"] == "(unresolved: ${hydra:sweep.dir}/0/last.ckpt)"
    assert r["a"].startswith("(unresolved:") and r["gone"] == "(unresolved: ${no.such.key})"
    assert r["section"] == "(unresolved: ${demo})" and r["b3"] == "xy" * 8
    assert len(r["b79"]) < 100 and all(len(str(v)) <= MAX_RESOLVED_CHARS for v in r.values())


def test_yaml_aliases_oversize_and_misshapen_run_files_are_named_and_skipped(tmp_path, caplog):
    """A run file is data: an alias bomb in .hydra/config.yaml is refused unexpanded, and a list-shaped, deeply
    nested or oversize metrics.json is a named warning, not a traceback; the good job is still reported."""
    from vitlab.utils.run_files import MAX_RUN_FILE_BYTES

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text(json.dumps(DEMO_METRICS))
    bad = {"1": "[1, 2, 3]", "2": "[" * 100_000 + "]" * 100_000, "3": json.dumps({"test/acc": 0.5, "x": [[[[1]]]]}),
           "4": json.dumps({"test/acc": 0.5, "pad": "x" * MAX_RUN_FILE_BYTES})}
    for name, text in bad.items():
        (sweep / name).mkdir()
        (sweep / name / "metrics.json").write_text(text)
    alias = sweep / "5"
    (alias / ".hydra").mkdir(parents=True)
    (alias / "metrics.json").write_text(json.dumps(DEMO_METRICS))
    (alias / ".hydra" / "config.yaml").write_text("a: &a [1, 2]\nb: *a\n")
    bomb = sweep / "6"
    (bomb / ".hydra").mkdir(parents=True)
    (bomb / "metrics.json").write_text(json.dumps(DEMO_METRICS))
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 nodes if expanded
    (bomb / ".hydra" / "config.yaml").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="vitlab.report"):
        rows = collect(sweep)
    assert [Path(r["job_dir"]).name for r in rows] == ["0"]
    for name, why in (("1", "holds a JSON list, not the mapping of results"), ("2", "nested too deeply"),
                      ("3", "'x' holds nested data"), ("4", f"more than {MAX_RUN_FILE_BYTES:,} bytes"),
                      ("5", "anchor or alias"), ("6", "anchor or alias")):
        assert any(f"sweep/{name}/" in m and why in m for m in caplog.messages), (name, caplog.messages)


def test_report_cells_cannot_inject_formulas_or_markup(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    evil = {**DEMO_METRICS, "model/name": "=cmd|' /C calc'!A0", "data/name": "+HYPERLINK(\"http://x\")",
            "model/family": "<img src=x onerror=alert(1)>|x\ny", "@sum(1)": "-2+3", "note": "\tfoo"}
    (sweep / "0" / "metrics.json").write_text(json.dumps(evil))
    make_report(sweep, tmp_path / "out")
    with (tmp_path / "out" / "report.csv").open(newline="") as f:
        head, row = list(csv.reader(f))
    cells = dict(zip(head, row, strict=True))
    assert cells["model/name"] == "'=cmd|' /C calc'!A0" and cells["data/name"].startswith("'+HYPERLINK")
    assert cells["'@sum(1)"] == "'-2+3" and cells["note"] == "'\tfoo" and cells["test/acc"] == "0.6"
    assert not any(c[:1] in "=+-@\t\r" for c in head + row if c)
    md = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert len(md) == 5 and "<img" not in "\n".join(md)  # title, blank, header, separator, one row
    assert md[4].replace("\\|", "").count("|") == md[2].count("|")  # the row has as many cells as the header
    assert "&lt;img src=x onerror=alert(1)&gt;\\|x y" in md[4]


def test_a_second_report_into_a_busy_out_dir_is_refused(tmp_path):
    import os
    import sys
    import time

    from vitlab.errors import RunDirBusyError

    out, ready = tmp_path / "out", tmp_path / "ready"
    hold = ("import sys, time; from pathlib import Path; from vitlab.utils.run_owner import acquire; "
            "acquire(sys.argv[1]); Path(sys.argv[2]).write_text('held'); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", hold, str(out), str(ready)],
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert p.poll() is None and time.monotonic() - t0 < 60, "holder did not start"
            time.sleep(0.05)
        with pytest.raises(RunDirBusyError, match=rf"out_dir={out.resolve()} is in use by pid {p.pid}"):
            make_report(_fake_sweep(tmp_path / "sweep"), out)
        assert not (out / "report.csv").exists()
    finally:
        p.kill()
        p.wait()


def _drawn(monkeypatch, plot, rows, path):
    """The matplotlib figure a plot function saved (captured at savefig), for reading its axes."""
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real(self, *a, **k))[1])
    plot(rows, path)
    return saved[0].axes[0]


def test_compute_figure_reads_at_a_demos_scale(tmp_path, monkeypatch):
    """The transfer demo's three runs: GFLOPs (not 1e-8 exaFLOPs), tick labels that do not overlap, no point label
    repeating the legend, a chance line, and fine-tune / scratch / another dataset as separate series."""
    from vitlab.report.figures import plot_compute, plot_data_scaling

    base = {"model/name": "vit_micro", "model/family": "vit", "data/num_classes": 10}
    rows = [{**base, "data/name": "digits", "protocol": "fine-tune", "data/train_size": 50, "test/acc": 0.1417,
             "train/exaflops": 9.63e-9},
            {**base, "data/name": "digits", "protocol": "scratch", "data/train_size": 50, "test/acc": 0.10,
             "train/exaflops": 9.63e-9},
            {**base, "data/name": "shapes", "protocol": "scratch", "data/train_size": 200, "test/acc": 0.093,
             "train/exaflops": 1.71e-8}]
    ax = _drawn(monkeypatch, plot_compute, rows, tmp_path / "compute.png")
    assert "[GFLOPs" in ax.get_xlabel() and len(ax.texts) == 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    ticks = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
    boxes = [t.get_window_extent(renderer) for t in ticks if t.get_text() and t.get_visible()]
    assert len(boxes) >= 2 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    labels = ax.get_legend_handles_labels()[1]
    assert "chance: 10%" in labels and len([lb for lb in labels if lb.startswith("ViT")]) == 3
    assert any("fine-tune" in lb for lb in labels) and any("shapes" in lb for lb in labels)
    ax = _drawn(monkeypatch, plot_data_scaling, rows, tmp_path / "data.png")
    assert sorted(lb for lb in ax.get_legend_handles_labels()[1] if lb.startswith("vit")) == [
        "vit_micro · digits · fine-tune", "vit_micro · digits · scratch", "vit_micro · shapes · scratch"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "100", "200"]
