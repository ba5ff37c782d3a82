"""What every weights-file reader shares: its errors and report, the architecture check, official ``.npz``
access, and the size guards that run before anything is allocated.

The family modules (``vit.py``, ``bit.py``, ...) read their own official layouts with these pieces;
``pretrained.py`` is the one entry point (``load_pretrained``) that picks the reader and adapts the result;
``vitlab.runs.read`` reads vitlab's own ``.ckpt`` files with :func:`load_torch_file`.

Size guards (a weights file is data and may lie about its sizes): every array's *declared* shape is compared
with what the model can hold (:class:`SizeBudget`) from the ``.npy`` / safetensors headers and the zip
directory alone, and a compressed zip record may not declare more bytes than the model could need
(:func:`check_zip_records`), so a 5 MB file cannot make vitlab allocate gigabytes.
"""

from __future__ import annotations

import copy
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitlab.errors import PretrainedError, PretrainedMismatchError
from vitlab.models import registry

#: how position embeddings are resized to a new grid (``model.pos_embed_resize``). ``vit_jax`` = the paper's code:
#: ``scipy.ndimage.zoom(posemb_grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)`` (vit_jax ``checkpoint.py``),
#: bilinear with the corner positions aligned. ``timm`` = ``timm.layers.resample_abs_pos_embed`` (bilinear with
#: half-pixel centres, corners not aligned): on a 14 -> 24 grid the two differ by up to ~0.9 per entry.
POS_EMBED_RESIZE = ("vit_jax", "timm")
DEFAULT_POS_EMBED_RESIZE = "vit_jax"

#: the most classes a classifier read from a weights file may have, whatever the model's own count: above
#: ImageNet-21k's 21,843 classes (paper §4.1), the largest head of an official ViT / BiT release
MAX_HEAD_CLASSES = 32768
#: the largest position-embedding grid (side, in patches) read from a file: 2048 px at patch 16, above the
#: paper's largest fine-tuning grid (ViT-H/14 at 518 px: 37 x 37, Table 2)
MAX_POS_GRID = 128
#: what the compressed records of a torch file may expand to when the model is not known yet (the pickled
#: configs of a vitlab checkpoint are kilobytes; ``torch.save`` stores every record uncompressed)
MAX_EXPANDED_BYTES = 64 << 20
#: the largest element a weights tensor may declare (float64)
MAX_ITEMSIZE = 8

_HEAD_KEY = re.compile(r"(^|[/.])head([/.]|$)")
_POS_KEY = re.compile(r"pos_?embed")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class SizeBudget:
    """The most elements a tensor of a weights file may declare to be read into ``model``:

    - a classifier (a key with a ``head`` part): up to :data:`MAX_HEAD_CLASSES` classes on the model's features;
    - a position embedding (``pos_embed`` / ``posembed_input``): up to 1 + :data:`MAX_POS_GRID`² tokens of the
      model's width (it is resized to the model's grid);
    - anything else: the model's largest tensor (a file of a larger architecture is refused here, before
      :func:`arch_mismatch` could name its width).
    """

    LARGEST = "the model's largest tensor"

    largest: int
    head: int
    pos: int
    #: what a whole checkpoint of this model may hold: its weights, an EMA copy and two optimiser moments
    total_bytes: int

    @classmethod
    def of(cls, model: nn.Module) -> SizeBudget:
        sd = model.state_dict()
        largest = max((v.numel() for v in sd.values()), default=0)
        features = int(getattr(model, "num_features", 0) or getattr(model, "embed_dim", 0) or 0)
        width = int(getattr(model, "embed_dim", 0) or features)
        pos = sd.get("pos_embed")
        tokens = 1 + MAX_POS_GRID**2
        if pos is not None:
            tokens = max(tokens, int(pos.shape[1]))
        return cls(largest=largest, head=max(largest, features * MAX_HEAD_CLASSES + MAX_HEAD_CLASSES),
                   pos=max(largest, tokens * width),
                   total_bytes=4 * sum(v.numel() * v.element_size() for v in sd.values()))

    def allowed(self, key: str) -> tuple[int, str]:
        """(most elements, why) for the tensor named ``key`` (an ``.npz`` or a state-dict name)."""
        if _HEAD_KEY.search(key):
            return self.head, f"a classifier of at most {MAX_HEAD_CLASSES:,} classes on the model's features"
        if _POS_KEY.search(key):
            return self.pos, f"a position embedding of at most 1+{MAX_POS_GRID}x{MAX_POS_GRID} tokens"
        return self.largest, self.LARGEST


