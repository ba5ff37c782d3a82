"""vitlab.train: pretrain or fine-tune one model on one dataset (one Hydra job).

    python -m vitlab.train model=vit_b16 data=cifar10 optim=sgd_finetune trainer=gpu
    python -m vitlab.train -m experiment=quickstart          # ViT vs BiT on digits, one table

The job is built and run by the run-assembly layer (:func:`vitlab.runs.assemble.train_run`); this module is
its command line.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from vitlab.runs.assemble import train_run
from vitlab.tasks import hydra_app


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; return the final metrics."""
    return train_run(cfg)


@hydra_app("train")
def _hydra_main(cfg: DictConfig) -> float | None:
    results = train(cfg)
    metric = cfg.get("optimized_metric")
    return results.get(metric) if metric else None


def resolve_printed_config(argv: list[str]) -> list[str]:
    """``--cfg job`` prints resolved values: the paper recipes read their numbers from ``vitlab.paper`` through a
    resolver, and ``lr: ${vitlab.paper:...}`` would hide them (Hydra's own ``--resolve``, added for you)."""
    wants_cfg = any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv)
    if wants_cfg and "--resolve" not in argv and "hydra" not in argv:
        return [*argv, "--resolve"]
    return argv


def main() -> float | None:
    sys.argv = resolve_printed_config(sys.argv)
    return _hydra_main()


if __name__ == "__main__":
    main()
