"""vitlab.finetune: the paper's fine-tuning protocol (App. B.1.1) as one command — candidates scored on the dev split,
the best trained on the entire training split and tested — and BiT-HyperRule's parts (MixUp, the staircase)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg, refusal
from vitlab import metrics as M
from vitlab import paper
from vitlab.finetune import candidates, lr_grid, pick_best, recipes, run_task
from vitlab.modules.classification import classification_loss, mixup
from vitlab.optim import lr_factor

#: a CPU-sized protocol run: tiny steps and batches, the real code path (digits' dev split is 10% of its 1,797 images)
TINY = ["data=digits", "data.img_size=16", "optim=sgd_finetune", "optim.warmup=0", "data.global_batch_size=null",
        "data.batch_size=8", "data.eval_batch_size=16", "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
        "extras.print_config=false"]


@pytest.fixture
def compose(tmp_path):
    yield lambda *overrides: compose_cfg("finetune", list(overrides), tmp_path / "run")
    GlobalHydra.instance().clear()


def _check_protocol(res, out, printed: str, names: dict[str, str]) -> None:
    """Every candidate trained on the dev split, the best by dev accuracy chosen, then the whole split, tested."""
    dev = {name: json.loads((out / "dev" / slug / "metrics.json").read_text()) for name, slug in names.items()}
    assert list(res[M.FINETUNE_DEV]) == list(dev)
    for name, r in dev.items():  # every candidate trained on train minus the dev split, scored on the dev split
        assert (r[M.DATA_TRAIN_SIZE], r[M.DATA_VAL_SIZE]) == (1257, 180), name
        assert res[M.FINETUNE_DEV][name][M.VAL_ACC_BEST] == r[M.VAL_ACC_BEST]
        assert r.get(M.TEST_ACC) is None  # the dev runs are not tested
    scores = {name: r[M.VAL_ACC_BEST] for name, r in dev.items()}
    best = max(scores.values())
    chosen = next(name for name, s in scores.items() if s == best)  # ties: the first run
    assert (res[M.FINETUNE_RECIPE], res[M.FINETUNE_LR]) == (res[M.FINETUNE_DEV][chosen]["recipe"],
                                                            res[M.FINETUNE_DEV][chosen]["lr"])
    final = json.loads((out / "final" / "metrics.json").read_text())
    assert final[M.DATA_TRAIN_SIZE] == res[M.DATA_TRAIN_SIZE] == 1257 + 180  # the whole training split
    assert res[M.FINETUNE_DEV_TRAIN_SIZE] + res[M.FINETUNE_DEV_VAL_SIZE] == res[M.DATA_TRAIN_SIZE]
    assert 0.0 <= res[M.TEST_ACC] <= 1.0 and res[M.TEST_ACC] == final[M.TEST_ACC]
    assert json.loads((out / "metrics.json").read_text())[M.TEST_ACC] == res[M.TEST_ACC]
    assert res[M.TEST_CKPT].endswith("final-step000002.ckpt")  # the last weights, not a checkpoint chosen on test
    assert f"trained on all {1257 + 180} training images" in printed and all(n in printed for n in names)


def test_one_command_selects_the_lr_on_dev_then_trains_on_the_whole_split(compose, tmp_path, capsys):
    res = run_task(compose("model=vit_micro", "finetune.lr_grid=[0.01,0.3]", *TINY))
    _check_protocol(res, tmp_path / "run", capsys.readouterr().out, {"table4 lr=0.01": "table4_lr0.01", "table4 lr=0.3": "table4_lr0.3"})


@pytest.mark.slow
def test_a_resnet_takes_the_better_of_table4s_sweep_and_bit_hyperrule(compose, tmp_path, capsys):
    res = run_task(compose("model=bit_micro", "finetune.lr_grid=[0.01]", "finetune.bit_hyperrule.steps=2",
                           "finetune.bit_hyperrule.resolution=[20,16]", *TINY))  # finetune.recipe=paper: both
    _check_protocol(res, tmp_path / "run", capsys.readouterr().out,
                    {"table4 lr=0.01": "table4_lr0.01", "bit_hyperrule": "bit_hyperrule"})


def test_ties_go_to_the_first_candidate_and_a_diverged_run_loses():
    assert pick_best({"table4 lr=0.001": 0.5, "table4 lr=0.003": 0.5, "bit_hyperrule": 0.5}) == "table4 lr=0.001"
    assert pick_best({"table4 lr=0.01": math.nan, "table4 lr=0.03": None, "bit_hyperrule": 0.1}) == "bit_hyperrule"


def test_a_choice_without_a_dev_split_is_refused(compose):
    msg = refusal(run_task, compose("model=vit_micro", "data.val_fraction=0", *TINY))
    assert "data.val_fraction=0 " in msg and "on test" in msg


@pytest.mark.parametrize("data", list(paper.TABLE4))
def test_the_paper_recipes_run_as_one_job_over_table4s_grid(compose, data):
    cfg = compose(f"experiment=paper/finetune_{data}")
    assert cfg.hydra.mode.name == "RUN" and lr_grid(cfg) == paper.TABLE4[data]["lr_grid"]
    assert [c["optim.lr"] for c in candidates(cfg).values()] == paper.TABLE4[data]["lr_grid"]
    assert recipes(cfg) == ("table4",)  # a ViT: Table 4's sweep only
    assert recipes(compose(f"experiment=paper/finetune_{data}", "model=bit_r50x1")) == ("table4", "bit_hyperrule")


def test_bit_hyperrule_candidate_is_the_rule_for_the_datas_size(compose):
    """digits: 1,437 training images (< 20k) of 32 px (< 96x96): 500 steps, warmup 100, lr / 10 after steps 200,
    300, 400, no MixUp, resize 160 and crop 128 (vitlab.paper.BIT_HYPERRULE; tests/test_paper.py checks the rule)."""
    bit = candidates(compose("model=bit_micro", "finetune.recipe=bit_hyperrule"))["bit_hyperrule"]
    rule = paper.bit_hyperrule(1437, (32, 32))
    assert rule == {**rule, "steps": 500, "warmup_steps": 100, "precrop": 160, "crop": 128, "mixup_alpha": 0.0}
    assert bit == {**bit, "optim.lr": paper.BIT_HYPERRULE["base_lr"], "optim.momentum": paper.BIT_HYPERRULE["momentum"],
                   "optim.weight_decay": paper.BIT_HYPERRULE["weight_decay"], "optim.grad_clip": None,
                   "optim.decay": "step", "optim.decay_at": rule["decay_at"], "optim.warmup": rule["warmup_steps"],
                   "optim.decay_factor": paper.BIT_HYPERRULE["decay_factor"], "trainer.max_steps": rule["steps"],
                   "module.mixup_alpha": rule["mixup_alpha"], "data.img_size": 128, "data.train_pipeline": "finetune",
                   "data.crop_pct": 128 / 160}


def test_mixup_is_a_convex_combination_with_matching_label_weights():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 10, (16,))
    xm, target, lam = mixup(x, y, 0.1, 10)
    assert 0.0 <= lam <= 1.0 and torch.allclose(target.sum(-1), torch.ones(16))
    onehot = F.one_hot(y, 10).float()
    for i in range(16):  # image i is mixed with some image j, and its target with j's label, by the same lam
        js = [j for j in range(16) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)]
        assert js and any(torch.allclose(target[i], lam * onehot[i] + (1 - lam) * onehot[j]) for j in js)
    logits = torch.randn(16, 10)
    perm = [next(j for j in range(16) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6))
            for i in range(16)]
    bit = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])  # BiT's mixup_criterion
    assert torch.allclose(classification_loss(logits, target, "softmax"), bit, atol=1e-5)


def test_mixup_is_off_in_the_vit_recipe(compose):
    assert compose("experiment=paper/finetune_cifar10").module.mixup_alpha == 0.0


@pytest.mark.parametrize("size", [1_000, 50_000, 1_281_167])
def test_step_decay_is_bits_staircase(size):
    """optim.decay=step with the rule's decay_at gives big_transfer's get_lr at every step (copied below)."""
    def get_lr(step, dataset_size, base_lr=0.003):  # big_transfer bit_hyperrule.py, verbatim
        supports = ([100, 200, 300, 400, 500] if dataset_size < 20_000 else [500, 3000, 6000, 9000, 10_000]
                    if dataset_size < 500_000 else [500, 6000, 12_000, 18_000, 20_000])
        if step < supports[0]:
            return base_lr * step / supports[0]
        elif step >= supports[-1]:
            return None
        for s in supports[1:]:
            if s < step:
                base_lr /= 10
        return base_lr

    rule = paper.bit_hyperrule(size, (224, 224))
    for step in range(rule["steps"]):
        ours = rule["lr"] * lr_factor(step, rule["steps"], rule["warmup_steps"], "step", decay_at=rule["decay_at"],
                                      decay_factor=paper.BIT_HYPERRULE["decay_factor"])
        assert math.isclose(ours, get_lr(step, size), rel_tol=1e-9), step