def check_declared_sizes(name: str, path: str, declared: dict[str, tuple[tuple[int, ...], int]],
                         budget: SizeBudget, every_key: bool = True) -> None:
    """Refuse a tensor whose declared ``(shape, itemsize)`` is more than ``budget`` allows, before it is read.

    ``name`` is the setting that gave ``path`` (``model.pretrained``, ``ckpt_path``). ``every_key=False`` checks
    only classifiers and position embeddings (the tensors vitlab copies or resizes whatever their name): for a
    file whose tensors occupy their declared bytes on disk (safetensors, a stored torch zip), any other tensor
    of the wrong size is named by the shape check that follows, and one that fits no key is never read."""
    for key, (shape, itemsize) in declared.items():
        n = math.prod(shape)
        most, why = budget.allowed(key)
        if not every_key and why == SizeBudget.LARGEST:
            continue
        if n > most or itemsize > MAX_ITEMSIZE:
            raise PretrainedError(
                f"{name}={path}: array '{key}' declares shape {tuple(shape)} ({n:,} elements of {itemsize} bytes, "
                f"{_mb(n * itemsize)}) but the model can hold at most {most:,} elements there ({why}); refused "
                "before reading it. The file is for a much larger model, or was edited: use the file as released, "
                "with the model config it was made for."
            )


def npz_declared(path: str) -> dict[str, tuple[tuple[int, ...], int]]:
    """``{key: (shape, itemsize)}`` of every array of an ``.npz``, from its ``.npy`` headers alone."""
    return {k: (shape, int(dtype.itemsize)) for k, (dtype, shape) in npz_index(path).items()}


def safetensors_declared(path: str) -> dict[str, tuple[tuple[int, ...], int]]:
    """``{key: (shape, itemsize)}`` of a safetensors file, from its JSON header alone."""
    sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
    out = {}
    try:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(int(d) for d in sl.get_shape()), sizes.get(sl.get_dtype(), 1))
    except Exception as e:  # noqa: BLE001 - any header error means the file is unusable
        raise PretrainedError(f"model.pretrained={path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    return out


def state_dict_declared(sd: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], int]]:
    return {k: (tuple(v.shape), v.element_size()) for k, v in sd.items()}


def check_zip_records(name: str, path: str | Path, limit: int, error: type[Exception] = PretrainedError) -> bool:
    """Refuse a zip whose records would expand beyond ``limit`` bytes, from its directory alone; True when every
    record is stored uncompressed (as ``torch.save`` writes them: the file can then be memory-mapped).

    A stored record must occupy the bytes it declares; the compressed records together may declare at most
    ``limit`` bytes (a re-zipped checkpoint holding gigabytes of zeros in a few MB is refused here)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"{name}={path} is a corrupted archive ({type(e).__name__}: {e})") from e
    expanded, biggest = 0, None
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise error(f"{name}={path}: record '{info.filename}' declares {info.file_size:,} bytes but stores "
                            f"{info.compress_size:,}: the archive is damaged or forged")
            continue
        expanded += info.file_size
        if biggest is None or info.file_size > biggest.file_size:
            biggest = info
    if expanded > limit:
        raise error(
            f"{name}={path}: its compressed records declare {_mb(expanded)} once expanded (record "
            f"'{biggest.filename}': {biggest.file_size:,} bytes from {biggest.compress_size:,}), more than the "
            f"{_mb(limit)} the model can need; refused before expanding them. torch.save writes records "
            "uncompressed: use the file as torch.save wrote it, not a re-zipped copy."
        )
    return expanded == 0


def load_torch_file(name: str, path: str | Path, limit: int = MAX_EXPANDED_BYTES,
                    error: type[Exception] = PretrainedError, kind: str = "PyTorch checkpoint") -> Any:
    """``torch.load(weights_only=True)`` after :func:`check_zip_records`; memory-mapped when the records are stored
    (tensors are then read only when used), so only the declared shapes are known until something uses them."""
    path = str(path)
    if not Path(path).is_file():  # a FIFO or a device is never opened
        raise error(f"{name}={path} is not a regular file")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    stored = check_zip_records(name, path, limit, error) if is_zip else False
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=stored)
    except Exception as e:  # noqa: BLE001 - a corrupted file, or a pickle that names code
        raise error(
            f"{name}={path} is not a readable {kind} ({type(e).__name__}: {load_error_reason(e)}). vitlab loads "
            "checkpoints with torch.load(weights_only=True): a file that would run code when loaded is refused, and "
            "a truncated file cannot be read."
        ) from e


def load_error_reason(e: BaseException) -> str:
    """torch.load's whole reason, on one line: its generic first paragraph ("Weights only load failed ... re-run
    with weights_only=False") is dropped, never the cause after it (e.g. "GLOBAL posix.system ... is blocked")."""
    paras = [" ".join(x.split()) for x in str(e).split("\n\n")]
    paras = [x for x in paras if x]
    if len(paras) > 1 and paras[0].startswith("Weights only load failed"):
        paras = paras[1:]
    return " ".join(paras) or type(e).__name__


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


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The shape facts a checkpoint must agree with, from the family that built ``model``."""
    fam = registry.of_model(model)
    if fam is None:
        raise PretrainedError(f"cannot load pretrained weights into a {type(model).__name__}: not a model of a "
                              f"registered family ({', '.join(f.label for f in registry.families())})")
    return fam.describe(model)


def arch_mismatch(path: str, want: dict[str, Any], got: dict[str, Any]) -> None:
    """Refuse a checkpoint whose architecture facts differ from the model's, listing every difference."""
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


