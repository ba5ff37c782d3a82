"""Load pretrained weights into a vitlab model for fine-tuning (paper §3.2).

``model.pretrained=<path>`` accepts:

- a vitlab checkpoint (``.ckpt``, Lightning; the ``net.`` weights are used, EMA weights if it was trained with EMA);
- an official ViT / R50+ViT ``.npz`` from google-research/vision_transformer (``ViT-B_16.npz``, ``R50+ViT-B_16.npz``);
- a BiT ``.npz`` from google-research/big_transfer (``BiT-M-R50x1.npz``);
- a timm ``.pth`` / ``.bin`` state dict or a ``.safetensors`` file;
- ``timm:<model_name>`` (e.g. ``timm:vit_base_patch16_224.augreg_in21k``): timm downloads it; needs a network.

The official ``.npz`` layouts are mapped by timm's own loaders (``vision_transformer._load_weights``,
``resnetv2._load_weights``); vitlab adds what the paper's protocol asks for around them:

- the pretrained head is dropped and a zero-initialised head put in (``keep_head=True`` keeps it);
- position embeddings are resized by 2-D interpolation over the patch grid when the resolution differs, as
  vit_jax does (``scipy.ndimage.zoom(order=1)``: bilinear, corners aligned; ``model.pos_embed_resize=timm`` for
  timm's resampling);
- a report of which weights were loaded, which are new and which were dropped is logged;
- a checkpoint of another architecture (width, depth, heads, MLP, patch, stages) fails with the
  mismatches listed, instead of loading part of it silently;
- a float tensor of another precision (float16, bfloat16, float64) is cast to the model's dtype and the casts
  are listed in the report; a tensor that is not floating point (int8 / uint8 quantised weights, bool, object
  arrays) is refused with the file, the tensor and its dtype named: quantised data is not a float checkpoint.

Nothing here executes code from a checkpoint: ``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)``
and safetensors only.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.errors import PretrainedError, PretrainedMismatchError

log = logging.getLogger("vitlab.pretrained")

#: how position embeddings are resized to a new grid (``model.pos_embed_resize``). ``vit_jax`` = the paper's code:
#: ``scipy.ndimage.zoom(posemb_grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)`` (vit_jax ``checkpoint.py``),
#: bilinear with the corner positions aligned. ``timm`` = ``timm.layers.resample_abs_pos_embed`` (bilinear with
#: half-pixel centres, corners not aligned): on a 14 -> 24 grid the two differ by up to ~0.9 per entry.
POS_EMBED_RESIZE = ("vit_jax", "timm")
DEFAULT_POS_EMBED_RESIZE = "vit_jax"
HEAD_PREFIXES = ("head.",)
FORMATS = ("vitlab", "vit_npz", "bit_npz", "torch", "safetensors", "timm_hub")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class LoadReport:
    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    #: dtype casts, one entry per (from, to) pair, e.g. "78 tensors float16 -> float32"
    cast: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def short(keys: list[str], n: int = 6) -> str:
            return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "") if keys else "-"

        return (
            f"pretrained weights from {self.source} ({self.format}): {len(self.loaded)} tensors loaded; "
            f"new (initialised here): {short(self.new)}; dropped from the checkpoint: {short(self.dropped)}; "
            f"resized: {'; '.join(self.resized) or '-'}; cast: {'; '.join(self.cast) or '-'}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "loaded": len(self.loaded), "new": self.new,
                "dropped": self.dropped, "resized": self.resized, "cast": self.cast}


# ---------------------------------------------------------------------------------------------------------
# Architecture descriptions, for clear mismatch errors
# ---------------------------------------------------------------------------------------------------------

def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def _is_resnetv2(model: nn.Module) -> bool:
    return hasattr(model, "stages") and hasattr(model, "stem") and not _is_vit(model)


def _stage_depths(backbone: nn.Module) -> tuple[int, ...]:
    return tuple(len(s.blocks) for s in backbone.stages)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The shape facts a checkpoint must agree with."""
    if _is_vit(model):
        blk = model.blocks[0]
        pe = model.patch_embed
        out = {
            "family": "hybrid" if hasattr(pe, "backbone") else "vit",
            "width": int(model.embed_dim),
            "depth": len(model.blocks),
            "heads": int(blk.attn.num_heads),
            "mlp": int(blk.mlp.fc1.out_features),
            "patch": int(pe.proj.weight.shape[-1]),
            "class_token": model.cls_token is not None,
        }
        if hasattr(pe, "backbone"):
            out["stages"] = _stage_depths(pe.backbone) if hasattr(pe.backbone, "stages") else ()
        return out
    if _is_resnetv2(model):
        return {
            "family": "bit",
            "stem_width": int(model.stem.conv.weight.shape[0]),
            "stem_kernel": int(model.stem.conv.weight.shape[-1]),
            "stages": _stage_depths(model),
            "features": int(model.num_features),
        }
    raise PretrainedError(f"cannot load pretrained weights into a {type(model).__name__}: not a ViT, hybrid or ResNetV2")


