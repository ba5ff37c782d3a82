"""The Vision Transformer family (paper §3.1, Table 1): shapes, builder, official ``.npz`` reader, registry entry.

Built with timm's own ``VisionTransformer`` so that timm's weight loaders and position-embedding resampling apply
unchanged. The R50+ViT hybrids (``hybrid.py``) reuse :func:`build_vit` and this module's ``.npz`` reader.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, _load_weights
from timm.models.vision_transformer_hybrid import HybridEmbed
from torch import nn

from vitlab.errors import ModelConfigError, PretrainedError
from vitlab.models import registry
from vitlab.models.checkpoints import (
    DEFAULT_POS_EMBED_RESIZE,
    LoadReport,
    arch_mismatch,
    check_npz_dtypes,
    describe_model,
    load_with_timm,
    npz_dims,
    npz_prefix,
    npz_shapes,
    open_npz,
    resize_pos_embed,
    resized_note,
)
from vitlab.models.registry import choice


@dataclass(frozen=True)
class ViTShape:
    depth: int
    width: int
    mlp: int
    heads: int


# Paper Table 1 (B/L/H) and DeiT/timm (Ti/S); ``micro`` is vitlab's CPU model.
VIT_SHAPES: dict[str, ViTShape] = {
    "micro": ViTShape(depth=6, width=128, mlp=256, heads=4),
    "Ti": ViTShape(depth=12, width=192, mlp=768, heads=3),
    "S": ViTShape(depth=12, width=384, mlp=1536, heads=6),
    "B": ViTShape(depth=12, width=768, mlp=3072, heads=12),
    "L": ViTShape(depth=24, width=1024, mlp=4096, heads=16),
    "H": ViTShape(depth=32, width=1280, mlp=5120, heads=16),
}

CLASSIFIERS = ("token", "gap")
#: App. D.4 / Table 8: which position embedding (``model.pos_embed``) and where it is added (``model.pos_embed_at``)
POS_EMBEDS = ("1d", "none", "2d", "relative")
POS_EMBED_AT = ("stem", "every_layer", "every_layer_shared")


class PosEmbedAblationViT(VisionTransformer):
    """timm's ViT with the position embeddings of App. D.4 (Table 8), built only for the ablations:

    - ``2d``: learned X and Y embeddings of width D/2 each, concatenated per patch (the [class] token gets none);
    - ``1d``/``2d`` at ``every_layer``: a separate embedding added to the input of every block (``stem`` once);
      ``every_layer_shared``: one embedding added before every block;
    - ``relative``: no absolute embedding; every attention layer adds a learned bias per head and 1-D relative
      distance between tokens (``[class]`` counted as position 0) to its logits.
    """

    def __init__(self, *, ablation: str, at: str, **kwargs: Any) -> None:
        super().__init__(pos_embed="none", **kwargs)
        self.ablation, self.at = ablation, at
        n_layers = len(self.blocks) if at == "every_layer" else 1
        gh, gw = self.patch_embed.grid_size
        d, n = self.embed_dim, self.num_prefix_tokens + gh * gw
        if ablation == "1d":
            self.pos_1d = nn.Parameter(torch.randn(n_layers, 1, n, d) * 0.02)
        elif ablation == "2d":
            self.pos_x = nn.Parameter(torch.randn(n_layers, 1, 1, gw, d // 2) * 0.02)
            self.pos_y = nn.Parameter(torch.randn(n_layers, 1, gh, 1, d - d // 2) * 0.02)
        elif ablation == "relative":
            heads = self.blocks[0].attn.num_heads
            for blk in self.blocks:
                blk.attn = RelativeBiasAttention(blk.attn, heads, n)

    def _table(self, i: int) -> torch.Tensor:
        """The (1, tokens, D) embedding added at layer ``i`` (index 0 for ``stem`` and ``every_layer_shared``)."""
        if self.ablation == "1d":
            return self.pos_1d[i]
        gh, gw = self.patch_embed.grid_size
        x, y = self.pos_x[i].expand(1, gh, gw, -1), self.pos_y[i].expand(1, gh, gw, -1)
        grid = torch.cat([x, y], dim=-1).reshape(1, gh * gw, -1)
        return F.pad(grid, (0, 0, self.num_prefix_tokens, 0))  # no position for the [class] token

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False) -> torch.Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # timm: tokens, no embedding
        absolute = self.ablation in ("1d", "2d")
        for i, blk in enumerate(self.blocks):
            if absolute and (i == 0 or self.at != "stem"):
                x = x + self._table(i if self.at == "every_layer" else 0)
                if i == 0:
                    x = self.pos_drop(x)
            x = blk(x)
        return self.norm(x)


class RelativeBiasAttention(nn.Module):
    """timm's ``Attention`` (its weights unchanged) plus a learned bias per head and relative distance, added to
    the attention logits (Table 8's "relative": 1-D relative attention)."""

    def __init__(self, attn: nn.Module, heads: int, tokens: int) -> None:
        super().__init__()
        self.attn = attn
        self.bias = nn.Parameter(torch.zeros(heads, 2 * tokens - 1))
        pos = torch.arange(tokens)
        self.register_buffer("index", pos[None, :] - pos[:, None] + tokens - 1, persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        a = self.attn
        b, n, _c = x.shape
        q, k, v = a.qkv(x).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        bias = self.bias[:, self.index].unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=a.attn_drop.p if self.training else 0.0)
        return a.proj_drop(a.proj(a.norm(out.transpose(1, 2).reshape(b, n, -1))))


def check_patch(img_size: int, patch_size: int, what: str = "model.img_size") -> None:
    if patch_size <= 0 or img_size <= 0:
        raise ModelConfigError(f"{what}={img_size} and model.patch_size={patch_size} must be positive")
    if img_size % patch_size:
        raise ModelConfigError(
            f"model.patch_size={patch_size} does not divide {what}={img_size}: choose an image size that is a "
            f"multiple of the patch size (e.g. data.img_size={max(patch_size, (img_size // patch_size) * patch_size)})"
            " or another patch size"
        )


def require_patch(patch_size: int | None, family: str) -> int:
    if patch_size is None:
        raise ModelConfigError(f"model.patch_size is required for family={family!r}")
    return int(patch_size)


def _with_representation(model: nn.Module, num_features: int, representation_size: int | None, num_classes: int):
    """Paper §3.1: pretraining head = MLP with one tanh hidden layer ("pre-logits"); fine-tuning = one linear."""
    if not representation_size:
        return model
    model.head = nn.Sequential(
        OrderedDict(
            pre_logits=nn.Sequential(nn.Linear(num_features, representation_size), nn.Tanh()),
            head=nn.Linear(representation_size, num_classes) if num_classes > 0 else nn.Identity(),
        )
    )
    return model


def build_vit(
    variant: str,
    patch_size: int,
    img_size: int,
    num_classes: int,
    in_chans: int = 3,
    classifier: str = "token",
    representation_size: int | None = None,
    head_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pos_embed: str = "1d",
    fused_attn: bool | None = None,
    embed_layer: Any = None,
    weight_init: str = "",
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    pos_embed_at: str = "stem",
) -> nn.Module:
    """A timm ``VisionTransformer`` of the paper's shapes (a hybrid when ``embed_layer`` embeds CNN features).

    Dropout sites (paper App. B.1, vit_jax ``models_vit.py``): ``pos_drop_rate`` right after adding the
    position embeddings; ``proj_drop_rate`` after every dense layer except the qkv projections, i.e. after the
    attention output projection and after both MLP layers (timm's ``proj_drop`` sites). ``attn_drop_rate`` is
    dropout on the attention weights (0 in the paper); ``head_drop_rate`` is timm's dropout before the
    classifier, which the paper does not use.

    ``pos_embed`` / ``pos_embed_at``: App. D.4's options (:data:`POS_EMBEDS`, :data:`POS_EMBED_AT`); the paper's
    default, a learned 1-D embedding added once after the stem, is timm's own model, the rest
    :class:`PosEmbedAblationViT`.
    """
    shape = VIT_SHAPES[choice("variant", variant, VIT_SHAPES)]
    choice("classifier", classifier, CLASSIFIERS)
    choice("pos_embed", pos_embed, POS_EMBEDS)
    choice("pos_embed_at", pos_embed_at, POS_EMBED_AT)
    if pos_embed_at != "stem" and pos_embed not in ("1d", "2d"):
        raise ModelConfigError(f"model.pos_embed_at={pos_embed_at} adds an absolute embedding at every layer: it "
                               f"needs model.pos_embed=1d or 2d, not {pos_embed} (Table 8 has no such cell)")
    if shape.width % shape.heads:
        raise ModelConfigError(f"width {shape.width} is not divisible by {shape.heads} heads")
    if embed_layer is None:
        check_patch(img_size, patch_size)
    kwargs: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=shape.width,
        depth=shape.depth,
        num_heads=shape.heads,
        mlp_ratio=shape.mlp / shape.width,
        global_pool="token" if classifier == "token" else "avg",
        class_token=classifier == "token",
        fc_norm=False,  # paper: the head reads the final LayerNorm output for both classifiers
        drop_rate=head_drop_rate,
        pos_drop_rate=pos_drop_rate,
        proj_drop_rate=proj_drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        weight_init=weight_init,
    )
    if embed_layer is not None:
        kwargs["embed_layer"] = embed_layer
    if pos_embed in ("1d", "none") and pos_embed_at == "stem":  # timm's own model: the paper's default, or none
        model = VisionTransformer(pos_embed="learn" if pos_embed == "1d" else "none", **kwargs)
    else:
        if embed_layer is not None:
            raise ModelConfigError(f"model.pos_embed={pos_embed} model.pos_embed_at={pos_embed_at}: App. D.4's "
                                   "ablations are for ViT (model.family=vit), not hybrids")
        model = PosEmbedAblationViT(ablation=pos_embed, at=pos_embed_at, **kwargs)
    if fused_attn is not None:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(fused_attn)
    return _with_representation(model, shape.width, representation_size, num_classes)


