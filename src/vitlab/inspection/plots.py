"""Matplotlib renderings of the paper's inspection figures (each returns the PNG path it wrote)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import torch


def _plt():
    matplotlib.use("Agg")  # files only, no window: chosen when vitlab draws, not for every program importing it
    import matplotlib.pyplot as plt  # kept here: pyplot fixes its backend when first imported

    return plt


def plot_filters(comps: torch.Tensor, var: torch.Tensor, path: Path) -> Path:
    """Fig. 7 left: RGB principal components of the patch-embedding filters."""
    plt = _plt()
    k = comps.shape[0]
    cols = min(7, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.4), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            img = comps[i].permute(1, 2, 0).numpy()
            ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray",
                      interpolation="nearest")
            ax.set_title(f"{100 * float(var[i]):.1f}%", fontsize=6)
    fig.suptitle("RGB embedding filters (first principal components)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_position_similarity(sim: torch.Tensor, path: Path) -> Path:
    """Fig. 7 centre: one tile per patch position, each its position embedding's cosine similarity with all others."""
    plt = _plt()
    gh, gw = sim.shape[:2]
    fig, axes = plt.subplots(gh, gw, figsize=(min(8, 0.6 * gw + 1), min(8, 0.6 * gh + 1)), dpi=110, squeeze=False)
    for i in range(gh):
        for j in range(gw):
            ax = axes[i, j]
            ax.imshow(sim[i, j].numpy(), vmin=-1, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(i + 1), fontsize=6)
            if i == gh - 1:
                ax.set_xlabel(str(j + 1), fontsize=6)
    fig.suptitle("Position embedding similarity", fontsize=9)
    fig.supxlabel("input patch column", fontsize=8)
    fig.supylabel("input patch row", fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_attention_distance(dist: torch.Tensor, path: Path) -> Path:
    """Fig. 7 right: mean attention distance (pixels) of every head against network depth."""
    plt = _plt()
    layers, heads = dist.shape
    fig, ax = plt.subplots(figsize=(4.5, 3.6), dpi=110)
    for h in range(heads):
        ax.scatter(range(1, layers + 1), dist[:, h].numpy(), s=14, label=f"head {h + 1}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title("Mean attention distance per head", fontsize=9)
    ax.set_xticks(range(1, layers + 1))
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_rollout(images: torch.Tensor, maps: torch.Tensor, path: Path, titles: list[str] | None = None) -> Path:
    """Fig. 6: input images and their attention-rollout maps (upsampled to the image, overlaid)."""
    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), dpi=110, squeeze=False)
    up = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    for i in range(n):
        img = images[i].permute(1, 2, 0).float()
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
        axes[0, i].imshow(img.numpy())
        axes[1, i].imshow((img * up[i, ..., None]).numpy())
        for ax in axes[:, i]:
            ax.axis("off")
        if titles:
            axes[0, i].set_title(titles[i], fontsize=7)
    axes[0, 0].text(-0.1, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    axes[1, 0].text(-0.1, 0.5, "attention", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
