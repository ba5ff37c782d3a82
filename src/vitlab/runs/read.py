"""Read a finished run back from its checkpoint: the one reader behind evaluate, analyze, fewshot, vtab, predict
and resume.

A checkpoint is a file from someone else (a colleague, the Hub, a paper's release), so it is *data*, never
instructions. Reading one must not run anything it names:

- it is loaded with ``torch.load(weights_only=True)`` (tensors and plain containers only);
- nothing in it may name code. A Hydra ``_target_`` or a Lightning ``_instantiator`` / ``_class_path``,
  at any depth of any section, is a :class:`~vitlab.config.ConfigError` that names the key path. (Checkpoints
  written before vitlab stopped storing ``_target_`` hold vitlab's *own* targets, e.g.
  ``vitlab.data.digits.DigitsDataModule``: those are accepted and dropped, since they name nothing vitlab's
  configs would not run anyway. Nothing read from a file is ever instantiated.)
- the data config is rebuilt from vitlab's own config group, by name: the stored ``data.name`` selects
  ``conf/data/<name>.yaml``, whose ``_target_`` is the only class that can be built; the stored plain values
  (str, int, float, bool, None, lists and dicts of those; no ``${...}`` interpolation) override its keys;
- the objective (the LightningModule class) comes from :data:`OBJECTIVES` by name, the network from
  ``vitlab.models.build_model`` by family and variant, the optimiser from ``vitlab.optim`` by name;
  Lightning's ``load_from_checkpoint`` (which hands stored hyper-parameters to a constructor chosen by the
  file) is not used;
- how to run is never taken from a file: a stored ``model.compile`` (``torch.compile`` kwargs) is dropped.

Precedence of every value, for every task: **command line > checkpoint > vitlab's config defaults**.
``data=<other dataset>`` on the command line replaces the checkpoint's data config altogether (its values
belong to another dataset); ``data.<key>=...`` / ``+data.<key>=...`` edits one key of it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import CONF_DIR
from vitlab.errors import ConfigError

log = logging.getLogger("vitlab.runs")

#: keys that name code to import and call: never accepted from a checkpoint
CODE_KEYS = ("_target_", "_instantiator", "_class_path")
#: Hydra's other instantiate controls: dropped from anything read back (``_args_`` may hold a nested ``_target_``,
#: which is refused like any other)
HYDRA_CONTROL_KEYS = ("_args_", "_partial_", "_convert_", "_recursive_")
#: the sections of a checkpoint that hold configuration (everything else is tensors and Lightning's counters)
CONFIG_SECTIONS = ("vitlab_config", "hyper_parameters", "datamodule_hyper_parameters")
#: objective name -> (module, class): the only LightningModules a checkpoint can be read back into
OBJECTIVES: dict[str, tuple[str, str]] = {
    "classification": ("vitlab.modules.classification", "ClassificationModule"),
    "mpp": ("vitlab.modules.mpp", "MaskedPatchPredictionModule"),
}
#: checkpoints from before ``vitlab_objective`` was stored name their objective by ``module._target_``
_LEGACY_OBJECTIVE_TARGETS = {f"{mod}.{cls}": name for name, (mod, cls) in OBJECTIVES.items()}
#: ``_target_``s that vitlab's ``conf/`` named before a class moved: an older checkpoint's ``vitlab_config`` holds them
#: (accepted and dropped like any of vitlab's own targets, never instantiated)
_MOVED_TARGETS = frozenset({
    "vitlab.analysis.flops.ComputeTracker",          # now vitlab.callbacks.compute
    "vitlab.report.wandb_dash.WandbDashboard",       # now vitlab.callbacks.wandb_summary
    "vitlab.eval.fewshot.FewShotCallback",           # now vitlab.callbacks.fewshot
    "vitlab.utils.trainer.make_trainer",             # now lightning.pytorch.Trainer (skip_nonfinite moved to callbacks)
})
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vitlab checkpoint safely (``weights_only=True``) with an error that names the file."""
    import torch

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file ({p.resolve()})")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"ckpt_path={path} is not a readable vitlab checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"ckpt_path={path} holds a {type(ckpt).__name__}, not a vitlab checkpoint (a dict)")
    return ckpt


