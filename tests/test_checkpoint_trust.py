"""A checkpoint is data, never instructions (issue #11, item 1).

One tiny real checkpoint is trained once; for every section of its stored config a Hydra ``_target_`` gadget
is planted (``pathlib.Path.write_text`` of a sentinel file) and the file is re-saved with ``torch.save``. Every
task that reads a checkpoint (evaluate, analyze, fewshot, vtab, resume) must refuse it with an error that names
the key, and the sentinel must never be written. Then: the one precedence rule of ``vitlab.runs.read_run``
(command line > checkpoint > conf defaults), and the data config rebuilt by name.
"""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg
from reliability_utils import TINY
from vitlab.errors import ConfigError

#: where each gadget is planted: (path of the node in the checkpoint) -> the key the error must name
PLANTS = {
    "data": ("vitlab_config", "data"),  # the whole section replaced: what the old evaluate instantiated
    "model": ("vitlab_config", "model"),
    "optim": ("vitlab_config", "optim"),
    "module": ("vitlab_config", "module"),
    "callbacks": ("vitlab_config", "callbacks", "model_checkpoint"),  # one level deeper
    "logger": ("vitlab_config", "logger"),
    "trainer": ("vitlab_config", "trainer"),
    "hyper_parameters": ("hyper_parameters", "model"),  # what Lightning hands to the module's constructor
}
TASKS = ("evaluate", "analyze", "fewshot", "vtab", "resume")


def gadget(sentinel: Path) -> dict:
    """``Path(sentinel).write_text("pwned")`` when handed to ``hydra.utils.instantiate``."""
    return {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(sentinel)]},
            "data": "pwned"}


class _WritesOnUnpickle:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return Path.write_text, (Path(self.path), "pwned")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real vit_micro checkpoint on digits (2 steps at 16 px), shared by every test here."""
    from vitlab.train import train

    out = tmp_path_factory.mktemp("trust_run")
    try:
        train(compose_cfg("train", ["model=vit_micro", "data=digits", *TINY, "trainer.max_epochs=1",
                                    "trainer.limit_train_batches=2"], out))
    finally:
        GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def clean(trained) -> dict:
    return torch.load(trained, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def poisoned(clean, tmp_path_factory):
    """section -> (poisoned checkpoint, sentinel file, key path the error must name); written once per section."""
    root = tmp_path_factory.mktemp("poisoned")
    cache: dict[str, tuple[Path, Path, str]] = {}

    def make(section: str) -> tuple[Path, Path, str]:
        if section not in cache:
            ckpt = copy.deepcopy(clean)
            sentinel = root / f"pwned_{section}.txt"
            *parents, leaf = PLANTS[section]
            node = ckpt
            for p in parents:
                node = node[p]
            if section == "data" or not isinstance(node.get(leaf), dict):
                node[leaf] = gadget(sentinel)
            else:
                node[leaf].update(gadget(sentinel))
            path = root / f"{section}.ckpt"
            torch.save(ckpt, path)
            cache[section] = (path, sentinel, ".".join(PLANTS[section]) + "._target_")
        return cache[section]

    return make


#: ``python -m vitlab.<task> ckpt_path=<ckpt> <these>``
TASK_ARGS = {
    "evaluate": ("evaluate", []),
    "analyze": ("analyze", ["num_images=4", "rollout_images=1"]),
    "fewshot": ("fewshot", ["data=digits", "protocol.shots=[1]", "protocol.seeds=1"]),
    "vtab": ("vtab", ["data.task=dtd", "vtab.lr_grid=[0.01]", "vtab.steps=1"]),
    "resume": ("train", ["model=vit_micro", "data=digits", *TINY]),  # train with ckpt_path=<file> resumes from it
}


def compose_task(task: str, ckpt: Path, out: Path):
    config, args = TASK_ARGS[task]
    try:
        return compose_cfg(config, [f"ckpt_path={ckpt}", *args], out)
    finally:
        GlobalHydra.instance().clear()


def run_task(task: str, cfg) -> dict:
    """The task's entry point, in-process, on a config composed as the CLI composes it."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    if task == "evaluate":
        from vitlab.evaluate import evaluate

        return evaluate(cfg)
    if task == "analyze":
        from vitlab.analyze import analyze

        return analyze(cfg)
    if task == "fewshot":
        from vitlab.runs.probe import probe

        return probe(cfg)
    if task == "vtab":
        from vitlab.vtab import run_task as vtab_task

        return vtab_task(cfg)
    from vitlab.train import train

    return train(cfg)


