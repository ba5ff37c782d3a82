"""Load pretrained weights into a vitlab model for fine-tuning (paper §3.2).

``model.pretrained=<path>`` accepts:

- a vitlab checkpoint (``.ckpt``, Lightning; the ``net.`` weights are used, EMA weights if it was trained with EMA);
- an official ViT / R50+ViT ``.npz`` from google-research/vision_transformer (``ViT-B_16.npz``, ``R50+ViT-B_16.npz``);
- a BiT ``.npz`` from google-research/big_transfer (``BiT-M-R50x1.npz``);
- a timm ``.pth`` / ``.bin`` state dict or a ``.safetensors`` file;
- ``timm:<model_name>`` (e.g. ``timm:vit_base_patch16_224.augreg_in21k``): timm downloads it; needs a network.

The official ``.npz`` layouts are read by their family's module (``vit.py``, ``bit.py``: a ``CheckpointFormat`` in
``vitlab.models.registry``) through timm's own loaders; vitlab adds what the paper's protocol asks for around them:

- the pretrained head is dropped and a zero-initialised head put in (``keep_head=True`` keeps it);
- position embeddings are resized by 2-D interpolation over the patch grid when the resolution differs, as
  vit_jax does (``scipy.ndimage.zoom(order=1)``: bilinear, corners aligned; ``model.pos_embed_resize=timm`` for
  timm's resampling);
- a report of which weights were loaded, which are new and which were dropped is logged;
- a checkpoint of another architecture (family, width, depth, heads, MLP, patch, stages) fails with the
  mismatches listed, instead of loading part of it silently; the family of a model or of a state dict is the
  registry's answer (an ``isinstance`` test, a key layout), never a guess from attribute names;
- a float tensor of another precision (float16, bfloat16, float64) is cast to the model's dtype and the casts
  are listed in the report; a tensor that is not floating point (int8 / uint8 quantised weights, bool, object
  arrays) is refused with the file, the tensor and its dtype named: quantised data is not a float checkpoint.

Nothing here executes code from a checkpoint: ``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)``
and safetensors only. Nothing is allocated before every declared size is checked against the model
(``vitlab.models.checkpoints.SizeBudget``): the ``.npy`` and safetensors headers, a torch file's zip directory,
then its memory-mapped tensors' shapes.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from vitlab.errors import PretrainedError, PretrainedMismatchError
from vitlab.models import registry
from vitlab.models.checkpoints import (
    DEFAULT_POS_EMBED_RESIZE,
    POS_EMBED_RESIZE,
    LoadReport,
    SizeBudget,
    arch_mismatch,
    cast_summary,
    check_declared_sizes,
    dtype_name,
    load_torch_file,
    npz_declared,
    refuse_non_float,
    resize_pos_embed,
    resized_note,
    safetensors_declared,
    state_dict_declared,
)

log = logging.getLogger("vitlab.pretrained")

HEAD_PREFIXES = ("head.",)
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """``vitlab`` | ``torch`` | ``safetensors`` | ``timm_hub`` | an official layout (``vit_npz``, ``bit_npz``: see
    ``registry.checkpoint_formats``) from the name and content."""
    s = str(path)
    if s.startswith(("timm:", "hf-hub:", "hf_hub:")):
        return "timm_hub"
    p = Path(s).expanduser()
    if p.is_dir():
        suffixes = (*TORCH_SUFFIXES, ".npz", ".safetensors")
        found = sorted(str(q.relative_to(p)) for q in [*p.glob("*"), *p.glob("checkpoints/*")]
                       if q.suffix in suffixes and q.is_file())[:5]
        raise PretrainedError(
            f"model.pretrained={s} is a directory, not a checkpoint file: give the file itself"
            + (f", e.g. model.pretrained={p / found[0]} (found there: {', '.join(found)})" if found else
               " (.ckpt / .npz / .pth / .safetensors); none was found in it")
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"model.pretrained={s}: no such file ({p.resolve()}). Give a .ckpt / .npz / .pth / .safetensors path, "
            "or timm:<model_name> to download with timm where a network exists."
        )
    with open(p, "rb") as f:
        head = f.read(16)
    if p.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{" and not head.startswith(b"PK")):
        return "safetensors"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise PretrainedError(f"model.pretrained={s} is a corrupted archive ({e})") from e
        if names and all(n.endswith(".npy") for n in names):
            return _npz_format(s, names)
        return "torch"
    if p.suffix == ".npz":
        raise PretrainedError(f"model.pretrained={s} is not a readable .npz archive (no zip header): corrupted file?")
    if p.suffix in TORCH_SUFFIXES:
        return "torch"
    raise PretrainedError(
        f"model.pretrained={s}: unknown checkpoint format (suffix {p.suffix!r}); expected one of "
        ".ckpt .pt .pth .bin (PyTorch), .npz (official ViT / BiT), .safetensors"
    )


def _npz_format(path: str, names: list[str]) -> str:
    """The registered ``.npz`` layout these member names have (``bit_npz``: ``resnet/...``); else the fallback."""
    formats = sorted(registry.checkpoint_formats().values(), key=lambda f: f.fallback)
    claimed = [f.name for f in formats if f.detect(names)] or [f.name for f in formats if f.fallback]
    if not claimed:
        raise PretrainedError(f"model.pretrained={path}: no model family reads this .npz layout "
                              f"(registered layouts: {sorted(f.name for f in formats)})")
    return claimed[0]


def _torch_state_dict(path: str, budget: SizeBudget) -> tuple[dict[str, torch.Tensor], str]:
    obj = load_torch_file("model.pretrained", path, budget.total_bytes)  # memory-mapped: shapes only, so far
    if not isinstance(obj, dict):
        raise PretrainedError(f"model.pretrained={path} holds a {type(obj).__name__}, not a state dict")
    fmt = "torch"
    if "pytorch-lightning_version" in obj or "vitlab_config" in obj:
        fmt = "vitlab"
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise PretrainedError(f"model.pretrained={path} contains no tensors")
    check_declared_sizes("model.pretrained", path, state_dict_declared(sd), budget, every_key=False)
    return sd, fmt


def _safetensors_state_dict(path: str, budget: SizeBudget) -> dict[str, torch.Tensor]:
    check_declared_sizes("model.pretrained", path, safetensors_declared(path), budget, every_key=False)
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001
        raise PretrainedError(f"model.pretrained={path} is not a readable safetensors file ({type(e).__name__}: {e})") from e


def _hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    model_name = name.split(":", 1)[1] if name.startswith("timm:") else name.replace("hf_hub:", "hf-hub:")
    try:
        return timm.create_model(model_name, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001
        raise PretrainedError(
            f"model.pretrained={name}: timm could not fetch '{model_name}' ({type(e).__name__}: {e}). "
            "Named weights need a network; on an offline machine download the file elsewhere and pass its path."
        ) from e


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """vitlab checkpoints keep the backbone under ``net.``; DDP wraps in ``module.``. Other entries are dropped."""
    dropped: list[str] = []
    for prefix in ("net.", "module.", "model."):
        if any(k.startswith(prefix) for k in sd):
            dropped += [k for k in sd if not k.startswith(prefix)]
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd, dropped


# ---------------------------------------------------------------------------------------------------------
# The common path: resize, drop the head, check, load, zero-init the new head
# ---------------------------------------------------------------------------------------------------------

def _is_head(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES)


def zero_init_head(model: nn.Module) -> list[str]:
    """Zero the final classification layer (paper §3.2: 'a zero-initialized D x K feedforward layer')."""
    last = None
    for name, m in model.named_modules():
        if name.startswith("head") and isinstance(m, (nn.Linear, nn.Conv2d)):
            last = (name, m)
    if last is None:
        return []
    name, m = last
    with torch.no_grad():
        m.weight.zero_()
        if m.bias is not None:
            m.bias.zero_()
    return [f"{name}.weight", f"{name}.bias"]


def _summarise_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    fam = registry.of_state_dict(sd)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out: dict[str, Any] = {"family": fam.name} if fam is not None else {}
    if depth:
        out["depth"] = depth
    if "cls_token" in sd:
        out["width"] = int(sd["cls_token"].shape[-1])
    elif "norm.weight" in sd:
        out["width"] = int(sd["norm.weight"].shape[0])
    if any(k.startswith("stages.0.blocks.") for k in sd):
        out["stages"] = tuple(len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")})
                              for i in range(len({k.split(".")[1] for k in sd if k.startswith("stages.")})))
    return out


def _match_dtypes(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str,
                  report: LoadReport) -> None:
    """Cast float tensors of another precision to the model's dtype in place (listed in ``report.cast``); refuse
    a tensor that is not floating point where the model's is (or the reverse), naming it."""
    casts: Counter = Counter()
    bad = []
    for k, v in sd.items():
        if k not in target or v.dtype == target[k].dtype:
            continue
        want = target[k].dtype
        if v.is_floating_point() and want.is_floating_point:
            casts[(dtype_name(v.dtype), dtype_name(want))] += 1
            sd[k] = v.to(want)
        else:
            bad.append((k, dtype_name(v.dtype), dtype_name(want)))
    refuse_non_float(source, bad)
    report.cast += cast_summary(casts)