# ---- checkpoints are data ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def vitlab_targets() -> frozenset[str]:
    """Every ``_target_`` that vitlab's own ``conf/`` names, the objective classes, and the old paths of moved classes
    (old checkpoints stored them)."""
    import yaml

    found: set[str] = set(_LEGACY_OBJECTIVE_TARGETS) | _MOVED_TARGETS

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            t = node.get("_target_")
            if isinstance(t, str):
                found.add(t)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in Path(CONF_DIR).rglob("*.yaml"):
        try:
            walk(yaml.safe_load(f.read_text()))
        except yaml.YAMLError:  # pragma: no cover - conf/ is tested to parse
            continue
    return frozenset(found)


def _refuse(path: Any, key: str, why: str) -> ConfigError:
    return ConfigError(
        f"checkpoint {path}: {key} {why}; checkpoints are data, and vitlab never runs code named in one. "
        "Rebuild the run from vitlab's own configs (python -m vitlab.evaluate ckpt_path=<ckpt> data=<name>), "
        "or re-save the checkpoint without that key."
    )


def check_checkpoint(ckpt: dict[str, Any], path: Any) -> None:
    """Refuse a checkpoint that names code anywhere, or whose config sections hold anything but plain values.

    Config sections (:data:`CONFIG_SECTIONS`) must be plain (no tensors, no ``${...}`` interpolation); every
    other entry (weights, optimiser and loop state, callback state) may hold tensors but no code key either.
    """
    for section, node in ckpt.items():
        if section in CODE_KEYS:
            raise _refuse(path, section, "is not allowed (it names code to import and call)")
        strict = section in CONFIG_SECTIONS
        _check_node(node, str(section), path, legacy_ok=section == "vitlab_config", strict=strict)


def _check_node(node: Any, where: str, path: Any, legacy_ok: bool, strict: bool) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}"
            if strict and not isinstance(k, str):
                raise _refuse(path, key, f"has a {type(k).__name__} key; config keys are strings")
            if k in CODE_KEYS:
                if not (k == "_target_" and legacy_ok and isinstance(v, str) and v in vitlab_targets()):
                    raise _refuse(path, key, f"= {v!r} is not allowed (it names code to import and call)")
                continue
            _check_node(v, key, path, legacy_ok, strict)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_node(v, f"{where}[{i}]", path, legacy_ok, strict)
    elif not strict:
        return
    elif isinstance(node, str):
        if "${" in node:
            raise _refuse(path, where, f"= {node!r} is an OmegaConf interpolation (it would be evaluated)")
    elif not isinstance(node, _PLAIN_SCALARS):
        raise _refuse(path, where, f"holds a {type(node).__name__}; a stored config holds plain values only")


def strip_instructions(node: Any) -> Any:
    """A copy without Hydra's/Lightning's instruction keys (``_target_``, ``_args_``, ``_partial_``, ...)."""
    if isinstance(node, dict):
        return {k: strip_instructions(v) for k, v in node.items() if k not in CODE_KEYS + HYDRA_CONTROL_KEYS}
    if isinstance(node, (list, tuple)):
        return [strip_instructions(v) for v in node]
    return node


