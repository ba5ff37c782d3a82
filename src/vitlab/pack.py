"""vitlab.pack: pack any vitlab dataset into litdata shards that ``data=packed`` streams (issue 15).

    python -m vitlab.pack data=digits out=shards/digits
    python -m vitlab.pack data=imagenet data.root=/datasets/imagenet out=/shards/imagenet pack.max_side=512
    python -m vitlab.train data=packed data.root=shards/digits

The packing itself lives in ``vitlab.data.packing`` (library code: ``vitlab.bench.data`` packs with it too);
this module is the command line.
"""

from __future__ import annotations

from omegaconf import DictConfig

from vitlab.tasks import hydra_app, task_wrapper


@hydra_app("pack")
@task_wrapper
def main(cfg: DictConfig) -> None:
    # lazy: the packing imports torch and litdata; a refused command (a missing `out`, a literal secret) answers
    # first (`python -m vitlab.pack`: 0.8 s CPU with this import here, ~12 s with it at the top)
    from vitlab.data.packing import pack

    pack(cfg)


if __name__ == "__main__":
    main()
