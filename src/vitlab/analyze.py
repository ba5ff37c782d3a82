"""vitlab.analyze: the paper's inspection figures (§4.5, Figures 6 and 7) for a trained ViT checkpoint.

    python -m vitlab.analyze ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m vitlab.analyze ckpt_path=<ckpt> data=shapes num_images=256 wandb=true

Writes into the job dir: filters.png (Fig. 7 left), position_similarity.png (Fig. 7 centre),
attention_distance.png (Fig. 7 right), rollout.png (Fig. 6) and analysis.json (the numbers behind them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vitlab.errors import ConfigError
from vitlab.tasks import hydra_app, task_wrapper

log = logging.getLogger("vitlab.analyze")


def sample_images(dm, split: str, n: int):
    """The first ``n`` images (and labels) of a split, through its eval pipeline."""
    import torch  # lazy: a refusal answers before torch loads

    dm.setup("test" if split == "test" else "validate")
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        if sum(len(b) for b in xs) >= n:
            break
    if not xs:
        raise ConfigError(f"split={split} of data {dm.name} is empty: nothing to analyse")
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


@task_wrapper
def analyze(cfg: DictConfig) -> dict[str, Any]:
    import torch  # lazy: a refusal answers before torch loads

    from vitlab.inspection import inspect_vit as V  # lazy: a refusal answers before torch loads
    from vitlab.inspection import plots as F  # lazy: a refusal answers before torch loads
    from vitlab.models import registry  # lazy: a refusal answers before torch loads
    from vitlab.runs import load_run  # lazy: a refusal answers before torch loads

    _, module, dm = load_run(cfg, families=registry.names(transformer=True))  # vitlab.analyze inspects ViTs
    module.eval()
    vit = V._vit(module)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = sample_images(dm, cfg.split, int(cfg.num_images))
    gh, gw = V.grid_size(vit)
    px_per_token = images.shape[-1] / gw
    prefix = V.num_prefix_tokens(vit)

    figs: dict[str, Path] = {}
    results: dict[str, Any] = {"ckpt_path": str(cfg.ckpt_path), "grid": [gh, gw], "pixels_per_token": px_per_token,
                               "num_images": int(images.shape[0])}
    try:
        comps, var = V.patch_embedding_pcs(vit, int(cfg.num_pcs))
        figs["filters"] = F.plot_filters(comps, var, out / "filters.png")
        results["filters/explained_variance"] = [round(float(v), 5) for v in var]
    except V.NotAViTError as e:  # hybrids embed CNN features, not pixels
        log.info("patch-embedding filters skipped: %s", e)
    try:
        sim = V.position_similarity(vit)
        figs["position_similarity"] = F.plot_position_similarity(sim, out / "position_similarity.png")
        eye = torch.eye(gh * gw, dtype=torch.bool)
        s = sim.reshape(gh * gw, gh * gw)
        same_row = torch.tensor([[i // gw == j // gw for j in range(gh * gw)] for i in range(gh * gw)]) & ~eye
        results["pos/sim_same_row"] = float(s[same_row].mean())
        results["pos/sim_other"] = float(s[~same_row & ~eye].mean())
    except V.NotAViTError as e:
        log.info("position-embedding similarity skipped: %s", e)

    attn = torch.cat([V.attention_maps(vit, chunk) for chunk in images.split(int(cfg.batch_size))], dim=1)
    dist = V.mean_attention_distance(attn, (gh, gw), px_per_token, prefix)
    figs["attention_distance"] = F.plot_attention_distance(dist, out / "attention_distance.png")
    results["attention/mean_distance_px"] = [[round(float(v), 3) for v in row] for row in dist]
    k = min(int(cfg.rollout_images), images.shape[0])
    maps = V.rollout_maps(attn[:, :k], (gh, gw), prefix)
    with torch.no_grad():
        pred = module(images[:k]).argmax(-1)
    titles = [f"y={int(y)} pred={int(p)}" for y, p in zip(labels[:k], pred, strict=True)]
    figs["rollout"] = F.plot_rollout(images[:k], maps, out / "rollout.png", titles)
    results["figures"] = {k: str(v) for k, v in figs.items()}
    (out / "analysis.json").write_text(json.dumps(results, indent=2))
    if cfg.wandb:
        _log_wandb(cfg, figs, dist)
    print(f"analysis of {cfg.ckpt_path}: {len(figs)} figures in {out}")
    for name, p in figs.items():
        print(f"  {name:<20} {p}")
    return results


def _log_wandb(cfg: DictConfig, figs: dict[str, Path], dist) -> None:
    from vitlab.wandb_io.run import log_figures, log_table, wandb_run  # lazy: as above (W&B, torch)

    # the name is masked after interpolation (wandb_run)
    with wandb_run(f"analyze-{Path(cfg.ckpt_path).parent.parent.name}", cfg.group, "eval", cfg.paths.output_dir) as run:
        log_figures(run, figs, prefix="analysis/")
        rows = [{"layer": li + 1, "head": h + 1, "mean_distance_px": float(d)}
                for li, row in enumerate(dist) for h, d in enumerate(row)]
        log_table(run, "analysis/attention_distance", rows, ["layer", "head", "mean_distance_px"])


main = hydra_app("analyze")(analyze)


if __name__ == "__main__":
    main()