def build(variant: str, num_classes: int, patch_size: int | None = None, img_size: int = 224, in_chans: int = 3,
          classifier: str = "token", representation_size: int | None = None, head_drop_rate: float = 0.0,
          attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, pos_embed: str = "1d",
          fused_attn: bool | None = None, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
          pos_embed_at: str = "stem", **_: Any) -> nn.Module:
    return build_vit(variant, require_patch(patch_size, "vit"), int(img_size), int(num_classes), in_chans, classifier,
                     representation_size, head_drop_rate, attn_drop_rate, drop_path_rate, pos_embed, fused_attn,
                     pos_drop_rate=float(pos_drop_rate), proj_drop_rate=float(proj_drop_rate), pos_embed_at=pos_embed_at)


def describe_tokens(model: nn.Module, family: str) -> dict[str, Any]:
    """The transformer's shape facts (shared with the hybrids, whose ``patch`` is on the CNN's feature map)."""
    blk = model.blocks[0]
    return {
        "family": family,
        "width": int(model.embed_dim),
        "depth": len(model.blocks),
        "heads": int(blk.attn.num_heads),
        "mlp": int(blk.mlp.fc1.out_features),
        "patch": int(model.patch_embed.proj.weight.shape[-1]),
        "class_token": model.cls_token is not None,
    }


