"""Masked patch prediction: the paper's self-supervised pretraining (§4.6, Appendix B.1.2).

- 50% of the patch embeddings are corrupted. Of those, 80% are replaced by a learnable [mask] embedding,
  10% by the embedding of a random other patch of the same image, and 10% are kept as they are.
- For every corrupted patch the model predicts its 3-bit mean colour: each of R, G, B averaged over the
  patch and quantised to 8 levels, i.e. one of 512 classes, with a linear layer on the patch token.
- The backbone is a plain vitlab ViT (``self.net``, no classification head), so the checkpoint fine-tunes
  like any other with ``model.pretrained=<ckpt>``: the ``net.`` weights are loaded and the [mask] token and
  the colour head are reported as dropped.

Use it with ``module=mpp`` (``conf/module/mpp.yaml``; see ``experiment=mpp_demo``).
It logs ``train/loss``, ``val/acc`` / ``test/acc`` (colour accuracy over corrupted patches) so checkpoints
and sweeps select on it like on a supervised run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from vitlab import metrics as M
from vitlab.errors import ConfigError
from vitlab.models import build_model, registry
from vitlab.modules.base import VitlabModule

KEEP, MASK, RANDOM = 0, 1, 2


def corruption_plan(batch: int, num_patches: int, corrupt_frac: float = 0.5, mask_frac: float = 0.8,
                    random_frac: float = 0.1, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Which patches are corrupted (exactly ``round(corrupt_frac * N)`` per image) and how.

    Returns ``corrupted`` (B, N) bool and ``action`` (B, N) in {KEEP, MASK, RANDOM}; the action of a corrupted
    patch is MASK with probability ``mask_frac``, RANDOM with ``random_frac`` and KEEP otherwise.
    """
    n_corrupt = int(round(corrupt_frac * num_patches))
    scores = torch.rand(batch, num_patches, generator=generator, device=device)
    order = scores.argsort(dim=1)
    corrupted = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    corrupted.scatter_(1, order[:, :n_corrupt], True)
    u = torch.rand(batch, num_patches, generator=generator, device=device)
    action = torch.full((batch, num_patches), KEEP, dtype=torch.long, device=device)
    action[corrupted & (u < mask_frac)] = MASK
    action[corrupted & (u >= mask_frac) & (u < mask_frac + random_frac)] = RANDOM
    return corrupted, action


def mean_colour_targets(images: torch.Tensor, patch_size: int, bits: int = 3,
                        pixel_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, N) class ids of each patch's quantised mean colour (8^3 = 512 classes)."""
    lo, hi = pixel_range
    levels = 2**bits
    means = F.avg_pool2d(images.float(), patch_size)  # (B, 3, h, w)
    q = ((means - lo) / (hi - lo) * levels).floor().clamp(0, levels - 1).long()
    ids = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    return ids.flatten(1)


class MaskedPatchPredictionModule(VitlabModule):
    OBJECTIVE = "mpp"

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], corrupt_frac: float = 0.5, mask_frac: float = 0.8,
                 random_frac: float = 0.1, bits: int = 3, pixel_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(optim)  # its keys: conf/module/mpp.yaml (softmax cross-entropy over the 512 colours)
        for name, v in (("corrupt_frac", corrupt_frac), ("mask_frac", mask_frac), ("random_frac", random_frac)):
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"module.{name}={v} must be in [0, 1]")
        if mask_frac + random_frac > 1.0:
            raise ConfigError(f"module.mask_frac + module.random_frac = {mask_frac + random_frac} must be <= 1")
        if not registry.get(model.get("family")).pixel_patches:
            raise ConfigError(f"masked patch prediction needs a ViT (model.family=vit), got model.family={model.get('family')!r}")
        self.save_hyperparameters()
        self.net = build_model(**{**model, "num_classes": 0})
        width = int(self.net.embed_dim)
        self.patch_size = int(self.net.patch_embed.patch_size[0])
        self.num_classes = (2**bits) ** 3
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.mpp_head = nn.Linear(width, self.num_classes)
        self.train_acc, self.val_acc, self.test_acc = MeanMetric(), MeanMetric(), MeanMetric()

    def no_weight_decay(self) -> set[str]:
        """Names timm's optimiser factory keeps out of weight decay (tokens and position embeddings)."""
        return {"mask_token", "net.pos_embed", "net.cls_token"}

    def corrupt(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        """Apply the 80/10/10 corruption to (B, N, D) patch embeddings; return them and the corrupted mask."""
        b, n, _ = tokens.shape
        hp = self.hparams
        corrupted, action = corruption_plan(b, n, hp.corrupt_frac, hp.mask_frac, hp.random_frac, generator,
                                            device="cpu")
        corrupted, action = corrupted.to(tokens.device), action.to(tokens.device)
        # a random *other* patch of the same image: shift the index by 1..N-1
        shift = torch.randint(1, max(2, n), (b, n), generator=generator).to(tokens.device)
        other = (torch.arange(n, device=tokens.device).unsqueeze(0) + shift) % n
        random_tokens = torch.gather(tokens, 1, other.unsqueeze(-1).expand_as(tokens))
        out = torch.where((action == MASK).unsqueeze(-1), self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        out = torch.where((action == RANDOM).unsqueeze(-1), random_tokens, out)
        return out, corrupted

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Colour logits of every patch token, (B, N, 512), and which patches were corrupted."""
        net = self.net
        tokens = net.patch_embed(x)
        tokens, corrupted = self.corrupt(tokens, generator)
        h = net._pos_embed(tokens)
        h = net.patch_drop(h)
        h = net.norm_pre(h)
        h = net.blocks(h)
        h = net.norm(h)
        return self.mpp_head(h[:, net.num_prefix_tokens:]), corrupted

    def _step(self, batch, generator: torch.Generator | None = None):
        x, _ = batch
        logits, corrupted = self(x, generator)
        target = mean_colour_targets(x, self.patch_size, self.hparams.bits, tuple(self.hparams.pixel_range))
        sel_logits, sel_target = logits[corrupted], target[corrupted]
        loss = F.cross_entropy(sel_logits, sel_target)
        acc = (sel_logits.argmax(-1) == sel_target).float().mean()
        return loss, acc, x.shape[0]

    def training_step(self, batch, batch_idx: int):
        loss, acc, n = self._step(batch)
        self.train_loss(loss.detach(), weight=n)
        self.train_acc.update(acc.detach(), weight=n)  # epoch value only: update, not __call__
        self.log(M.TRAIN_LOSS, self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log(M.TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_generator(self, batch_idx: int) -> torch.Generator:
        return torch.Generator().manual_seed(1000 + batch_idx)  # the same corruption every validation

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, acc, n = self._step(batch, self._eval_generator(batch_idx))
        self.val_loss.update(loss, weight=n)
        self.val_acc.update(acc, weight=n)
        self.log(M.VAL_LOSS, self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(M.VAL_ACC, self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, acc, n = self._step(batch, self._eval_generator(batch_idx))
        self.test_loss.update(loss, weight=n)
        self.test_acc.update(acc, weight=n)
        self.log(M.TEST_LOSS, self.test_loss, on_step=False, on_epoch=True)
        self.log(M.TEST_ACC, self.test_acc, on_step=False, on_epoch=True)

    def optimized_module(self) -> nn.Module:
        return self  # the [mask] token and the colour head train with the backbone
