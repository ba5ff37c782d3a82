"""Configs say each thing once (issue 12): data and optim options start from shared bases and state only what
differs, the DataModule constructor takes its defaults from the same base, and every option still composes to
the values users rely on (pinned below from the configs as they were before the bases existed)."""

import inspect
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from vitlab import CONF_DIR, paper

DATA = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml"))
OPTIM = sorted(p.stem for p in (Path(CONF_DIR) / "optim").glob("*.yaml"))

#: data=<x> -> (img_size, eval_img_size, batch_size, eval_batch_size, num_classes, normalization, train_pipeline,
#:              eval_pipeline, num_workers, pin_memory), resolved; docs/data.md's table and the yamls' headers
RESOLVED = {
    "cifar10": (32, 32, 128, 256, 10, "paper", "finetune", "none", 0, "auto"),
    "cifar100": (32, 32, 128, 256, 100, "paper", "finetune", "none", 0, "auto"),
    "digits": (32, 32, 64, 256, 10, "paper", "translate", "none", 0, False),
    "flowers102": (384, 384, 64, 128, 102, "paper", "finetune", "eval", "auto", "auto"),
    "folder": (224, 224, 64, 128, 3, "paper", "pretrain", "eval", "auto", "auto"),
    "imagenet": (224, 224, 256, 256, 1000, "paper", "pretrain", "eval", "auto", "auto"),
    "imagenet21k": (224, 224, 256, 256, 21843, "paper", "pretrain", "eval", "auto", "auto"),
    "pets": (384, 384, 64, 128, 37, "paper", "finetune", "eval", "auto", "auto"),
    "shapes": (32, 32, 128, 256, 10, "paper", "translate", "none", 0, False),
    "vtab": (224, 224, 64, 256, 100, "paper", "none", "none", "auto", "auto"),
}
FIELDS = ("img_size", "eval_img_size", "batch_size", "eval_batch_size", "num_classes", "normalization",
          "train_pipeline", "eval_pipeline", "num_workers", "pin_memory")

#: the key set of every data option (a key that appears or vanishes changes --cfg job, checkpoints and W&B)
_MEMORY = {"_target_", "name", "num_classes", "img_size", "eval_img_size", "batch_size", "eval_batch_size",
           "global_batch_size", "num_workers", "pin_memory", "train_size", "train_pipeline", "eval_pipeline",
           "train_crop_scale", "eval_resize", "normalization", "normalize_on_device"}
_FILES = _MEMORY | {"root", "val_fraction", "persistent_workers", "subset_seed", "crop_pct", "skip_corrupt",
                    "max_image_pixels", "max_file_bytes"}
_CIFAR = _MEMORY | {"variant", "root", "download", "download_url", "val_fraction", "subset_seed", "crop_pct"}
KEYS = {
    "cifar10": _CIFAR,
    "cifar100": _CIFAR | {"label_mode", "_label_classes"},
    "digits": _MEMORY | {"subset_seed", "split_seed", "val_fraction"},
    "shapes": _MEMORY | {"val_size", "test_size", "seed"},
    "flowers102": _FILES | {"train_split", "split_seed", "check_files"},
    "folder": _FILES | {"split_seed"},
    "imagenet": _FILES | {"val_labels", "real_labels", "split_seed", "check_files"},
    "imagenet21k": _FILES | {"split_seed", "index_cache", "cache_dir"},  # the file-index cache (issue 15)
    "pets": _FILES | {"split_seed", "check_files"},
    "vtab": (_FILES - {"val_fraction"}) | {"task", "train_split", "check_files"},
    "packed": {"_target_", "name", "root", "num_classes", "img_size", "eval_img_size", "batch_size", "eval_batch_size",
               "global_batch_size", "num_workers", "pin_memory", "persistent_workers", "train_size", "subset_seed",
               "train_pipeline", "eval_pipeline", "crop_pct", "normalization", "classes", "verify", "cache_dir",
               "timeout", "draft", "max_image_pixels", "train_crop_scale", "eval_resize",  # crop settings: the source's
               "normalize_on_device"},
    "bench": {"_target_", "name", "num_classes", "img_size", "eval_img_size", "batch_size", "eval_batch_size",
              "global_batch_size", "num_workers", "pin_memory", "train_images", "val_images", "seed", "train_pipeline",
              "eval_pipeline", "train_crop_scale", "eval_resize", "normalization"},
}
#: optim=<y>, resolved (Table 3's I21k ViT-B row for adam_pretrain, vit_jax's fine-tuning for sgd_finetune)
OPTIM_RESOLVED = {
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.1, "decay": "cosine", "grad_clip": 1.0},
    "adam_pretrain": {"name": "adam_decoupled", "lr": 1e-3, "weight_decay": 0.03, "warmup": 10000, "decay": "linear",
                      "grad_clip": None},
    "sgd_finetune": {"name": "sgd", "lr": 0.03, "weight_decay": 0.0, "warmup": 500, "decay": "cosine", "grad_clip": 1.0},
}
OPTIM_SHARED = {"betas": [0.9, 0.999], "eps": 1e-8, "momentum": 0.9, "end_lr_factor": 0.0, "fused": False,
                "no_decay_on_norm_and_bias": True, "decay_at": None,
                "decay_factor": paper.BIT_HYPERRULE["decay_factor"]}


