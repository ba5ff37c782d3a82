"""vitlab.predict end to end: a trained checkpoint labels real image files (digits PNGs, a data=folder tree)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg
from vitlab.predict import main as predict_main
from vitlab.train import train

TINY = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "logger=none", "extras.print_config=false"]


@pytest.fixture
def digits_run(tiny_ckpt):
    """The shared tiny digits run's checkpoint (conftest's ``tiny_run``: vit_micro at 16 px): read, never written."""
    return tiny_ckpt


def test_predict_digits_matches_the_eval_pipeline(digits_run, tmp_path, main_cli, monkeypatch):
    """PNG files of digits test images (lossless) get the labels the model gives the test split's tensors;
    a corrupt file is named and skipped, the rest are kept."""
    from vitlab.data.digits import DigitsDataModule
    from vitlab.modules import ClassificationModule

    dm = DigitsDataModule(img_size=16, eval_pipeline="none")  # the run's own image size
    dm.setup()
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    base = dm.test_set.base
    xs = []
    for i in range(6):
        x, _ = base[i]
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(imgs / ("sub" if i % 2 else "") / f"d{i}.png")
        xs.append(dm.test_set[i][0])
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    module = ClassificationModule.load_from_checkpoint(digits_run, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        expected = module(torch.stack(xs)).softmax(-1)

    monkeypatch.chdir(tmp_path)  # out=preds.csv is relative
    code, out, err = main_cli(predict_main, f"ckpt_path={digits_run}", f"input={imgs}", "topk=3", "out=preds.csv")
    assert code == 0, err[-3000:]
    assert "labelled 6 image(s), skipped 1 unreadable" in out and "broken.png" in out
    assert "skipped unreadable image" in out + err  # the warning names it, with the decoder's reason
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader((tmp_path / "preds.csv").open())}
    assert set(rows) == {f"d{i}.png" for i in range(6)}
    for i in range(6):
        row = rows[f"d{i}.png"]
        assert row["pred"] == str(int(expected[i].argmax())) and row["pred"] in "0123456789"
        assert float(row["prob"]) == pytest.approx(float(expected[i].max()), abs=1e-4)
        assert len(row["topk_labels"].split("|")) == 3


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory):
    """A real ImageFolder tree: three colour classes, PNG and JPEG files."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
    for split, n in (("train", 12), ("val", 3), ("test", 3)):
        for name, c in colours.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.array(c) + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root, colours


def test_predict_folder_run_uses_class_folder_names_json_and_multilabel(folder_tree, tmp_path, main_cli, monkeypatch):
    root, colours = folder_tree
    out = tmp_path / "run"
    train(compose_cfg("train", [*TINY, "data=folder", f"data.root={root}", "data.img_size=16", "model.patch_size=4",
                                "data.num_workers=0", "trainer.max_epochs=3", "optim.lr=3e-3"], out))
    ckpt = out / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["vitlab_classes"] == sorted(colours)

    monkeypatch.chdir(tmp_path)
    code, _, err = main_cli(predict_main, f"ckpt_path={ckpt}", f"input={root}/test/*/*.jpg", "topk=2", "out=p.json",
                            "multilabel=true", "threshold=0.2")
    assert code == 0, err[-3000:]
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["meta"]["classes"] == sorted(colours) and res["meta"]["skipped"] == []
    preds = res["predictions"]
    assert len(preds) == 3  # one jpg per class in test/ (i = 1)
    for p in preds:
        assert p["pred"] in colours and len(p["topk"]) == 2 and p["topk"][0]["label"] == p["pred"]
        assert all(lbl in colours for lbl in p["labels"])
        assert [t["prob"] >= 0.2 for t in p["topk"]] == [t["label"] in p["labels"] for t in p["topk"]]


def test_predict_refuses_bad_input_with_the_fix(digits_run, tmp_path, main_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = main_cli(predict_main, f"ckpt_path={digits_run}", f"input={tmp_path}/nothing/*.png")
    assert code != 0 and "no image found" in err and "quoted glob" in err


def test_predict_never_instantiates_the_stored_data_config(digits_run, tmp_path, monkeypatch):
    """The stored data config's `_target_` is data from a file: predict reads the checkpoint through the one
    reader (``vitlab.runs.read_run``), which refuses a foreign `_target_` by its key path and runs nothing."""
    from vitlab.errors import ConfigError
    from vitlab.predict import load_predictor

    monkeypatch.chdir(tmp_path)
    net, transform, classes, loss = load_predictor(digits_run)
    assert classes == [str(i) for i in range(10)] and loss == "softmax"
    ckpt = torch.load(digits_run, map_location="cpu", weights_only=True)
    ckpt["vitlab_config"]["data"]["_target_"] = "os.system"
    ckpt["vitlab_config"]["data"]["root"] = "echo pwned > marker"
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(ConfigError, match=r"vitlab_config\.data\._target_ = 'os.system' is not allowed"):
        load_predictor(evil)
    assert not (tmp_path / "marker").exists()


def _images(root, *rel):
    for r in rel:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / r)


def test_a_glob_over_symlink_loops_lists_each_image_once(tmp_path, monkeypatch):
    """`input='d/**/*.png'` over a folder with symlink loops: glob.glob followed a loop until the path got too long
    (each image ~40 times) and, with two loops, for ever. Now the glob walks like the folder form (data.tree's
    walker): each image once, each loop named in a warning."""
    from vitlab.predict import find_images

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "d"
    _images(d, "x.png", "a/y.png", "a/b/z.png", "a/b/w.jpg")
    (d / "a" / "up").symlink_to("..")
    want = ["d/a/b/z.png", "d/a/y.png", "d/x.png"]
    with pytest.warns(UserWarning, match=r"d/a/up leads to .*a folder already walked"):
        assert [str(p) for p in find_images("d/**/*.png")] == want
    (d / "a" / "b" / "up2").symlink_to("../..")  # a second loop: exponential for glob.glob
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert [str(p) for p in find_images("d/**/*.png")] == want
        assert [str(p) for p in find_images("d/*/*.png")] == ["d/a/y.png"]
        assert [str(p) for p in find_images("d/**/b/*")] == ["d/a/b/w.jpg", "d/a/b/z.png"]
        assert [str(p) for p in find_images("d")] == ["d/a/b/w.jpg", *want]
    assert {str(w.message).split(" ")[0] for w in seen} == {"d/a/up", "d/a/b/up2"}


def test_out_a_folder_is_refused_before_any_work(tmp_path):
    from vitlab.errors import ConfigError
    from vitlab.predict import predict

    _images(tmp_path / "imgs", "a.png")
    cfg = compose_cfg("predict", [f"ckpt_path={tmp_path / 'missing.ckpt'}", f"input={tmp_path / 'imgs'}",
                                  f"out={tmp_path}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"out={tmp_path} is a folder; give a file in it: out={tmp_path}/preds.csv"):
        predict(cfg)


def test_out_dev_full_keeps_the_predictions_in_the_run_dir(digits_run, tmp_path):
    """A write that fails (/dev/full: no space left) names out= and where the predictions went; nothing is lost."""
    from vitlab.errors import ConfigError
    from vitlab.predict import predict

    _images(tmp_path / "imgs", "a.png", "b.png")
    cfg = compose_cfg("predict", [f"ckpt_path={digits_run}", f"input={tmp_path / 'imgs'}", "out=/dev/full",
                                  "progress=false"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"out=/dev/full: cannot write the predictions \(No space left on device\); "
                                          rf"they are saved in {tmp_path}/run/preds.csv instead"):
        predict(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "preds.csv").open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png"]