def _arch_mismatch(path: str, want: dict[str, Any], got: dict[str, Any]) -> None:
    keys = [k for k in want if k in got and want[k] != got[k]]
    if want.get("family") != got.get("family"):
        keys = ["family", *[k for k in keys if k != "family"]]
    if keys:
        diffs = "; ".join(f"{k}: checkpoint {got.get(k)!r} vs model {want.get(k)!r}" for k in keys)
        raise PretrainedMismatchError(
            f"model.pretrained={path} is a different architecture than the model ({diffs}). "
            f"Checkpoint: {got}. Model: {want}. Choose the model config that matches the checkpoint "
            "(e.g. model=vit_b16 for ViT-B_16.npz) or another checkpoint."
        )


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """``vitlab`` | ``torch`` | ``vit_npz`` | ``bit_npz`` | ``safetensors`` | ``timm_hub`` from the name and content."""
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
            if any(n.startswith("resnet/") for n in names):
                return "bit_npz"
            return "vit_npz"
        return "torch"
    if p.suffix == ".npz":
        raise PretrainedError(f"model.pretrained={s} is not a readable .npz archive (no zip header): corrupted file?")
    if p.suffix in TORCH_SUFFIXES:
        return "torch"
    raise PretrainedError(
        f"model.pretrained={s}: unknown checkpoint format (suffix {p.suffix!r}); expected one of "
        ".ckpt .pt .pth .bin (PyTorch), .npz (official ViT / BiT), .safetensors"
    )


def _open_npz(path: str):
    import numpy as np

    try:
        w = np.load(path, allow_pickle=False)
        files = set(w.files)
    except Exception as e:  # noqa: BLE001 - any decode error means the file is unusable
        raise PretrainedError(f"model.pretrained={path} is not a readable .npz archive ({type(e).__name__}: {e})") from e
    return w, files


def npz_index(path: str) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """``{key: (numpy dtype, shape)}`` of every array in an ``.npz``, from the ``.npy`` headers alone.

    Nothing is decoded, so an object array (a pickle) or a wrong-shaped array is named before anything reads it.
    """
    import numpy as np

    fmt = np.lib.format
    out: dict[str, tuple[Any, tuple[int, ...]]] = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            key = name[:-4] if name.endswith(".npy") else name
            try:
                with z.open(name) as f:
                    version = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = read(f)
            except Exception as e:  # noqa: BLE001 - a broken header means the array is unusable
                raise PretrainedError(
                    f"model.pretrained={path}: array '{key}' is not a readable .npy entry ({type(e).__name__}: {e})"
                ) from e
            out[key] = (dtype, tuple(int(d) for d in shape))
    return out


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _refuse_non_float(path: str, bad: list[tuple[str, str, str]]) -> None:
    """``bad``: (tensor, its dtype, the model's dtype). Casting integers to float would load garbage that then
    trains silently, and an object array is a pickle: both are refused, naming the first tensor."""
    if not bad:
        return
    key, got, want = bad[0]
    more = f" (and {len(bad) - 1} more: {', '.join(f'{k} {d}' for k, d, _ in bad[1:5])}{', ...' if len(bad) > 5 else ''})"
    if got.startswith("an object array"):
        why = ("An object array is a pickled Python object, which vitlab never loads (np.load(allow_pickle=False)): "
               "save the weights as plain float arrays.")
    else:
        why = ("Integer weights are quantised data (they need the scales and scheme that made them), not a float "
               "checkpoint: dequantise them to float with the tool that quantised them, or use the float release "
               "of these weights.")
    raise PretrainedError(
        f"model.pretrained={path}: tensor '{key}' is {got} where the model holds {want}"
        + (more if len(bad) > 1 else "") + ". " + why
    )