def _data_overrides(name: str) -> list[str]:
    return [f"data={name}"] + (["data.root=/x", "data.num_classes=3"] if name == "folder" else [])


def test_every_data_and_optim_option_is_pinned():
    assert set(KEYS) <= set(DATA) and set(OPTIM_RESOLVED) <= set(OPTIM)  # a new option is checked by the tests below


@pytest.mark.parametrize("name", [n for n in KEYS if n != "packed"])
def test_each_data_option_composes_to_its_documented_values(compose_train, name):
    cfg = compose_train(*_data_overrides(name))
    assert set(cfg.data) == KEYS[name]
    if name in RESOLVED:
        assert tuple(cfg.data[k] for k in FIELDS) == RESOLVED[name]
    assert list(cfg.data.train_crop_scale) == [0.05, 1.0] and cfg.data.eval_resize == "square"


def test_packed_keys(compose_train):
    cfg = compose_train("data=packed", "data.root=/x")
    assert set(cfg.data) == KEYS["packed"]


@pytest.mark.parametrize("name", sorted(OPTIM_RESOLVED))
def test_each_optim_option_composes_to_its_documented_values(compose_train, name):
    o = OmegaConf.to_container(compose_train(f"optim={name}").optim, resolve=True)
    assert o == {**OPTIM_SHARED, **OPTIM_RESOLVED[name]}


@pytest.mark.parametrize("name", DATA)
def test_data_group_read_back_is_what_training_composed(compose_train, name):
    """vitlab.runs merges a checkpoint's data config onto ``compose_group("data", <name>)``: it must give what the
    training command line composed (the bases merged under the file's own keys), or a run read back would differ
    from the run trained."""
    from vitlab.config import compose_group

    cfg = compose_train(*_data_overrides(name), "data.root=/x" if name == "packed" else "seed=1")
    composed = OmegaConf.to_container(cfg.data, resolve=False)
    composed.pop("global_batch_size")  # set by conf/train.yaml, not by the data option
    mine = OmegaConf.to_container(compose_group("data", name), resolve=False)
    if name in ("folder", "packed"):
        mine["root"], composed["root"] = "/x", "/x"
        if name == "folder":
            composed["num_classes"] = mine["num_classes"]
    assert mine == composed


def _own_keys(group: str, name: str) -> dict:
    raw = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml"), resolve=False)
    return {k: v for k, v in raw.items() if k != "defaults"}


def _bases(group: str, name: str) -> dict:
    """What the file's defaults list gives it before its own keys (each base file composed by Hydra)."""
    from hydra import compose, initialize_config_dir

    raw = OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml")
    if "defaults" not in raw:
        return {}
    merged = OmegaConf.create()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for entry in raw.defaults:
            if entry != "_self_":
                merged = OmegaConf.merge(merged, compose(config_name=f"{group}/{entry[: -len('@_here_')]}"))
    return OmegaConf.to_container(merged, resolve=False)


@pytest.mark.parametrize("group", ["data", "optim"])
def test_each_option_states_only_what_differs_from_its_bases(group):
    names = DATA if group == "data" else OPTIM
    for name in names:
        if group == "data" and name == "bench":
            continue  # the benchmark's in-memory data: conf/data/bench.yaml is the bench's own (issue 7)
        bases = _bases(group, name)
        if name != "packed":  # packed takes sizes and pipelines from the pack itself; it lists no base
            assert bases, f"conf/{group}/{name}.yaml lists no base in its defaults"
        same = {k for k, v in _own_keys(group, name).items() if k in bases and bases[k] == v}
        assert not same, f"conf/{group}/{name}.yaml restates what its base already says: {sorted(same)}"


def test_datamodule_defaults_are_the_config_base():
    """Defaults are written once, in conf/data/base/: the constructor's keyword defaults are those values."""
    from vitlab.data.base import VisionDataModule

    common = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "data/base/common.yaml"), resolve=False)
    files = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "data/base/files.yaml"), resolve=False)
    sig = inspect.signature(VisionDataModule.__init__).parameters
    checked = 0
    for key, val in {**files, **common}.items():
        if key in sig and not (isinstance(val, str) and "${" in val):
            want = tuple(val) if isinstance(val, list) else val
            assert sig[key].default == want, f"VisionDataModule({key}=...) defaults to {sig[key].default!r}, conf {val!r}"
            checked += 1
    assert checked >= 12
    assert sig["eval_img_size"].default is None and common["eval_img_size"] == "${.img_size}"  # None = img_size
