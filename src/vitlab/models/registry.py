"""The registry of model families: one :class:`Family` record per family, found by its name (``model.family``).

A family is one module of this package (``vit.py``, ``bit.py``, ``hybrid.py``, ``convnext.py``, ...) that calls
:func:`register` when imported; the registry imports every module of the package on its first lookup. Code
outside ``vitlab.models`` asks the registry what it needs to know about a network (is it a transformer? which
block does FSDP wrap? which colour in the figures?) instead of testing ``family == "vit"``, so a new family is
one Python file plus its ``conf/model/*.yaml``, as in timm (one file per architecture) and big_vision (a model
found by name).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hydra.utils import get_class
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from vitlab.errors import ModelConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn




def choice(name: str, value: Any, choices) -> Any:
    """``value`` if it is one of ``choices``, else the error every model key uses (key, value, valid choices)."""
    if value not in choices:
        raise ModelConfigError(f"model.{name}={value!r} is not one of {sorted(choices)}")
    return value


@dataclass(frozen=True)
class CheckpointFormat:
    """An official checkpoint layout a family reads (e.g. vit_jax's ``.npz``), read through timm's own loader.

    ``read(path, model, keep_head, report, pos_embed_resize)`` returns the state dict to load; it checks the
    file's architecture against the model (:func:`vitlab.models.checkpoints.arch_mismatch`) first.
    """

    name: str
    #: does an ``.npz`` with these member names hold this layout?
    detect: Callable[[list[str]], bool]
    read: Callable[..., dict[str, torch.Tensor]]
    #: taken for an ``.npz`` no other format claims (its reader then names the keys that are missing)
    fallback: bool = False


class PlotStyle(NamedTuple):
    colour: str
    marker: str
    linestyle: str
    label: str


def _never(_: Any) -> bool:
    return False


def _no_prelogits(_: str) -> int | None:
    return None


@dataclass(frozen=True)
class Family:
    """Everything vitlab needs to know about one model family; the family's module is its only author."""

    name: str
    #: the name people use in figures and messages ("ViT", "BiT ResNet")
    label: str
    #: ``build(variant=, num_classes=, **model config)`` -> the network; unknown keys are ignored
    build: Callable[..., nn.Module]
    #: the shape table: variant name -> shape record
    variants: Mapping[str, Any]
    #: is this built network one of ours? (an ``isinstance`` test on timm's class, never duck typing)
    owns: Callable[[nn.Module], bool]
    #: the shape facts a checkpoint must agree with, ``{"family": name, ...}``
    describe: Callable[[nn.Module], dict[str, Any]]
    #: is this state dict (timm key names) one of ours? Lets a mismatch name both families before any key list
    owns_state_dict: Callable[[Mapping[str, Any]], bool] = _never
    #: tokens + self-attention: built for one resolution (patch grid, position embeddings), attention to inspect
    transformer: bool = False
    #: ``model.patch_size`` cuts the image itself into tokens (not a CNN feature map): masked patch prediction
    pixel_patches: bool = False
    #: dotted path of the block class FSDP wraps as one unit (and recomputes, for a transformer)
    fsdp_block: str | None = None
    #: the pretraining pre-logits width of a variant (paper §3.1), None when the family has none
    prelogits_width: Callable[[str], int | None] = _no_prelogits
    #: official checkpoint layouts this family reads besides timm state dicts
    formats: tuple[CheckpointFormat, ...] = ()
    #: (colour, marker, line style) in the report's figures
    style: tuple[str, str, str] = ("tab:gray", "D", "-")
    #: does timm's own builder of this family take ``img_size`` (the bench's timm twin)?
    timm_takes_img_size: bool = False

    @property
    def plot_style(self) -> PlotStyle:
        return PlotStyle(*self.style, self.label)


_FAMILIES: dict[str, Family] = {}
_discovered = False


def register(family: Family) -> Family:
    """Add ``family`` under ``family.name`` (called at import by the family's module)."""
    old = _FAMILIES.get(family.name)
    if old is not None and old.build.__module__ != family.build.__module__:
        raise ValueError(f"model family {family.name!r} is registered twice ({old.build.__module__}, "
                         f"{family.build.__module__}): give one of them another name")
    _FAMILIES[family.name] = family
    return family


def _discover() -> None:
    """Import every module of this package (``vitlab.models``, by its folder): a family module registers itself."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    _discovered = True


def names(**facts: Any) -> tuple[str, ...]:
    """The registered family names, sorted; ``names(transformer=True)`` keeps those with these facts."""
    _discover()
    return tuple(sorted(n for n, f in _FAMILIES.items() if all(getattr(f, k) == v for k, v in facts.items())))


def get(name: Any) -> Family:
    """The family called ``name``; an unknown name fails listing the registered ones."""
    _discover()
    if name not in _FAMILIES:
        raise ModelConfigError(
            f"model.family={name!r} is not one of {list(names())}: a family is a module of vitlab.models that "
            "registers itself (vitlab.models.registry.register), as src/vitlab/models/bit.py does"
        )
    return _FAMILIES[name]


def families() -> tuple[Family, ...]:
    return tuple(get(n) for n in names())


def of_model(model: nn.Module) -> Family | None:
    """The family that built ``model`` (``model.net`` of a LightningModule works too), None if none did."""
    net = getattr(model, "net", model)
    return next((f for f in families() if f.owns(net)), None)


def of_state_dict(sd: Mapping[str, Any]) -> Family | None:
    """The family whose key layout ``sd`` has, None if no family recognises it."""
    return next((f for f in families() if f.owns_state_dict(sd)), None)


def checkpoint_formats() -> dict[str, CheckpointFormat]:
    """Every official checkpoint layout a registered family reads, by format name."""
    return {fmt.name: fmt for f in families() for fmt in f.formats}


def plot_style(name: Any) -> PlotStyle:
    """Colour, marker, line style and legend label of a family; grey diamonds for a name no family has."""
    _discover()
    fam = _FAMILIES.get(str(name))
    return fam.plot_style if fam is not None else PlotStyle("tab:gray", "D", "-", str(name))


def fsdp_policy(recompute: bool = False):
    """FSDP's module policy over the registered families' blocks (``conf/trainer/fsdp.yaml``).

    ``recompute=False``: one FSDP unit per block of any family. ``recompute=True``: the blocks whose activations
    are recomputed in the backward pass, the transformers' (the memory that matters for ViT-L/H).
    """
    blocks = {get_class(f.fsdp_block) for f in families() if f.fsdp_block and (f.transformer or not recompute)}
    return ModuleWrapPolicy(blocks)
