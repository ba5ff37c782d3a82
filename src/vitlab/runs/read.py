"""The vitlab checkpoint format, read back: the one reader behind evaluate, analyze, fewshot, vtab, predict and
resume. Each task loads the file once (:func:`read_run`) and gets its objects from the :class:`Run`:
``build_module()`` (the LightningModule) or ``build_net()`` (the network alone), both after every stored size has
been compared with the weights' shapes on the meta device (:func:`check_shapes`), so nothing the file declares
is allocated before it is checked. The bytes are read by ``vitlab.models.checkpoints.load_torch_file`` (zip
records checked before anything expands, ``weights_only=True``, memory-mapped), which fine-tuning
(``model.pretrained=<.ckpt>``) shares.

A checkpoint is a file from someone else (a colleague, the Hub, a paper's release), so it is *data*, never
instructions. Reading one must not run anything it names:

- it is loaded with ``torch.load(weights_only=True)`` (tensors and plain containers only);
- nothing in it may name code. A Hydra ``_target_`` or a Lightning ``_instantiator`` / ``_class_path``,
  at any depth of any section, even one naming vitlab's own class, is a :class:`~vitlab.errors.ConfigError`
  that names the key path. Nothing read from a file is ever instantiated.
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

import importlib
import inspect
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab import CONF_DIR
from vitlab.config import compose_group
from vitlab.errors import ConfigError
from vitlab.models import build_model, registry
from vitlab.models.checkpoints import MAX_EXPANDED_BYTES, load_torch_file

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
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vitlab checkpoint as data, with an error that names the file: a regular file only, its zip records
    checked before anything expands (``vitlab.models.checkpoints.load_torch_file``), ``weights_only=True`` and
    memory-mapped, so tensors are read only when a network takes them, after :func:`check_shapes`."""

    p = Path(str(path)).expanduser()
    if not p.is_file():  # also a FIFO or a device: never opened
        what = "not a regular file" if p.exists() else "no such checkpoint file"
        raise FileNotFoundError(f"ckpt_path={path}: {what} ({p.resolve()})")
    ckpt = load_torch_file("ckpt_path", p, MAX_EXPANDED_BYTES, error=ConfigError, kind="vitlab checkpoint")
    if not isinstance(ckpt, dict):
        raise ConfigError(f"ckpt_path={path} holds a {type(ckpt).__name__}, not a vitlab checkpoint (a dict)")
    return ckpt


# ---- checkpoints are data ---------------------------------------------------------------------------------
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
        _check_node(node, str(section), path, strict=section in CONFIG_SECTIONS)


def _check_node(node: Any, where: str, path: Any, strict: bool) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}"
            if strict and not isinstance(k, str):
                raise _refuse(path, key, f"has a {type(k).__name__} key; config keys are strings")
            if k in CODE_KEYS:
                raise _refuse(path, key, f"= {v!r} is not allowed (it names code to import and call)")
            _check_node(v, key, path, strict)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_node(v, f"{where}[{i}]", path, strict)
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