def is_vision_transformer(model: nn.Module, hybrid: bool) -> bool:
    return isinstance(model, VisionTransformer) and isinstance(model.patch_embed, HybridEmbed) == hybrid


def prelogits_width(variant: str) -> int:
    """``${vitlab.prelogits_width:...}``: the pretraining pre-logits layer is as wide as the transformer (§3.1,
    vision_transformer issue #2: 768 for ViT-B)."""
    return VIT_SHAPES[choice("variant", variant, VIT_SHAPES)].width


# ---------------------------------------------------------------------------------------------------------
# Official .npz files (google-research/vision_transformer), through timm's loader
# ---------------------------------------------------------------------------------------------------------

def describe_vit_npz(path: str, files: set[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Architecture facts of an official ViT / R50+ViT ``.npz`` from its key names and shapes (``npz_index``)."""
    p = npz_prefix(files, "embedding/kernel")
    need = [f"{p}embedding/kernel", f"{p}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    missing = [k for k in need if k not in files]
    if missing:
        raise PretrainedError(
            f"model.pretrained={path} is not an official ViT .npz: missing {missing} "
            "(expected google-research/vision_transformer keys such as Transformer/encoderblock_0/...)"
        )
    emb = npz_dims(path, shapes, f"{p}embedding/kernel", "patch, patch, channels, width")
    q = npz_dims(path, shapes, f"{p}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
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
        "mlp": int(npz_dims(path, shapes, mlp, "width, mlp width")[-1]),
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


def read_vit_npz(path: str, model: nn.Module, keep_head: bool, report: LoadReport,
                 pos_embed_resize: str = DEFAULT_POS_EMBED_RESIZE) -> dict[str, torch.Tensor]:
    w, files = open_npz(path)
    index, shapes = npz_shapes(path)
    with w:
        p = npz_prefix(files, "embedding/kernel")
        check_npz_dtypes(path, index, p, model, report)
        arch_mismatch(path, describe_model(model), describe_vit_npz(path, files, shapes))
        k_src = int(shapes[f"{p}head/bias"][-1]) if shapes.get(f"{p}head/bias") else 0
        pos = npz_dims(path, shapes, f"{p}Transformer/posembed_input/pos_embedding", "1, tokens, width")
        want = next(model.parameters()).dtype
        posemb = torch.from_numpy(w[f"{p}Transformer/posembed_input/pos_embedding"]).to(want)
        pre_logits = {k: torch.from_numpy(w[k]).to(want) for k in files if k.startswith(f"{p}pre_logits/")}
        head_npz = {k: torch.from_numpy(w[k]).to(want) for k in files if k.startswith(f"{p}head/")}
    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    # A representation (pre-logits) layer sits between the features and head/kernel: timm loads neither then.
    sd = load_with_timm(path, model, _load_weights, p, 0 if pre_logits else k_src)
    old_grid = int(round(math.sqrt(pos[1] - n_prefix)))
    new_grid = tuple(model.patch_embed.grid_size)
    if (old_grid, old_grid) != new_grid:
        # timm's loader resamples with its own convention; redo it from the file's grid as asked.
        sd["pos_embed"] = resize_pos_embed(posemb, new_grid, n_prefix, method=pos_embed_resize).to(sd["pos_embed"].dtype)
        report.resized.append(resized_note(n_prefix, old_grid, new_grid, pos_embed_resize))
    if pre_logits:
        if keep_head and isinstance(model.head, nn.Sequential) and hasattr(model.head, "pre_logits"):
            sd["head.pre_logits.0.weight"] = pre_logits[f"{p}pre_logits/kernel"].T.contiguous()
            sd["head.pre_logits.0.bias"] = pre_logits[f"{p}pre_logits/bias"]
            sd["head.head.weight"] = head_npz[f"{p}head/kernel"].T.contiguous()
            sd["head.head.bias"] = head_npz[f"{p}head/bias"]
        else:
            report.dropped += sorted([*pre_logits, *head_npz])
    return sd


#: vit_jax's ``.npz`` (ViT-B_16.npz, R50+ViT-B_16.npz): the layout an ``.npz`` no other family claims is read as
VIT_NPZ = registry.CheckpointFormat(
    "vit_npz", detect=lambda names: any(n.endswith("embedding/kernel.npy") for n in names), read=read_vit_npz,
    fallback=True,
)

FAMILY = registry.register(registry.Family(
    name="vit", label="ViT", build=build, variants=VIT_SHAPES,
    owns=lambda m: is_vision_transformer(m, hybrid=False),
    describe=lambda m: describe_tokens(m, "vit"),
    owns_state_dict=lambda sd: "patch_embed.proj.weight" in sd and not any(k.startswith("patch_embed.backbone.")
                                                                          for k in sd),
    transformer=True, pixel_patches=True, fsdp_block="timm.models.vision_transformer.Block",
    prelogits_width=prelogits_width, formats=(VIT_NPZ,), style=("tab:blue", "o", "-"), timm_takes_img_size=True,
))