def checkpoint_config(cfg: DictConfig | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint stores as ``vitlab_config``: the job's resolved config (``config``, the
    :func:`~vitlab.config.job_config` of ``cfg`` when not given), secrets masked, and no ``_target_`` (readers
    rebuild everything by name from vitlab's own configs; see the module docstring)."""
    if config is None:
        from vitlab.utils.plain import job_config

        config = job_config(cfg)
    return strip_instructions(config)


# ---- the data config, by name ------------------------------------------------------------------------------
def data_groups() -> dict[str, Path]:
    """vitlab's data configs: ``conf/data/<name>.yaml``."""
    return {p.stem: p for p in sorted((Path(CONF_DIR) / "data").glob("*.yaml"))}


def _data_group(stored: dict[str, Any], path: Any) -> str:
    """The config group a stored data config came from: ``name`` is the file's stem, or its ``name`` template
    (``vtab_${.task}``) filled in with the stored values."""
    import re

    from vitlab.data.base import data_config

    name = stored.get("name")
    groups = data_groups()
    if isinstance(name, str) and name in groups:
        return name
    if isinstance(name, str):
        for stem in groups:
            template = OmegaConf.to_container(data_config(stem), resolve=False).get("name")
            if not isinstance(template, str) or "${" not in template:
                continue
            filled = re.sub(r"\$\{\.(\w+)\}", lambda m: str(stored.get(m.group(1), "\0")), template)
            if filled == name:
                return stem
    raise ConfigError(
        f"checkpoint {path}: vitlab_config.data.name={name!r} is not a vitlab data config; valid names: "
        f"{sorted(groups)}. Choose the dataset on the command line: data=<name>."
    )


def _cli_data_keys(cfg: DictConfig | None) -> list[str] | None:
    """``data.<key>`` paths set on the command line (None when not run through Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if cfg is None or not HydraConfig.initialized():
        return None
    keys = []
    for o in HydraConfig.get().overrides.task:
        o = o.lstrip("+")
        if o.startswith("data.") and "=" in o:
            keys.append(o[len("data."):].split("=", 1)[0])
    return keys


def rebuild_data_cfg(stored: dict[str, Any] | None, cfg: DictConfig | None, path: Any) -> DictConfig:
    """The data config to use: command line > checkpoint > ``conf/data/<stored name>.yaml`` (module docstring)."""
    chosen = cfg.get("data") if cfg is not None else None
    chosen_name = chosen.get("name") if isinstance(chosen, DictConfig) else None
    if chosen_name is not None and (stored is None or chosen_name != stored.get("name")):
        return chosen  # another dataset: the checkpoint's values belong to a different one
    if stored is None:
        raise ConfigError(f"checkpoint {path} stores no data config: choose one with data=<name>")
    if not isinstance(stored, dict):
        raise _refuse(path, "vitlab_config.data", f"holds a {type(stored).__name__}, not a config")
    from vitlab.data.base import data_config

    group = _data_group(stored, path)
    base = data_config(group)  # conf/data/<group>.yaml with its bases (conf/data/base/) merged in
    # a parent gives ${paths.data_dir} & co. their values (unresolved copy: resolved once, below)
    parent = OmegaConf.create({} if cfg is None else {k: OmegaConf.to_container(v, resolve=False)
                                                      if OmegaConf.is_config(v) else v
                                                      for k, v in cfg.items() if k not in ("data", "hydra")})
    with open_dict(parent):
        parent.data = base
        defaults = OmegaConf.create(OmegaConf.to_container(parent, resolve=False)).data  # conf values, in context
        values = strip_instructions(stored)
        parent.data = OmegaConf.merge(base, values)
        # A stored config is resolved (eval_img_size: 16), its conf file links keys (eval_img_size: ${.img_size}).
        # Where the stored value is what the link gives, keep the link, so data.img_size=... moves both, as in
        # training. The link is vitlab's own config text, never the file's.
        for k, v in OmegaConf.to_container(base, resolve=False).items():
            if isinstance(v, str) and "${" in v and k in values:
                parent.data[k] = v
                try:
                    linked = OmegaConf.select(parent, f"data.{k}", throw_on_resolution_failure=True) == values[k]
                except Exception:  # noqa: BLE001 - e.g. a folder that is not on this machine: keep the value
                    linked = False
                if not linked:
                    parent.data[k] = values[k]
    if chosen is not None:
        keys = _cli_data_keys(cfg)
        if keys is None:  # called from Python: what differs from the config's defaults was chosen
            keys = [k for k in chosen if _value(chosen, k) != _value(defaults, k)]
        for key in keys:
            OmegaConf.update(parent.data, key, OmegaConf.select(chosen, key), merge=False, force_add=True)
    return OmegaConf.create(OmegaConf.to_container(parent.data, resolve=True))


def _value(node: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(node, key, throw_on_resolution_failure=True, throw_on_missing=True)
    except Exception:  # noqa: BLE001 - unresolvable here (e.g. a folder root that is not given): not comparable
        return "\0unresolved"


# ---- the run -----------------------------------------------------------------------------------------------
def objective_class(name: str):
    """The LightningModule class of an objective, from the fixed table :data:`OBJECTIVES`."""
    import importlib

    mod, cls = OBJECTIVES[name]
    return getattr(importlib.import_module(mod), cls)


@dataclass
class Run:
    """What a checkpoint says about its run, checked: plain configs, the objective's class, the tensors."""

    path: str
    checkpoint: dict[str, Any] = field(repr=False)
    config: dict[str, Any]                 # vitlab_config without instruction keys ({} for foreign checkpoints)
    model: dict[str, Any]                  # the model config the network was built with
    objective: str                         # key of OBJECTIVES
    hparams: dict[str, Any] | None         # constructor kwargs of the objective's class
    data: DictConfig | None                # rebuilt data config (None when the task brings its own)

    @property
    def family(self) -> str | None:
        return self.model.get("family")

    @property
    def module_cls(self):
        return objective_class(self.objective)

    def build_module(self):
        """The LightningModule with the checkpoint's weights: the class from OBJECTIVES, built from plain
        hyper-parameters, then ``load_state_dict(strict=True)``."""
        sd = self.checkpoint.get("state_dict")
        if self.hparams is None or not isinstance(sd, dict):
            raise ConfigError(f"ckpt_path={self.path} is not a vitlab training checkpoint (no hyper_parameters / "
                              "state_dict); pass a .ckpt written by vitlab.train")
        module = self.module_cls(**self.hparams)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"ckpt_path={self.path}: its weights do not fit the {self.objective} model its "
                              f"hyper_parameters describe ({str(e).splitlines()[0]})") from e
        return module