@pytest.fixture(scope="module")
def task_cfg(tmp_path_factory):
    """task -> a function ckpt -> that task's config: composed once per task (Hydra's compose costs ~0.3 s),
    then only ``ckpt_path`` differs, as it would on the command line."""
    cache = {}

    def make(task: str, ckpt: Path):
        if task not in cache:
            cache[task] = compose_task(task, ckpt, tmp_path_factory.mktemp(task))
        cfg = copy.deepcopy(cache[task])
        cfg.ckpt_path = str(ckpt)
        return cfg

    return make


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("section", list(PLANTS))
def test_a_planted_target_runs_nothing_and_the_error_names_it(section, task, poisoned, task_cfg):
    ckpt, sentinel, key = poisoned(section)
    with pytest.raises(ConfigError, match=re.escape(key) + " = .*is not allowed"):
        run_task(task, task_cfg(task, ckpt))
    assert not sentinel.exists(), f"{task} ran code planted in {key}"


@pytest.mark.parametrize("task", ("evaluate", "analyze"))
def test_a_planted_pickle_loader_runs_nothing(task, clean, tmp_path):
    """``torch.load(..., weights_only=False)`` named by the stored data config would unpickle anything."""
    sentinel, payload = tmp_path / "pwned.txt", tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_WritesOnUnpickle(str(sentinel))))
    ckpt = copy.deepcopy(clean)
    ckpt["vitlab_config"]["data"] = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(ConfigError, match=r"vitlab_config\.data\._target_ = 'torch.load' is not allowed"):
        run_task(task, compose_task(task, tmp_path / "evil.ckpt", tmp_path / "out"))
    assert not sentinel.exists()


def test_lightning_instantiator_and_interpolations_are_refused(clean, tmp_path):
    from vitlab.runs import read_run

    ckpt = copy.deepcopy(clean)
    ckpt["hyper_parameters"]["_instantiator"] = "pathlib.Path.write_text"
    torch.save(ckpt, tmp_path / "a.ckpt")
    with pytest.raises(ConfigError, match=r"hyper_parameters\._instantiator = .* is not allowed"):
        read_run(tmp_path / "a.ckpt")
    ckpt = copy.deepcopy(clean)
    ckpt["vitlab_config"]["data"]["root"] = "${oc.env:WANDB_API_KEY}"  # would be evaluated when resolved
    torch.save(ckpt, tmp_path / "b.ckpt")
    with pytest.raises(ConfigError, match=r"vitlab_config\.data\.root = .* is an OmegaConf interpolation"):
        read_run(tmp_path / "b.ckpt")


def test_new_checkpoints_name_no_code_and_store_their_objective(clean):
    from vitlab.runs import CODE_KEYS, check_checkpoint

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                yield from keys(v)

    assert not set(keys(clean["vitlab_config"])) & set(CODE_KEYS)
    assert clean["vitlab_objective"] == "classification"
    check_checkpoint(clean, "fresh.ckpt")


def _compose_evaluate(trained: Path, tmp_path: Path, *overrides: str):
    try:
        return compose_cfg("evaluate", [f"ckpt_path={trained}", *overrides], tmp_path / "ev")
    finally:
        GlobalHydra.instance().clear()


def test_read_run_precedence_command_line_then_checkpoint_then_defaults(trained, tmp_path):
    """The checkpoint was trained with data.img_size=16, eval_batch_size=200, train_size=192 (conf: 32, 256, null)."""
    from vitlab.runs import read_run

    run = read_run(trained, _compose_evaluate(trained, tmp_path))
    assert run.data._target_ == "vitlab.data.digits.DigitsDataModule"  # from conf/data/digits.yaml, not the file
    assert (run.data.img_size, run.data.eval_batch_size, run.data.train_size) == (16, 200, 192)  # ckpt > defaults
    run = read_run(trained, _compose_evaluate(trained, tmp_path, "+data.eval_batch_size=7"))
    assert (run.data.img_size, run.data.eval_batch_size) == (16, 7)  # command line > ckpt
    run = read_run(trained, _compose_evaluate(trained, tmp_path, "data=digits", "data.batch_size=5"))
    assert (run.data.img_size, run.data.batch_size, run.data.eval_batch_size) == (16, 5, 200)
    run = read_run(trained, _compose_evaluate(trained, tmp_path, "data=digits", "data.img_size=32"))
    assert run.data.img_size == run.data.eval_img_size == 32  # set on the command line, even to the default
    run = read_run(trained, _compose_evaluate(trained, tmp_path, "data=shapes"))
    assert (run.data.name, run.data.img_size, run.data.train_size) == ("shapes", 32, 10000)  # another dataset
    assert run.objective == "classification" and run.model["name"] == "vit_micro"


