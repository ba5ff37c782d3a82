"""Configs compose in every combination, and bad names or keys fail at start-up naming the culprit."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from vitlab import CONF_DIR

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")) for g in ("model", "data", "optim", "trainer")}


def test_every_group_has_the_required_entries():
    for name in ["vit_ti16", "vit_s16", "vit_b16", "vit_b32", "vit_l16", "vit_l32", "vit_h14", "bit_r50x1", "bit_r50x3",
                 "bit_r101x1", "bit_r101x3", "bit_r152x2", "bit_r152x4", "vit_micro", "bit_micro", "r50_vit_b16"]:
        assert name in GROUPS["model"]
    assert {"digits", "shapes"} <= set(GROUPS["data"])
    assert {"cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"adam_pretrain", "sgd_finetune"} <= set(GROUPS["optim"])


@pytest.mark.parametrize("model", GROUPS["model"])
@pytest.mark.parametrize("data", ["digits", "shapes"])
def test_every_model_composes_with_embedded_data(compose_train, model, data):
    cfg = compose_train(f"model={model}", f"data={data}")
    assert cfg.model.num_classes == cfg.data.num_classes == 10
    assert cfg.model.img_size == cfg.data.img_size


@pytest.mark.parametrize("optim", GROUPS["optim"])
@pytest.mark.parametrize("trainer", GROUPS["trainer"])
def test_optim_and_trainer_combinations_compose(compose_train, optim, trainer):
    cfg = compose_train(f"optim={optim}", f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"  # only Lightning's keys: vitlab's live with their callback
    assert cfg.trainer.gradient_clip_val == cfg.optim.grad_clip


def test_paper_recipes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        pre = compose("train", ["optim=adam_pretrain"]).optim
        ft = compose("train", ["optim=sgd_finetune"]).optim
    # Table 3's ImageNet-21k ViT-B row (vitlab.paper); decoupled weight decay, kernels only (issue 13 row 1)
    assert (pre.name, list(pre.betas), pre.weight_decay, pre.decay, pre.warmup, pre.grad_clip) == (
        "adam_decoupled", [0.9, 0.999], 0.03, "linear", 10000, None)
    assert (ft.name, ft.momentum, ft.weight_decay, ft.decay, ft.grad_clip) == ("sgd", 0.9, 0.0, "cosine", 1.0)


def test_unknown_model_lists_choices(compose_train):
    with pytest.raises(ConfigCompositionException) as e:
        compose_train("model=vit_b17")
    msg = str(e.value) + str(e.value.__cause__)
    assert "vit_b17" in msg and "vit_b16" in msg and "bit_r50x1" in msg


def test_typo_in_override_names_the_key(compose_train):
    with pytest.raises(ConfigCompositionException) as e:
        compose_train("trainer.max_epoch=1")
    assert "max_epoch" in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize(
    "override, culprit",
    [("optim.lr=-0.1", "optim.lr"), ("data.batch_size=0", "data.batch_size"), ("model.patch_size=5", "model.patch_size=5"),
     ("trainer.precision=bf17", "trainer.precision"), ("optim.lr=abc", "optim.lr")],
)
def test_bad_values_fail_before_any_work(refuse, tmp_path, override, culprit):
    assert f"Error: {culprit}" in refuse(override)
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("arg, valid", [("model=vit_b17", "vit_b16"), ("data=cifar11", "digits"),
                                        ("experiment=nope", "quickstart")])
def test_unknown_names_fail_at_compose_with_choices(compose_train, arg, valid):
    """Hydra composes before anything runs (nothing is trained): the error names the value and lists the choices."""
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(arg)
    msg = str(e.value) + str(e.value.__cause__)
    assert arg.split("=")[1] in msg and valid in msg


def test_missing_checkpoint_names_the_path(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_cfg, refusal
    from vitlab.evaluate import evaluate

    missing = tmp_path / "nope" / "last.ckpt"
    try:
        msg = refusal(evaluate, compose_cfg("evaluate", [f"ckpt_path={missing}"], tmp_path / "out"))
    finally:
        GlobalHydra.instance().clear()
    assert str(missing) in msg


def test_conf_found_from_any_directory(main_cli, tmp_path, monkeypatch):
    """vitlab.train's command line (its main, in-process) run from a folder that is not the repository."""
    from vitlab.train import main

    monkeypatch.chdir(tmp_path)
    code, out, err = main_cli(main, "--cfg", "job", "model=vit_b16")
    assert code == 0, err[-2000:]
    assert "variant: B" in out