def _cast_summary(casts: Counter) -> list[str]:
    return [f"{n} tensors {a} -> {b}" for (a, b), n in sorted(casts.items())]


def check_npz_dtypes(path: str, index: dict[str, tuple[Any, tuple[int, ...]]], prefix: str, model: nn.Module,
                     report: LoadReport) -> None:
    """Refuse non-float arrays under the weights' ``prefix``; list the float arrays that will be cast (timm's
    loaders copy them into the model's parameters, which casts)."""
    want = _dtype_name(next(model.parameters()).dtype)
    casts: Counter = Counter()
    bad = []
    for key, (dtype, _) in sorted(index.items()):
        if not key.startswith(prefix):
            continue  # e.g. optimizer state next to opt/target/: never read
        if dtype.kind != "f":
            bad.append((key, "an object array (a pickle)" if dtype.hasobject else str(dtype), want))
        elif str(dtype) != want:
            casts[(str(dtype), want)] += 1
    _refuse_non_float(path, bad)
    report.cast += _cast_summary(casts)


def _npz_dims(path: str, shapes: dict[str, tuple[int, ...]], key: str, layout: str) -> tuple[int, ...]:
    """The shape of ``key``, which must have one dimension per name in ``layout`` (official layouts)."""
    shape = shapes[key]
    if len(shape) != len(layout.split(",")):
        raise PretrainedError(
            f"model.pretrained={path}: array '{key}' has shape {shape}, but the official files store it as "
            f"({layout}). Is this .npz converted or edited by hand? Use the file as released."
        )
    return shape


def _torch_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise PretrainedError(
            f"model.pretrained={path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}). "
            "Only plain tensors are loaded (weights_only=True); a corrupted or pickled-object file is refused."
        ) from e
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
    return sd, fmt