def test_unknown_stored_data_name_lists_the_valid_ones(clean, tmp_path):
    from vitlab.runs import read_run

    ckpt = copy.deepcopy(clean)
    ckpt["vitlab_config"]["data"]["name"] = "mnist"
    torch.save(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match=r"vitlab_config\.data\.name='mnist' is not a vitlab data config; valid "
                                          r"names: \[.*'digits'.*'shapes'.*\]\. Choose .* data=<name>"):
        read_run(tmp_path / "x.ckpt")
    run = read_run(tmp_path / "x.ckpt", _compose_evaluate(tmp_path / "x.ckpt", tmp_path, "data=digits"))
    assert run.data.name == "digits"  # naming the dataset on the command line is the way out


def test_stored_names_map_to_vitlab_data_configs():
    from vitlab.runs import _data_group, data_groups

    for name in data_groups():  # conf/data/*.yaml; their bases (conf/data/base/) are no dataset
        assert _data_group({"name": name}, "x") == name
    assert "common" not in data_groups() and "base/common" not in data_groups()
    assert _data_group({"name": "vtab_dtd", "task": "dtd"}, "x") == "vtab"  # name: vtab_${.task}
    with pytest.raises(ConfigError, match="not a vitlab data config"):
        _data_group({"name": "vtab_dtd", "task": "svhn"}, "x")


@pytest.mark.parametrize("target", ["vitlab.data.digits.DigitsDataModule", "vitlab.callbacks.compute.ComputeTracker",
                                    "vitlab.analysis.flops.ComputeTracker"])
def test_a_stored_target_is_refused_even_when_it_names_vitlab_code(clean, tmp_path, target):
    """No compatibility path for checkpoints that stored vitlab's own ``_target_``s (or a moved class's old path):
    vitlab was never released, and a checkpoint names no code at all."""
    from vitlab.runs import check_checkpoint, read_run

    with pytest.raises(ConfigError, match=r"vitlab_config\.callbacks\.x\._target_ = .* is not allowed"):
        check_checkpoint({"vitlab_config": {"callbacks": {"x": {"_target_": target}}}}, "old.ckpt")
    ckpt = copy.deepcopy(clean)
    ckpt["vitlab_config"]["data"]["_target_"] = target
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match=r"vitlab_config\.data\._target_ = .* is not allowed"):
        read_run(tmp_path / "old.ckpt")


def test_a_stored_compile_setting_is_dropped(clean, tmp_path):
    """How to run is never taken from a file: a stored ``model.compile`` (torch.compile kwargs) is dropped."""
    from vitlab.runs import read_run

    ckpt = copy.deepcopy(clean)
    ckpt["hyper_parameters"]["model"]["compile"] = {"backend": "my_backend"}
    torch.save(ckpt, tmp_path / "c.ckpt")
    run = read_run(tmp_path / "c.ckpt", _compose_evaluate(tmp_path / "c.ckpt", tmp_path))
    assert "compile" not in run.hparams["model"]
    module = run.build_module()
    assert torch.equal(module.state_dict()["net.pos_embed"], clean["state_dict"]["net.pos_embed"])


def test_installed_hydra_blocks_dangerous_targets():
    """pyproject/constraints pin hydra-core>=1.3.7: the first release whose instantiate blocklist a config cannot
    switch off (defence in depth: vitlab itself never instantiates what a file names)."""
    import importlib.metadata

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from packaging.version import Version

    assert Version(importlib.metadata.version("hydra-core")) >= Version("1.3.7")
    with pytest.raises(InstantiationException, match="blocklisted"):
        instantiate({"_target_": "os.system", "_args_": ["true"]})


def test_read_run_called_from_python_takes_what_differs_from_the_defaults(trained, monkeypatch):
    """Without Hydra's override list (a notebook, a script), the keys of ``cfg.data`` that differ from
    ``conf/data/<name>.yaml`` are the caller's choices; the rest comes from the checkpoint."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from vitlab.runs import data_groups, read_run

    data = OmegaConf.load(data_groups()["digits"])
    data.batch_size = 5
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    run = read_run(trained, OmegaConf.create({"data": data}))
    assert (run.data.batch_size, run.data.img_size, run.data.eval_img_size, run.data.train_size) == (5, 16, 16, 192)
    assert read_run(trained).data.eval_batch_size == 200  # no cfg at all: the checkpoint's values


def test_read_run_precedence_a_key_the_checkpoint_lacks_takes_the_config_default(clean, tmp_path):
    """The last level of the rule: a checkpoint written before a data key existed (here: no eval_batch_size, no
    img_size) gets ``conf/data/<name>.yaml``'s value; the keys it does store still win over the defaults."""
    from omegaconf import OmegaConf

    from vitlab.runs import data_groups, read_run

    ckpt = copy.deepcopy(clean)
    del ckpt["vitlab_config"]["data"]["eval_batch_size"], ckpt["vitlab_config"]["data"]["img_size"]
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    conf = OmegaConf.load(data_groups()["digits"])
    run = read_run(path)
    assert run.data.get("eval_batch_size") == conf.get("eval_batch_size") != 200  # the default, not the old 200
    assert run.data.img_size == conf.img_size and run.data.train_size == 192  # default / stored