def open_npz(path: str):
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


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def refuse_non_float(path: str, bad: list[tuple[str, str, str]]) -> None:
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


def cast_summary(casts: Counter) -> list[str]:
    return [f"{n} tensors {a} -> {b}" for (a, b), n in sorted(casts.items())]


def check_npz_dtypes(path: str, index: dict[str, tuple[Any, tuple[int, ...]]], prefix: str, model: nn.Module,
                     report: LoadReport) -> None:
    """Refuse non-float arrays under the weights' ``prefix``; list the float arrays that will be cast (timm's
    loaders copy them into the model's parameters, which casts)."""
    want = dtype_name(next(model.parameters()).dtype)
    casts: Counter = Counter()
    bad = []
    for key, (dtype, _) in sorted(index.items()):
        if not key.startswith(prefix):
            continue  # e.g. optimizer state next to opt/target/: never read
        if dtype.kind != "f":
            bad.append((key, "an object array (a pickle)" if dtype.hasobject else str(dtype), want))
        elif str(dtype) != want:
            casts[(str(dtype), want)] += 1
    refuse_non_float(path, bad)
    report.cast += cast_summary(casts)


def npz_shapes(path: str) -> tuple[dict[str, tuple[Any, tuple[int, ...]]], dict[str, tuple[int, ...]]]:
    """(``npz_index(path)``, ``{key: shape}``): what the official readers check before decoding anything."""
    index = npz_index(path)
    return index, {k: s for k, (_, s) in index.items()}


def load_with_timm(path: str, model: nn.Module, loader, prefix: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The state dict of a copy of ``model`` with a ``num_classes`` head, filled by timm's ``_load_weights``
    (``loader``) for an official layout: timm maps the file's names, vitlab then adapts the result."""
    src = copy.deepcopy(model)
    src.reset_classifier(num_classes)
    with torch.no_grad():
        try:
            loader(src, path, prefix=prefix)
        except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as e:
            raise PretrainedMismatchError(f"model.pretrained={path} does not fit the model: {type(e).__name__}: {e}") from e
    return src.state_dict()


def npz_dims(path: str, shapes: dict[str, tuple[int, ...]], key: str, layout: str) -> tuple[int, ...]:
    """The shape of ``key``, which must have one dimension per name in ``layout`` (official layouts)."""
    shape = shapes[key]
    if len(shape) != len(layout.split(",")):
        raise PretrainedError(
            f"model.pretrained={path}: array '{key}' has shape {shape}, but the official files store it as "
            f"({layout}). Is this .npz converted or edited by hand? Use the file as released."
        )
    return shape


_NPZ_PREFIXES = ("", "opt/target/", "params/")


def npz_prefix(files: set[str], anchor: str) -> str:
    for p in _NPZ_PREFIXES:
        if f"{p}{anchor}" in files:
            return p
    return ""


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
        return resample_abs_pos_embed(posemb, new_size=list(new_grid), old_size=list(old_grid),
                                      num_prefix_tokens=num_prefix_tokens, interpolation="bilinear", antialias=False)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    d = grid.shape[-1]
    g = grid.reshape(grid.shape[0], *old_grid, d).permute(0, 3, 1, 2).to(torch.float64)
    g = torch.nn.functional.interpolate(g, size=new_grid, mode="bilinear", align_corners=True)
    g = g.permute(0, 2, 3, 1).reshape(grid.shape[0], new_grid[0] * new_grid[1], d).to(posemb.dtype)
    return torch.cat([prefix, g], dim=1)


def resized_note(n_prefix: int, old: int, new: tuple[int, int], method: str) -> str:
    how = "bilinear, corners aligned (vit_jax)" if method == "vit_jax" else "bilinear, timm"
    return f"pos_embed: {n_prefix}+{old}x{old} -> {n_prefix}+{new[0]}x{new[1]} tokens (2-D {how})"
