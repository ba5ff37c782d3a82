"""Few-shot linear evaluation: the closed-form solver, its k-shot protocol, the task and the training callback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vitlab import protocols
from vitlab.protocols.fewshot import (
    L2_GRID,
    fewshot_accuracy,
    kshot_indices,
    precompute,
    ridge_direct,
)

PROTOCOL_YAML = Path(__file__).resolve().parents[1] / "conf" / "protocol" / "fewshot.yaml"


def evaluator(dm, **options):
    """The few-shot evaluator with the defaults of conf/protocol/fewshot.yaml (what the task and callback compose)."""
    return protocols.build("fewshot", dm, **{**protocols.options(OmegaConf.load(PROTOCOL_YAML)), **options})


@pytest.mark.parametrize("n,d", [(60, 12), (12, 60)])  # x^T x branch and x x^T branch
def test_eigen_solver_matches_direct_solve(n, d):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, 4, (n,), generator=g)
    cache = precompute(x, y, 4)
    for l2 in (2.0**-3, 1.0, 2.0**7):
        torch.testing.assert_close(cache.weights(l2), ridge_direct(x, y, 4, l2), rtol=1e-6, atol=1e-8)


def test_linearly_separable_features_score_100_percent():
    g = torch.Generator().manual_seed(0)
    k, d = 10, 32
    centres = torch.randn(k, d, generator=g) * 5

    def sample(n_per):
        y = torch.arange(k).repeat_interleave(n_per)
        return centres[y] + 0.1 * torch.randn(len(y), d, generator=g), y

    (xtr, ytr), (xv, yv), (xt, yt) = sample(5), sample(20), sample(50)
    r = fewshot_accuracy(xtr, ytr, xv, yv, xt, yt, k)
    assert r["test"] == 1.0 and r["val"] == 1.0 and r["l2"] in L2_GRID
    # and chance on features that carry no label information
    r0 = fewshot_accuracy(torch.randn(50, d, generator=g), ytr, xv, yv, torch.randn(500, d, generator=g), yt, k)
    assert r0["test"] < 0.3


def test_kshot_draws_are_balanced_seeded_and_checked():
    labels = np.repeat(np.arange(5), 30)
    a, b, c = kshot_indices(labels, 10, 0), kshot_indices(labels, 10, 0), kshot_indices(labels, 10, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [10] * 5 and len(set(a.tolist())) == 50
    with pytest.raises(ValueError, match="fewer than 31 shots"):
        kshot_indices(labels, 31, 0)


def test_evaluator_on_digits_beats_chance_with_a_random_backbone():
    from vitlab.data.digits import DigitsDataModule
    from vitlab.models import build_model

    torch.manual_seed(0)
    net = build_model("vit", "micro", 10, img_size=32, patch_size=8)
    ev = evaluator(DigitsDataModule(), shots=(1, 10), seeds=3, max_eval=300)
    res = ev.evaluate(net)
    assert set(res) >= {"fewshot/digits_1shot", "fewshot/digits_10shot", "fewshot/digits_10shot_std"}
    # random ViT features still carry the image: 10-shot clearly above chance (10%; 0.35 measured at the
    # paper's fixed l2 = 2^10), and above 1-shot
    assert res["fewshot/digits_10shot"] > 0.25 and res["fewshot/digits_10shot"] > res["fewshot/digits_1shot"]


def test_fewshot_task_and_training_callback(compose_train, tmp_path, capsys):
    from conftest import compose_cfg
    from vitlab.runs.probe import probe
    from vitlab.train import train

    cfg = compose_train("trainer.max_epochs=1", "data.train_size=200", "callbacks=fewshot",
                        "callbacks.fewshot.shots=[1,5]", "callbacks.fewshot.max_eval=200", "test=false")
    results = train(cfg)
    assert 0.0 <= results["fewshot/digits_5shot"] <= 1.0 and "fewshot/digits_1shot" in results
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # `python -m vitlab.fewshot ckpt_path=... data=digits protocol.shots=[1,5] protocol.seeds=2`, as the CLI composes
    fs = compose_cfg("fewshot", [f"ckpt_path={ckpt}", "data=digits", "protocol.shots=[1,5]", "protocol.seeds=2",
                                 "protocol.max_eval=200"], tmp_path / "fs")
    capsys.readouterr()
    res = probe(fs)
    out = capsys.readouterr().out
    assert "| digits | 5 |" in out and "few-shot linear accuracy (2 seeds" in out
    saved = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    assert saved["fewshot/digits_5shot"] == res["fewshot/digits_5shot"] and saved["fewshot/seeds"] == 2


def test_fewshot_without_a_checkpoint_says_what_to_give(tmp_path):
    from conftest import compose_cfg
    from vitlab.errors import ConfigError
    from vitlab.runs.probe import probe

    cfg = compose_cfg("fewshot", ["data=digits"], tmp_path / "fs")
    with pytest.raises(ConfigError, match="ckpt_path=<vitlab .ckpt>, or model=<name> model.pretrained="):
        probe(cfg)


def test_random_init_baseline_is_seeded_and_beats_chance(tmp_path):
    """`python -m vitlab.fewshot model=vit_micro random_init=true`: the number a pretrained representation must beat."""
    from conftest import compose_cfg
    from vitlab.runs.probe import probe

    args = ["model=vit_micro", "random_init=true", "data=digits", "protocol.shots=[5]", "protocol.seeds=2",
            "protocol.max_eval=200"]
    a = probe(compose_cfg("fewshot", args, tmp_path / "a"))
    b = probe(compose_cfg("fewshot", args, tmp_path / "b"))
    c = probe(compose_cfg("fewshot", [*args, "seed=1"], tmp_path / "c"))
    assert a["fewshot/digits_5shot"] == b["fewshot/digits_5shot"]  # same seed, same random network
    assert a["fewshot/digits_5shot"] != c["fewshot/digits_5shot"]
    assert a["fewshot/digits_5shot"] > 0.2  # 10 classes: chance is 10%


def test_fewshot_task_logs_scalars_and_a_wandb_table_offline(tmp_path, monkeypatch):
    """`python -m vitlab.fewshot ... logger=wandb`: the scalars and the table land in the offline run file."""
    from conftest import compose_cfg
    from vitlab.runs.probe import probe
    from vitlab.wandb_io.offline import find_offline_runs, read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = ["model=vit_micro", "random_init=true", "data=digits", "protocol.shots=[1,5]", "protocol.seeds=1",
            "protocol.max_eval=100", "logger=wandb"]
    res = probe(compose_cfg("fewshot", args, tmp_path / "fs"))
    run = read_offline_run(find_offline_runs(tmp_path / "fs")[0])
    assert run.summary["fewshot/digits_5shot"] == pytest.approx(res["fewshot/digits_5shot"])
    assert run.summary["fewshot/table/_type"] == "table-file" and run.summary["fewshot/table/nrows"] == 2
    assert run.summary["fewshot/table/ncols"] == 5  # data, shots, accuracy, std, l2


# ---------------------------------------------------------------------------------------------------------
# The paper's protocol (big_vision fewshot_lsr): nested shots, fixed l2 = 2^10, mean over 3 seeds
# ---------------------------------------------------------------------------------------------------------


def _big_vision_draw(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """big_vision evaluators/fewshot_lsr.py compute_fewshot_metrics, transcribed."""
    rng = np.random.default_rng(seed)
    class_indices = [rng.permutation(np.where(labels == cls_i)[0]) for cls_i in range(num_classes)]
    return np.concatenate([indices[:shots] for indices in class_indices], axis=0)


def test_kshot_sets_are_nested_and_equal_big_visions_draw():
    labels = np.random.default_rng(3).integers(0, 7, 400)
    for seed in range(3):
        sets = {k: kshot_indices(labels, k, seed, 7) for k in (1, 5, 10, 25)}
        for k, idx in sets.items():
            np.testing.assert_array_equal(idx, _big_vision_draw(labels, k, seed, 7))
        assert set(sets[1]) < set(sets[5]) < set(sets[10]) < set(sets[25])  # the 5-shot set is inside the 10-shot set


class _Projection(torch.nn.Module):
    """A frozen 'backbone' with timm's forward_features / forward_head: a fixed random projection of the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 24)

    def forward_features(self, x):
        return self.proj(x.flatten(1))

    def forward_head(self, x, pre_logits=False):
        return x