def checkpoint_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores as ``vitlab_config``: the job's resolved config (``config``,
    :func:`~vitlab.utils.plain.job_config`: secrets masked) without ``_target_`` (readers rebuild everything by name
    from vitlab's own configs; see the module docstring)."""
    return strip_instructions(config)


# ---- the data config, by name ------------------------------------------------------------------------------
def data_groups() -> dict[str, Path]:
    """vitlab's data configs: ``conf/data/<name>.yaml``."""
    return {p.stem: p for p in sorted((Path(CONF_DIR) / "data").glob("*.yaml"))}


def _data_group(stored: dict[str, Any], path: Any) -> str:
    """The config group a stored data config came from: ``name`` is the file's stem, or its ``name`` template
    (``vtab_${.task}``, each file states its own) filled in with the stored values."""
    name = stored.get("name")
    groups = data_groups()
    if isinstance(name, str) and name in groups:
        return name
    if isinstance(name, str):
        for stem, file in groups.items():
            template = OmegaConf.to_container(OmegaConf.load(file), resolve=False).get("name")
            links = re.findall(r"\$\{\.(\w+)\}", template) if isinstance(template, str) else []
            if not links or any(k not in stored for k in links):
                continue
            if re.sub(r"\$\{\.(\w+)\}", lambda m: str(stored[m.group(1)]), template) == name:
                return stem
    raise ConfigError(
        f"checkpoint {path}: vitlab_config.data.name={name!r} is not a vitlab data config; valid names: "
        f"{sorted(groups)}. Choose the dataset on the command line: data=<name>."
    )


def _cli_data_keys(cfg: DictConfig | None) -> list[str] | None:
    """``data.<key>`` paths set on the command line (None when not run through Hydra)."""

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
    base = compose_group("data", _data_group(stored, path))  # data=<group>, composed as the command line does
    # a parent gives ${paths.data_dir} & co. their values (unresolved copy: resolved once, below)
    parent = OmegaConf.create({} if cfg is None else {k: OmegaConf.to_container(v, resolve=False)
                                                      if OmegaConf.is_config(v) else v
                                                      for k, v in cfg.items() if k not in ("data", "hydra")})
    with open_dict(parent):
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
        if keys is None:  # called from Python: what differs from the config's defaults (as written) was chosen
            written = OmegaConf.to_container(base, resolve=False)
            keys = [k for k, v in OmegaConf.to_container(chosen, resolve=False).items() if written.get(k) != v]
        for key in keys:
            OmegaConf.update(parent.data, key, OmegaConf.select(chosen, key), merge=False, force_add=True)
    return OmegaConf.create(OmegaConf.to_container(parent.data, resolve=True))


# ---- the run -----------------------------------------------------------------------------------------------
def objective_class(name: str):
    """The LightningModule class of an objective, from the fixed table :data:`OBJECTIVES`."""

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

    def weights(self) -> dict[str, Any]:
        sd = self.checkpoint.get("state_dict")
        if not isinstance(sd, dict) or not sd:
            raise ConfigError(f"ckpt_path={self.path} holds no weights (its state_dict is "
                              f"{'empty' if isinstance(sd, dict) else 'missing'}); pass a .ckpt written by vitlab.train")
        return sd

    def build_module(self):
        """The LightningModule with the checkpoint's weights: the class from OBJECTIVES, built from plain
        hyper-parameters once :func:`check_shapes` has compared them with the weights, then
        ``load_state_dict(strict=True)``."""
        if self.hparams is None:
            raise ConfigError(f"ckpt_path={self.path} is not a vitlab training checkpoint (no hyper_parameters); "
                              "pass a .ckpt written by vitlab.train")
        sd = self.weights()

        with torch.device("meta"):  # the shapes the hyper-parameters describe, without allocating them
            expected = self._build(lambda: self.module_cls(**self.hparams), "hyper_parameters")
        check_shapes(self.path, expected.state_dict(), sd, "hyper_parameters")
        module = self.module_cls(**self.hparams)
        module.load_state_dict(sd, strict=True)
        return module

    def build_net(self):
        """The network alone, in eval mode: the stored model config with the checkpoint's ``net.`` weights (EMA
        weights when the run averaged them), checked like :meth:`build_module`. A checkpoint without a head (masked
        patch prediction) gives a headless backbone. The one way every task turns a checkpoint into a network."""


        sd = {k[len("net."):]: v for k, v in self.weights().items() if k.startswith("net.")}
        cfg = {k: v for k, v in self.model.items() if k != "pretrained"}  # weights come from this file only
        if not any(k.startswith("head.") for k in sd):
            cfg["num_classes"] = 0
        with torch.device("meta"):
            expected = self._build(lambda: build_model(**cfg), "model config")
        check_shapes(self.path, expected.state_dict(), sd, "model config", prefix="net.")
        net = build_model(**cfg)
        net.load_state_dict(sd, strict=True)
        return net.eval()

    def _build(self, make, where: str):
        try:
            return make()
        except (ValueError, TypeError, RuntimeError, OverflowError) as e:  # ModelConfigError is a ValueError
            raise ConfigError(f"ckpt_path={self.path}: its stored {where} does not build a network "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def check_shapes(path: Any, expected: dict[str, Any], weights: dict[str, Any], where: str, prefix: str = "") -> None:
    """Refuse weights whose names or shapes differ from the network the stored config describes (``expected``,
    built on the meta device), listing each difference, before the network is built for real: a stored
    ``model.num_classes=3000000`` beside a 10-class head costs nothing here."""
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if not (wrong or missing or unexpected):
        return

    def lst(keys, fmt=str):
        return "; ".join(fmt(k) for k in keys[:6]) + (f"; ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if wrong:
        parts.append("shape mismatch: " + lst(wrong, lambda k: f"{prefix}{k} weights {tuple(weights[k].shape)} vs "
                                                               f"config {tuple(expected[k].shape)}"))
    if missing:
        parts.append("not in the weights: " + lst([prefix + k for k in missing]))
    if unexpected:
        parts.append("not in the network: " + lst([prefix + k for k in unexpected]))
    raise ConfigError(f"ckpt_path={path}: its weights do not fit the network its stored {where} describes ("
                      + " | ".join(parts) + "). The file was edited or is damaged: use the checkpoint as vitlab.train "
                      "wrote it.")


def _objective(ckpt: dict[str, Any], config: dict[str, Any], path: Any) -> str:
    name = ckpt.get("vitlab_objective", "classification")  # vitlab.train stores it; a plain state dict has none
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


def check_eval_size(run: Run) -> None:
    """A Transformer takes only the resolution it was trained at (its position embeddings are resized only when
    fine-tuning): refuse evaluation data of another size before anything is built."""

    size, data = run.model.get("img_size"), run.data or {}
    want = data.get("eval_img_size") or data.get("img_size")
    if size is None or want is None or run.family is None or int(want) == int(size):
        return
    if not registry.get(run.family).transformer:
        return
    raise ConfigError(
        f"data.eval_img_size={want} but the checkpoint's {run.model.get('name', run.family)} takes {size} px images "
        f"(ckpt_path={run.path}); its position embeddings fit that grid only. Evaluate at data.img_size={size}, or "
        f"fine-tune at {want} px first (python -m vitlab.train model.pretrained={run.path} data.img_size={want})."
    )


def load_run(cfg: DictConfig, families: tuple[str, ...] | None = None):
    """``ckpt_path=`` of an inspecting task (evaluate, analyze) -> (run, module with its weights, DataModule).

    The DataModule's class is the one of ``conf/data/<name>.yaml`` (:func:`rebuild_data_cfg`).
    """

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'val']")
    run = read_run(cfg.ckpt_path, cfg, families=families)
    check_eval_size(run)
    L.seed_everything(cfg.seed, workers=True)
    module = run.build_module()
    return run, module, instantiate(run.data, _convert_="all")