def adapt_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, source: str, keep_head: bool,
                     report: LoadReport, pos_embed_resize: str = DEFAULT_POS_EMBED_RESIZE) -> dict[str, torch.Tensor]:
    """Fit a foreign state dict to ``model``: resize position embeddings, drop/keep the head, check every shape."""
    target = model.state_dict()
    sd = dict(sd)
    got, want = registry.of_state_dict(sd), registry.of_model(model)
    if got is not None and want is not None and got is not want:  # e.g. a ResNetV2's weights into a ConvNeXt
        arch_mismatch(source, {**_summarise_state_dict(target), "family": want.name},
                      {**_summarise_state_dict(sd), "family": got.name})
    if not keep_head:
        report.dropped += sorted(k for k in sd if _is_head(k))
        sd = {k: v for k, v in sd.items() if not _is_head(k)}
    _match_dtypes(sd, target, source, report)
    if "pos_embed" in sd and "pos_embed" in target and sd["pos_embed"].shape != target["pos_embed"].shape:
        n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        if sd["pos_embed"].shape[-1] == target["pos_embed"].shape[-1]:
            old = sd["pos_embed"]
            g = tuple(model.patch_embed.grid_size)
            sd["pos_embed"] = resize_pos_embed(old, g, n_prefix, method=pos_embed_resize)
            og = int(round(math.sqrt(old.shape[1] - n_prefix)))
            report.resized.append(resized_note(n_prefix, og, g, pos_embed_resize))
    missing = sorted(k for k in target if k not in sd and (keep_head or not _is_head(k)))
    unexpected = sorted(k for k in sd if k not in target)
    wrong = sorted(k for k in sd if k in target and sd[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        def lst(keys, fmt):
            return "; ".join(fmt(k) for k in keys[:8]) + (f"; ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if wrong:
            parts.append("shape mismatch: " + lst(wrong, lambda k: f"{k} checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"))
        if missing:
            parts.append("not in the checkpoint: " + lst(missing, str))
        if unexpected:
            parts.append("not in the model: " + lst(unexpected, str))
        hint = ""
        if keep_head and any(_is_head(k) for k in wrong + missing + unexpected):
            hint = " The head differs: fine-tune with a new head (model.pretrained_keep_head=false)."
        raise PretrainedMismatchError(
            f"model.pretrained={source} does not fit the model. Checkpoint {_summarise_state_dict(sd)} vs model "
            f"{_summarise_state_dict(target)}. " + " | ".join(parts) +
            ". Choose the model config that matches the checkpoint (depth, width, patch size, classifier)." + hint
        )
    report.loaded = sorted(sd)
    report.new = sorted(k for k in target if k not in sd)
    return sd


def load_pretrained(model: nn.Module, path: str | Path, keep_head: bool = False, verbose: bool = True,
                    pos_embed_resize: str | None = None) -> LoadReport:
    """Load ``path`` into ``model`` in place for fine-tuning; return (and log) what was loaded, new and dropped.

    ``pos_embed_resize`` (``model.pos_embed_resize``; None = the paper's ``vit_jax``) says how position
    embeddings are resized when the checkpoint's grid differs from the model's (:func:`resize_pos_embed`).
    """
    path = str(path)
    pos_embed_resize = pos_embed_resize or DEFAULT_POS_EMBED_RESIZE
    if pos_embed_resize not in POS_EMBED_RESIZE:
        raise PretrainedError(f"model.pos_embed_resize={pos_embed_resize!r} is not one of {list(POS_EMBED_RESIZE)}")
    fmt = detect_format(path)
    report = LoadReport(source=path, format=fmt)
    official = registry.checkpoint_formats().get(fmt)
    budget = SizeBudget.of(model)
    if official is not None:
        check_declared_sizes("model.pretrained", path, npz_declared(path), budget)
        sd = official.read(path, model, keep_head, report, pos_embed_resize)
    elif fmt == "safetensors":
        sd = _safetensors_state_dict(path, budget)
    elif fmt == "timm_hub":
        sd = _hub_state_dict(path)
    else:
        sd, fmt = _torch_state_dict(path, budget)
        report.format = fmt
    sd, extra = _strip_prefixes(sd)
    report.dropped += extra
    if fmt in ("vitlab", "torch", "safetensors", "timm_hub") and not sd:
        raise PretrainedError(f"model.pretrained={path} holds no backbone weights")
    sd = adapt_state_dict(sd, model, path, keep_head, report, pos_embed_resize)
    model.load_state_dict(sd, strict=False)
    if not keep_head:
        zero_init_head(model)
    if verbose:
        log.info(report.summary())
    return report
