"""The registry of model families: lookup by name, what the rest of vitlab asks of a family, and ConvNeXt, the
family added the way a contributor would (src/vitlab/models/convnext.py plus conf/model/convnext_*.yaml)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from vitlab.errors import ModelConfigError
from vitlab.models import build_model, count_params, registry

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"
MODELS = SRC / "models"
#: a test of a family's name: ``family == "bit"``, ``family[name] != "bit"``, ``.get("family") in ("vit", ...)``,
#: or a literal tuple / dict of family names (``families=("vit", "hybrid")``, ``{"vit": ("tab:blue", "o")}``)
SWITCH = re.compile(r"famil\w*(\[[^\]]*\]|\([^)]*\))?\W{0,3}\s*(==|!=|(not\s+)?in\b)\s*[(\[{]?\s*[\"']\w+[\"']"
                    r"|[(\[{]\s*[\"'](vit|bit|hybrid)[\"']\s*,|[\"'](vit|bit|hybrid)[\"']\s*:")


@pytest.mark.parametrize("name, timm_name", [("convnext_t", "convnext_tiny"), ("convnext_s", "convnext_small"),
                                             ("convnext_b", "convnext_base")])
def test_convnext_param_counts_match_timm(compose_train, name, timm_name):
    import timm

    cfg = compose_train(f"model={name}", "model.num_classes=1000", "model.img_size=224")
    with torch.device("meta"):
        ours = count_params(build_model(**cfg.model))
        theirs = count_params(timm.create_model(timm_name, pretrained=False, num_classes=1000))
    assert ours == theirs
    assert f"{ours / 1e6:.2f}M params" in (Path(__file__).parents[1] / "conf" / "model" / f"{name}.yaml").read_text()


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(ModelConfigError) as e:
        build_model("deit", "S", num_classes=10, img_size=32, patch_size=8)
    msg = str(e.value)
    assert "model.family='deit'" in msg
    assert all(f"'{n}'" in msg for n in ("bit", "convnext", "hybrid", "vit"))


def test_each_family_knows_its_own_networks():
    nets = {"vit": build_model("vit", "micro", 10, img_size=32, patch_size=8),
            "hybrid": build_model("hybrid", "micro", 10, img_size=32, patch_size=1, hybrid="micro"),
            "bit": build_model("bit", "micro", 10), "convnext": build_model("convnext", "micro", 10)}
    for name, net in nets.items():
        assert registry.of_model(net).name == name
        assert registry.of_state_dict(net.state_dict()).name == name
        assert registry.get(name).describe(net)["family"] == name
    assert not registry.get("bit").owns(nets["convnext"])  # both have .stages and .stem: no duck typing


def test_what_the_rest_of_vitlab_asks_of_a_family():
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.resnetv2 import PreActBottleneck
    from timm.models.vision_transformer import Block

    assert registry.names(transformer=True) == ("hybrid", "vit")  # resolution fixed, attention analysis
    assert registry.names(pixel_patches=True) == ("vit",)  # masked patch prediction, patch | image size
    assert registry.get("vit").prelogits_width("B") == 768 and registry.get("convnext").prelogits_width("T") is None
    assert registry.fsdp_policy()._module_classes >= {Block, PreActBottleneck, ConvNeXtBlock}
    assert registry.fsdp_policy(recompute=True)._module_classes == {Block}
    styles = [registry.plot_style(n) for n in registry.names()]
    assert len({s.colour for s in styles}) == len(styles) and registry.plot_style("convnext").label == "ConvNeXt"
    assert registry.plot_style("deit").colour == "tab:gray"  # an old run of a family no longer installed


def test_bench_builds_a_convnext_timm_twin_without_img_size():
    from vitlab.bench.worker import _timm_model

    net = _timm_model({"key": "c", "timm": {"name": "convnext_atto"}}, {"family": "convnext", "num_classes": 3,
                                                                          "img_size": 32})
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_convnext_is_one_file_and_no_family_switch_is_left_outside_models():
    """Issue 12: a family is one module of vitlab.models; nothing else tests a family's name."""
    for py in SRC.rglob("*.py"):
        if MODELS in py.parents:
            continue
        text = py.read_text()
        assert "convnext" not in text.lower(), py
        assert not SWITCH.search(text), (py, SWITCH.search(text).group(0))
    assert [p.name for p in MODELS.glob("*.py") if "convnext" in _code_words(p)] == ["convnext.py"]


def _code_words(py: Path) -> str:
    """Names and non-docstring strings of a module, lower-cased: what its code says, not its prose."""
    tree = ast.parse(py.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = [n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else str(n.value)
             for n in ast.walk(tree) if isinstance(n, (ast.Name, ast.Attribute))
             or (isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs)]
    return " ".join(words).lower()


def test_convnext_trains_on_digits_through_the_cli(main_cli, tmp_path):
    """The command line (vitlab.train's main, in-process) trains the new family end to end."""
    from vitlab.train import main

    code, out, err = main_cli(
        main, "model=convnext_micro", "data=digits", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "data.batch_size=32", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, (out + err)[-3000:]
    assert "test/acc" in out
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("last.ckpt")
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["model"]["family"] == "convnext" and hp["model"]["name"] == "convnext_micro"
