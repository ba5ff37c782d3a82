"""vitlab: the ViT paper (Dosovitskiy et al., ICLR 2021) as a Lightning + Hydra experiment project.

The package root holds two facts and imports nothing of vitlab's: its version and where its ``conf/`` folder is.
Each task imports what it needs (``vitlab.config`` registers the config resolvers).
"""

import os
from pathlib import Path

__version__ = "0.1.0"


def conf_dir() -> str:
    """``conf/`` from any working directory: $VITLAB_CONF_DIR, the repo checkout, or the installed copy."""
    env = os.environ.get("VITLAB_CONF_DIR")
    if env:
        return str(Path(env).resolve())
    here = Path(__file__).resolve().parent
    for cand in (here.parents[1] / "conf", here / "conf"):
        if (cand / "train.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(
        f"vitlab's conf/ directory was not found next to {here}; set VITLAB_CONF_DIR to the repo's conf/ folder"
    )


CONF_DIR = conf_dir()