def test_evaluator_defaults_to_fixed_l2_and_averages_three_nested_draws():
    from vitlab.data.base import TransformedDataset
    from vitlab.data.digits import DigitsDataModule
    from vitlab.data.transforms import build_transform
    from vitlab.protocols import extract_features
    from vitlab.protocols.fewshot import L2_FIXED

    assert L2_FIXED == 2.0**10  # big_vision configs/common_fewshot.py
    torch.manual_seed(0)
    net, dm = _Projection(), DigitsDataModule(img_size=8)
    ev = evaluator(dm, shots=(1, 5), max_eval=None)
    assert (ev.l2_select, ev.l2, ev.seeds) == ("fixed", 1024.0, 3)
    res = ev.evaluate(net)
    assert ev._prepare()["val"] is None  # the fixed penalty selects nothing: val is never read
    # the reference: every training image's features through big_vision's few-shot preprocessing (resize(256) |
    # central_crop(224), scaled: 8 px -> 9 then 8; not the DataModule's own eval view), big_vision's draws, a
    # direct solve at l2 = 1024
    dm.setup()
    pp = build_transform("fewshot", dm.eval_img_size, dm.normalization)
    xtr, ytr = extract_features(net, TransformedDataset(dm.train_set.base, pp))
    xt, yt = extract_features(net, TransformedDataset(dm.test_set.base, pp))
    assert not torch.equal(xt, extract_features(net, dm.test_set)[0])  # digits' own eval view is another image
    for k in (1, 5):
        accs = []
        for seed in range(3):
            idx = torch.as_tensor(_big_vision_draw(ytr.numpy(), k, seed, 10))
            w = ridge_direct(xtr[idx], ytr[idx], 10, 1024.0)
            c = precompute(xtr[idx], ytr[idx], 10)
            accs.append((c.prepare(xt) @ w).argmax(1).eq(yt).double().mean().item())
        assert res[f"fewshot/digits_{k}shot"] == pytest.approx(np.mean(accs), abs=1e-9)
        assert res[f"fewshot/digits_{k}shot_l2"] == 1024.0