def test_vtab_model_precedence_command_line_then_checkpoint_then_defaults(clean, tmp_path):
    """vtab fine-tunes the checkpoint's model: its stored keys beat conf/model's, a ``model.<key>=`` given on the
    command line beats the checkpoint's (it used to be overwritten by it), ``model=<name>`` replaces it."""
    from vitlab.vtab import task_cfg

    ckpt = copy.deepcopy(clean)
    ckpt["hyper_parameters"]["model"].update(pos_drop_rate=0.05, drop_path_rate=0.1)  # conf/model: 0.0, 0.0
    path = tmp_path / "stored.ckpt"
    torch.save(ckpt, path)
    try:
        run = task_cfg(compose_cfg("vtab", [f"ckpt_path={path}", "data.task=dtd", "model.drop_path_rate=0.25"],
                                   tmp_path / "a"))
        assert run.model.pos_drop_rate == 0.05  # checkpoint > conf defaults
        assert run.model.drop_path_rate == 0.25  # command line > checkpoint
        assert run.model.name == "vit_micro" and run.model.pretrained == str(path)
        run = task_cfg(compose_cfg("vtab", [f"ckpt_path={path}", "data.task=dtd", "model=vit_ti16"], tmp_path / "b"))
        assert (run.model.name, run.model.pos_drop_rate) == ("vit_ti16", 0.0)  # another model: conf/model's values
    finally:
        GlobalHydra.instance().clear()


# ---- sizes, shapes and the run a checkpoint belongs to: clean one-line errors before anything is allocated -----
def test_absurd_stored_class_count_is_refused_before_the_network_is_built(clean, tmp_path, task_cfg):
    """``hyper_parameters.model.num_classes=3e6`` beside a 10-class head: a 2.6 GB head was allocated before
    the weights were checked. Now the network is built on the meta device first and every shape compared."""
    from vitlab.predict import load_predictor

    ckpt = copy.deepcopy(clean)
    ckpt["hyper_parameters"]["model"]["num_classes"] = 900_000  # under build_model's own cap of 1e6: a 460 MB head
    path = tmp_path / "classes.ckpt"
    torch.save(ckpt, path)
    expected = "net.head.weight weights (10, 128) vs config (900000, 128)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_task("evaluate", task_cfg("evaluate", path))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_predictor(path)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_task("fewshot", task_cfg("fewshot", path))


def test_evaluate_at_another_resolution_is_a_clear_error(trained, tmp_path):
    """A ViT trained at 16 px evaluated with data.img_size=32: named before anything is built (was an
    AssertionError deep in timm's patch embedding)."""
    cfg = _compose_evaluate(trained, tmp_path, "data=digits", "data.img_size=32")
    with pytest.raises(ConfigError, match=r"data.eval_img_size=32 but the checkpoint's vit_micro takes 16 px"):
        run_task("evaluate", cfg)


def _resume_cfg(tmp_path: Path, last: dict, *overrides: str):
    """A train config whose run directory holds ``last`` as its ``checkpoints/last.ckpt`` (resume=auto)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save(last, out / "checkpoints" / "last.ckpt")
    try:
        return compose_cfg("train", ["model=vit_micro", "data=digits", *TINY, *overrides], out)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("case", ["other_data", "bit_into_vit", "empty_state_dict", "other_resolution"])
def test_resume_refuses_a_checkpoint_of_another_run(case, clean, tmp_path):
    from vitlab.errors import ResumeError
    from vitlab.models import build_model
    from vitlab.runs.resume import resolve_resume

    ckpt, overrides = copy.deepcopy(clean), []
    if case == "other_data":
        overrides, match = ["data=shapes"], "was trained on data=digits, but this run asks for data=shapes"
    elif case == "bit_into_vit":
        ckpt["state_dict"] = {f"net.{k}": v for k, v in build_model("bit", "micro", 10).state_dict().items()}
        ckpt["vitlab_config"]["model"] = ckpt["hyper_parameters"]["model"] = {"family": "bit", "variant": "micro"}
        match = (r"does not fit this run's model=vit_micro; it holds a model.family=bit network, this run builds "
                 r"model.family=vit \(.*not in the checkpoint: net\.blocks")
    elif case == "empty_state_dict":
        ckpt, match = {"state_dict": {}}, "holds none of the network's weights"
    else:
        overrides, match = ["data.img_size=32"], r"net\.pos_embed checkpoint \(1, 5, 128\) vs model \(1, 17, 128\)"
    cfg = _resume_cfg(tmp_path, ckpt, *overrides)
    with pytest.raises(ResumeError, match=match) as e:
        resolve_resume(cfg)
    assert str(tmp_path / "run" / "checkpoints" / "last.ckpt") in str(e.value)