def _objective(ckpt: dict[str, Any], config: dict[str, Any], path: Any) -> str:
    name = ckpt.get("vitlab_objective")
    if name is None:  # written before vitlab_objective existed: module._target_ (checked to be vitlab's own)
        target = (config.get("module") or {}).get("_target_") if isinstance(config.get("module"), dict) else None
        name = _LEGACY_OBJECTIVE_TARGETS.get(target, "classification")
    if name not in OBJECTIVES:
        raise ConfigError(f"checkpoint {path}: vitlab_objective={name!r} is not one of {sorted(OBJECTIVES)}")
    return name


def _hparams(ckpt: dict[str, Any], objective: str, model: dict[str, Any], path: Any) -> dict[str, Any] | None:
    hp = ckpt.get("hyper_parameters")
    if hp is None:
        return None
    if not isinstance(hp, dict):
        raise _refuse(path, "hyper_parameters", f"holds a {type(hp).__name__}, not a dict")
    accepted = set(inspect.signature(objective_class(objective).__init__).parameters) - {"self"}
    unknown = sorted(set(hp) - accepted)
    if unknown:
        raise ConfigError(f"checkpoint {path}: hyper_parameters.{unknown[0]} is not a parameter of the "
                          f"{objective} objective (it takes {sorted(accepted)})")
    return {**hp, "model": model}


def read_run(ckpt_path: str | Path, cfg: DictConfig | None = None, *, with_data: bool = True,
             families: tuple[str, ...] | None = None, require_model: bool = True) -> Run:
    """Read a vitlab checkpoint as data (module docstring): checked configs, objective, rebuilt data config.

    ``cfg`` is the task's composed config: its ``data`` (command line) takes precedence over the checkpoint's.
    ``with_data=False`` for tasks that bring their own dataset (fewshot, vtab). ``families`` restricts which
    model families the calling task accepts. ``require_model=False`` accepts a plain PyTorch state dict
    (``run.model == {}``; the task then needs ``model=`` on the command line).
    """
    ckpt = load_checkpoint(ckpt_path)
    check_checkpoint(ckpt, ckpt_path)
    raw = ckpt.get("vitlab_config") or {}
    if not isinstance(raw, dict):
        raise _refuse(ckpt_path, "vitlab_config", f"holds a {type(raw).__name__}, not a config")
    objective = _objective(ckpt, raw, ckpt_path)
    config = strip_instructions(raw)
    hp_model = (ckpt.get("hyper_parameters") or {}).get("model")
    model = hp_model if isinstance(hp_model, dict) else config.get("model")
    if not isinstance(model, dict) or not model:
        if require_model:
            raise ConfigError(f"ckpt_path={ckpt_path} stores no model config: is it a vitlab checkpoint?")
        model = {}
    model = {k: v for k, v in model.items() if k != "compile"}  # how to run is the user's choice, not the file's
    family = model.get("family")
    if families is not None and family not in (None, *families):
        raise ConfigError(f"ckpt_path={ckpt_path} holds a {family!r} model; this task takes model.family in "
                          f"{list(families)}")
    data = rebuild_data_cfg(config.get("data"), cfg, ckpt_path) if with_data else None
    return Run(path=str(ckpt_path), checkpoint=ckpt, config=config, model=model, objective=objective,
               hparams=_hparams(ckpt, objective, model, ckpt_path), data=data)


def load_run(cfg: DictConfig, families: tuple[str, ...] | None = None):
    """``ckpt_path=`` of an inspecting task (evaluate, analyze) -> (run, module with its weights, DataModule).

    The DataModule's class is the one of ``conf/data/<name>.yaml`` (:func:`rebuild_data_cfg`).
    """
    import lightning as L
    from hydra.utils import instantiate

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'val']")
    run = read_run(cfg.ckpt_path, cfg, families=families)
    L.seed_everything(cfg.seed, workers=True)
    module = run.build_module()
    return run, module, instantiate(run.data, _convert_="all")
