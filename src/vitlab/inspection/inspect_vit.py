"""What a trained ViT learned (paper §4.5): Figure 7's three panels and Figure 6's attention rollout.

- ``patch_embedding_pcs``: top principal components of the RGB patch-embedding filters (Fig. 7 left);
- ``position_similarity``: cosine similarity of each patch's position embedding with all others (Fig. 7 centre);
- ``attention_maps`` + ``mean_attention_distance``: the model's real attention probabilities (fused SDPA turned
  off while recording, so timm computes softmax(QK^T/sqrt(d)) explicitly and a hook reads it), and the
  attention-weighted mean image-space distance per head and layer (Fig. 7 right);
- ``attention_rollout``: Abnar & Zuidema (2020), heads averaged, identity added for the residual path,
  rows renormalised, multiplied through the layers; the [class] token's row is the map (Fig. 6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vitlab.errors import NotAViTError


def _vit(model: nn.Module) -> nn.Module:
    """The timm VisionTransformer inside ``model`` (a ClassificationModule's ``net`` or the ViT itself)."""
    m = getattr(model, "net", model)
    if not hasattr(m, "blocks") or not hasattr(m, "patch_embed"):
        raise NotAViTError(f"{type(m).__name__} is not a Vision Transformer (no .blocks/.patch_embed); "
                           "attention and position-embedding analysis needs model.family=vit or hybrid")
    return m


def grid_size(model: nn.Module) -> tuple[int, int]:
    return tuple(int(g) for g in _vit(model).patch_embed.grid_size)  # type: ignore[return-value]


def num_prefix_tokens(model: nn.Module) -> int:
    return int(getattr(_vit(model), "num_prefix_tokens", 1))


@torch.no_grad()
def patch_embedding_pcs(model: nn.Module, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """(components ``[k, C, P, P]`` scaled to [0, 1] each, explained-variance ratios ``[k]``)."""
    proj = getattr(_vit(model).patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size[0] == 1:
        raise NotAViTError("patch-embedding filters need a pixel-patch embedding (a hybrid embeds CNN features)")
    w = proj.weight.detach().float().cpu()  # [D, C, P, P]
    d = w.shape[0]
    flat = w.reshape(d, -1)
    flat = flat - flat.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k].reshape(k, *w.shape[1:])
    lo = comps.amin(dim=(1, 2, 3), keepdim=True)
    hi = comps.amax(dim=(1, 2, 3), keepdim=True)
    var = s**2
    return (comps - lo) / (hi - lo).clamp_min(1e-12), (var / var.sum())[:k]


@torch.no_grad()
def position_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity ``[gh, gw, gh, gw]`` between the position embeddings of the patch tokens."""
    vit = _vit(model)
    pe = getattr(vit, "pos_embed", None)
    if pe is None:
        raise NotAViTError("the model has no learned position embeddings (model.pos_embed=none)")
    gh, gw = grid_size(vit)
    pe = pe.detach().float().cpu()[0]
    if pe.shape[0] == gh * gw + num_prefix_tokens(vit):  # prefix tokens carry their own embedding
        pe = pe[num_prefix_tokens(vit):]
    pe = torch.nn.functional.normalize(pe, dim=-1)
    return (pe @ pe.T).reshape(gh, gw, gh, gw)


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward appends each layer's attention probabilities ``[B, heads, N, N]``."""
    vit = _vit(model)
    maps: list[torch.Tensor] = []
    attns = [b.attn for b in vit.blocks]
    saved = [getattr(a, "fused_attn", False) for a in attns]
    hooks = []
    for a in attns:
        if not hasattr(a, "attn_drop"):
            raise NotAViTError(f"{type(a).__name__} has no attn_drop to read the attention from")
        a.fused_attn = False
        hooks.append(a.attn_drop.register_forward_hook(lambda _m, inp, _out: maps.append(inp[0].detach())))
    try:
        yield maps
    finally:
        for h in hooks:
            h.remove()
        for a, f in zip(attns, saved, strict=True):
            a.fused_attn = f


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[layers, B, heads, N, N]`` attention probabilities for a batch of (normalised) images."""
    vit = _vit(model)
    was = vit.training
    vit.eval()
    try:
        with record_attention(vit) as maps:
            vit(images)
    finally:
        vit.train(was)
    return torch.stack(maps)


def patch_distances(gh: int, gw: int, patch_size: float = 1.0) -> torch.Tensor:
    """Euclidean distance ``[gh*gw, gh*gw]`` between patch centres, in pixels (``patch_size`` px per patch)."""
    yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    return torch.cdist(pos, pos) * patch_size


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: float = 1.0,
                            num_prefix: int = 1) -> torch.Tensor:
    """Attention-weighted mean distance per layer and head ``[L, heads]`` (Fig. 7 right).

    ``attn`` is ``[L, B, heads, N, N]`` (or ``[B, heads, N, N]``). Patch queries only; the attention to
    prefix tokens is dropped and each row renormalised over the patches, so the identity gives 0 and
    uniform attention gives the mean pairwise patch distance. Averaged over queries and images.
    """
    if attn.dim() == 4:
        attn = attn[None]
    gh, gw = grid
    n = gh * gw
    if attn.shape[-1] != n + num_prefix:
        raise ValueError(f"attention has {attn.shape[-1]} tokens, expected {n} patches + {num_prefix} prefix")
    a = attn[..., num_prefix:, num_prefix:].float()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    dist = patch_distances(gh, gw, patch_size).to(a.device)
    per_query = (a * dist).sum(-1)  # [L, B, H, n]
    return per_query.mean(dim=(1, 3))


def attention_rollout(attn: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Rollout ``[B, N, N]`` from ``[L, B, heads, N, N]``: per layer 0.5*mean_heads(A) + 0.5*I, rows renormalised."""
    a = attn.float().mean(2)  # [L, B, N, N]
    eye = torch.eye(a.shape[-1], device=a.device)
    a = (1 - residual) * a + residual * eye
    a = a / a.sum(-1, keepdim=True)
    out = a[0]
    for layer in a[1:]:
        out = layer @ out
    return out


def rollout_maps(attn: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """The [class] token's rollout over the patches, ``[B, gh, gw]`` scaled to [0, 1] per image."""
    r = attention_rollout(attn)
    if num_prefix > 0:
        m = r[:, 0, num_prefix:]
    else:  # global-average-pool classifier: how much all patches draw from each patch
        m = r.mean(1)
    m = m.reshape(-1, *grid)
    lo = m.flatten(1).amin(1)[:, None, None]
    hi = m.flatten(1).amax(1)[:, None, None]
    return (m - lo) / (hi - lo).clamp_min(1e-12)