def _safetensors_state_dict(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001
        raise PretrainedError(f"model.pretrained={path} is not a readable safetensors file ({type(e).__name__}: {e})") from e


def _hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    import timm

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
# Official .npz files, through timm's loaders
# ---------------------------------------------------------------------------------------------------------

_NPZ_PREFIXES = ("", "opt/target/", "params/")


def _npz_prefix(files: set[str], anchor: str) -> str:
    for p in _NPZ_PREFIXES:
        if f"{p}{anchor}" in files:
            return p
    return ""


def describe_vit_npz(path: str, files: set[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Architecture facts of an official ViT / R50+ViT ``.npz`` from its key names and shapes (``npz_index``)."""
    p = _npz_prefix(files, "embedding/kernel")
    need = [f"{p}embedding/kernel", f"{p}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    missing = [k for k in need if k not in files]
    if missing:
        raise PretrainedError(
            f"model.pretrained={path} is not an official ViT .npz: missing {missing} "
            "(expected google-research/vision_transformer keys such as Transformer/encoderblock_0/...)"
        )
    emb = _npz_dims(path, shapes, f"{p}embedding/kernel", "patch, patch, channels, width")
    q = _npz_dims(path, shapes, f"{p}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
                  "width, heads, head width")
    mlp = f"{p}Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
    if mlp not in files:
        raise PretrainedError(f"model.pretrained={path} is not an official ViT .npz: missing '{mlp}'")
    depth = sum(1 for k in files if re.fullmatch(rf"{re.escape(p)}Transformer/encoderblock_\d+/LayerNorm_0/scale", k))
    block = re.compile(rf"{re.escape(p)}Transformer/encoderblock_(\d+)/(.+)")
    for k in sorted(files):  # every block has block 0's shapes: an edited tensor is named here, not deep in timm
        m = block.fullmatch(k)
        first = f"{p}Transformer/encoderblock_0/{m.group(2)}" if m else None
        if first in shapes and shapes[k] != shapes[first]:
            raise PretrainedError(
                f"model.pretrained={path}: array '{k}' has shape {shapes[k]} but '{first}' has {shapes[first]}; "
                "every encoder block of an official ViT .npz has the same shapes. Is this .npz converted or edited "
                "by hand? Use the file as released."
            )
    out: dict[str, Any] = {
        "family": "hybrid" if f"{p}conv_root/kernel" in files else "vit",
        "width": int(emb[-1]),
        "depth": depth,
        "heads": int(q[1]),
        "mlp": int(_npz_dims(path, shapes, mlp, "width, mlp width")[-1]),
        "patch": int(emb[0]),
        "class_token": f"{p}cls" in files,
    }
    if out["family"] == "hybrid":
        stages = []
        i = 1
        while any(k.startswith(f"{p}block{i}/unit") for k in files):
            stages.append(len({k.split("/")[1] for k in files if k.startswith(f"{p}block{i}/unit")}))
            i += 1
        out["stages"] = tuple(stages)
    return out


def describe_bit_npz(path: str, files: set[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    p = "resnet/"
    root, norm = f"{p}root_block/standardized_conv2d/kernel", f"{p}group_norm/gamma"
    for key in (root, norm):
        if key not in files:
            raise PretrainedError(f"model.pretrained={path} is not a BiT .npz: no '{key}' key")
    root_shape = _npz_dims(path, shapes, root, "kernel, kernel, channels, stem width")
    stages = []
    i = 1
    while any(k.startswith(f"{p}block{i}/") for k in files):
        stages.append(len({k.split("/")[2] for k in files if k.startswith(f"{p}block{i}/")}))
        i += 1
    return {
        "family": "bit",
        "stem_width": int(root_shape[-1]),
        "stem_kernel": int(root_shape[0]),
        "stages": tuple(stages),
        "features": int(_npz_dims(path, shapes, norm, "features")[-1]),
    }


def _vit_npz_state_dict(path: str, model: nn.Module, keep_head: bool, report: LoadReport,
                        pos_embed_resize: str = DEFAULT_POS_EMBED_RESIZE) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import _load_weights

    w, files = _open_npz(path)
    index = npz_index(path)
    shapes = {k: s for k, (_, s) in index.items()}
    with w:
        p = _npz_prefix(files, "embedding/kernel")
        check_npz_dtypes(path, index, p, model, report)
        got = describe_vit_npz(path, files, shapes)
        _arch_mismatch(path, describe_model(model), got)
        k_src = int(shapes[f"{p}head/bias"][-1]) if shapes.get(f"{p}head/bias") else 0
        pos = _npz_dims(path, shapes, f"{p}Transformer/posembed_input/pos_embedding", "1, tokens, width")
        want = next(model.parameters()).dtype
        posemb = torch.from_numpy(w[f"{p}Transformer/posembed_input/pos_embedding"]).to(want)
        pre_logits = {k: torch.from_numpy(w[k]).to(want) for k in files if k.startswith(f"{p}pre_logits/")}
        head_npz = {k: torch.from_numpy(w[k]).to(want) for k in files if k.startswith(f"{p}head/")}
    src = copy.deepcopy(model)
    # A representation (pre-logits) layer sits between the features and head/kernel: timm loads neither then.
    src.reset_classifier(0 if pre_logits else k_src)
    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    with torch.no_grad():
        try:
            _load_weights(src, path, prefix=p)
        except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as e:
            raise PretrainedMismatchError(f"model.pretrained={path} does not fit the model: {type(e).__name__}: {e}") from e
    sd = src.state_dict()
    old_grid = int(round(math.sqrt(pos[1] - n_prefix)))
    new_grid = tuple(model.patch_embed.grid_size)
    if (old_grid, old_grid) != new_grid:
        # timm's loader resamples with its own convention; redo it from the file's grid as asked.
        sd["pos_embed"] = resize_pos_embed(posemb, new_grid, n_prefix, method=pos_embed_resize).to(sd["pos_embed"].dtype)
        report.resized.append(_resized_note(n_prefix, old_grid, new_grid, pos_embed_resize))
    if pre_logits:
        if keep_head and isinstance(model.head, nn.Sequential) and hasattr(model.head, "pre_logits"):
            sd["head.pre_logits.0.weight"] = pre_logits[f"{p}pre_logits/kernel"].T.contiguous()
            sd["head.pre_logits.0.bias"] = pre_logits[f"{p}pre_logits/bias"]
            sd["head.head.weight"] = head_npz[f"{p}head/kernel"].T.contiguous()
            sd["head.head.bias"] = head_npz[f"{p}head/bias"]
        else:
            report.dropped += sorted([*pre_logits, *head_npz])
    return sd


def _bit_npz_state_dict(path: str, model: nn.Module, report: LoadReport) -> dict[str, torch.Tensor]:
    from timm.models.resnetv2 import _load_weights

    w, files = _open_npz(path)
    index = npz_index(path)
    shapes = {k: s for k, (_, s) in index.items()}
    with w:
        check_npz_dtypes(path, index, "resnet/", model, report)
        got = describe_bit_npz(path, files, shapes)
        _arch_mismatch(path, describe_model(model), got)
        k_src = int(shapes["resnet/head/conv2d/bias"][-1]) if shapes.get("resnet/head/conv2d/bias") else 0
    src = copy.deepcopy(model)
    src.reset_classifier(k_src)
    with torch.no_grad():
        try:
            _load_weights(src, path, prefix="resnet/")
        except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as e:
            raise PretrainedMismatchError(f"model.pretrained={path} does not fit the model: {type(e).__name__}: {e}") from e
    return src.state_dict()


# ---------------------------------------------------------------------------------------------------------
# The common path: resize, drop the head, check, load, zero-init the new head
# ---------------------------------------------------------------------------------------------------------

def resize_pos_embed(posemb: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None, method: str = DEFAULT_POS_EMBED_RESIZE) -> torch.Tensor:
    """Resize a (1, prefix + H*W, D) position embedding to ``new_grid`` by 2-D interpolation (paper §3.2).

    ``method="vit_jax"`` (default) equals vit_jax's ``scipy.ndimage.zoom(order=1)`` over the grid: bilinear
    with corners aligned, computed in float64. ``method="timm"`` is timm's ``resample_abs_pos_embed``.
    The prefix ([class] token) embeddings are kept as they are; the same grid returns the input unchanged.
    """
    if method not in POS_EMBED_RESIZE:
        raise PretrainedError(f"model.pos_embed_resize={method!r} is not one of {list(POS_EMBED_RESIZE)}")
    n = posemb.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise PretrainedError(
                f"position embedding with {posemb.shape[1]} tokens and {num_prefix_tokens} prefix token(s) is not a square "
                "grid: does the checkpoint's classifier (token vs gap) match model.classifier?"
            )
        old_grid = (side, side)
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if old_grid == new_grid:
        return posemb
    if method == "timm":
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(posemb, new_size=list(new_grid), old_size=list(old_grid),
                                      num_prefix_tokens=num_prefix_tokens, interpolation="bilinear", antialias=False)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    d = grid.shape[-1]
    g = grid.reshape(grid.shape[0], *old_grid, d).permute(0, 3, 1, 2).to(torch.float64)
    g = torch.nn.functional.interpolate(g, size=new_grid, mode="bilinear", align_corners=True)
    g = g.permute(0, 2, 3, 1).reshape(grid.shape[0], new_grid[0] * new_grid[1], d).to(posemb.dtype)
    return torch.cat([prefix, g], dim=1)


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
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out: dict[str, Any] = {}
    if depth:
        out["depth"] = depth
    if "cls_token" in sd:
        out["width"] = int(sd["cls_token"].shape[-1])
    elif "norm.weight" in sd:
        out["width"] = int(sd["norm.weight"].shape[0])
    if "stages.0.blocks.0.conv1.weight" in sd:
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
            casts[(_dtype_name(v.dtype), _dtype_name(want))] += 1
            sd[k] = v.to(want)
        else:
            bad.append((k, _dtype_name(v.dtype), _dtype_name(want)))
    _refuse_non_float(source, bad)
    report.cast += _cast_summary(casts)


def _resized_note(n_prefix: int, old: int, new: tuple[int, int], method: str) -> str:
    how = "bilinear, corners aligned (vit_jax)" if method == "vit_jax" else "bilinear, timm"
    return f"pos_embed: {n_prefix}+{old}x{old} -> {n_prefix}+{new[0]}x{new[1]} tokens (2-D {how})"


def adapt_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, source: str, keep_head: bool,
                     report: LoadReport, pos_embed_resize: str = DEFAULT_POS_EMBED_RESIZE) -> dict[str, torch.Tensor]:
    """Fit a foreign state dict to ``model``: resize position embeddings, drop/keep the head, check every shape."""
    target = model.state_dict()
    sd = dict(sd)
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
            report.resized.append(_resized_note(n_prefix, og, g, pos_embed_resize))
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
    if fmt == "vit_npz":
        sd = _vit_npz_state_dict(path, model, keep_head, report, pos_embed_resize)
    elif fmt == "bit_npz":
        sd = _bit_npz_state_dict(path, model, report)
    elif fmt == "safetensors":
        sd = _safetensors_state_dict(path)
    elif fmt == "timm_hub":
        sd = _hub_state_dict(path)
    else:
        sd, fmt = _torch_state_dict(path)
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