def test_val_grid_is_an_option_and_misuse_is_named():
    from vitlab.data.digits import DigitsDataModule

    torch.manual_seed(0)
    dm = DigitsDataModule(img_size=8)
    ev = evaluator(dm, shots=(5,), seeds=1, l2_select="val_grid", max_eval=200)
    res = ev.evaluate(_Projection())
    assert any(res["fewshot/digits_5shot_l2"] == pytest.approx(v) for v in L2_GRID)  # chosen on val from the grid
    assert ev._prepare()["val"] is not None
    with pytest.raises(ValueError, match="l2_select='best' is not one of"):
        evaluator(dm, l2_select="best")
    with pytest.raises(ValueError, match="l2_grid=.* only used with l2_select=val_grid"):
        evaluator(dm, l2_grid=[1.0, 2.0])


def test_fewshot_task_config_is_the_papers(tmp_path):
    from conftest import compose_cfg
    from vitlab.protocols.fewshot import L2_FIXED

    cfg = compose_cfg("fewshot", ["data=digits"], tmp_path / "fs").protocol
    assert (cfg.l2_select, cfg.l2, cfg.seeds, cfg.l2_grid) == ("fixed", L2_FIXED, 3, None)
    assert L2_FIXED == 2.0**10  # big_vision configs/common_fewshot.py
    cb = compose_cfg("train", ["callbacks=fewshot"], tmp_path / "tr").callbacks.fewshot
    assert (cb.l2_select, cb.l2, cb.seeds) == ("fixed", 2.0**10, 3)
