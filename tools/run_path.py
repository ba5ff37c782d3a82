"""Follow the Hydra config of one training job call by call (issue #21's measure of "a short run path").

    .venv/bin/python tools/run_path.py [overrides...]

Runs ``vitlab.train.train`` in-process on a tiny digits job under ``sys.setprofile`` and records every call into a
vitlab function that receives the config or a part of it (a node of ``cfg``, or the plain job config
``job_config(cfg)`` and its sub-dicts). A *stop* is a call that enters another file; a *climb* is a stop whose
file sits in a higher layer (``[tool.importlinter]`` in pyproject.toml) than the file that called it.
Prints each stop, then ``stops=N files=M climbs=K``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import tomllib
from omegaconf import DictConfig, ListConfig

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "vitlab"
TINY = ["model=vit_micro", "data=digits", "data.img_size=16", "data.train_size=192", "data.batch_size=32",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "logger=none"]


def layers() -> list[list[str]]:
    """The layer contract's layers, top first, each a list of sub-package names of vitlab."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    spec = next(c for c in contracts if c["type"] == "layers")["layers"]
    return [[p.strip() for p in layer.replace(":", "|").split("|")] for layer in spec]


def layer_of(path: str, table: list[list[str]]) -> int:
    rel = Path(path).resolve().relative_to(SRC)
    top = rel.parts[0].removesuffix(".py")
    for i, names in enumerate(table):
        if top in names:
            return i
    return len(table)  # the package root: below everything


def main(argv: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from vitlab.config import compose_job
    from vitlab.train import train

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = compose_job("train", [*TINY, *argv], out)
    GlobalHydra.instance().clear()
    table = layers()
    plain_ids: set[int] = set()
    stops: list[tuple[str, str, int, bool]] = []
    src = str(SRC)

    def follows(value) -> bool:
        if isinstance(value, (DictConfig, ListConfig)):
            return True  # cfg, a node of it, or a copy Hydra's instantiate made of one
        return isinstance(value, dict) and id(value) in plain_ids

    def remember(value) -> None:
        if isinstance(value, dict):
            plain_ids.add(id(value))
            for v in value.values():
                remember(v)

    def profile(frame, event, arg):
        code = frame.f_code
        if not code.co_filename.startswith(src):
            return
        if event == "return" and code.co_name in ("job_config", "to_plain"):
            remember(arg)
            return
        if event != "call":
            return
        nargs = code.co_argcount + code.co_kwonlyargcount
        caller = frame.f_back
        built_by_hydra = "hydra/_internal/instantiate" in caller.f_code.co_filename if caller else False
        if not built_by_hydra and not any(follows(frame.f_locals.get(name)) for name in code.co_varnames[:nargs]):
            return
        while caller is not None and not caller.f_code.co_filename.startswith(src):
            caller = caller.f_back
        here = code.co_filename
        if caller is not None and caller.f_code.co_filename == here:
            return  # a call inside the same file is not a stop
        climb = bool(stops) and caller is not None and layer_of(here, table) < layer_of(caller.f_code.co_filename, table)
        stops.append((str(Path(here).relative_to(SRC)), code.co_qualname, layer_of(here, table), climb))

    sys.setprofile(profile)
    try:
        train(cfg)
    finally:
        sys.setprofile(None)
    for i, (file, fn, _layer, climb) in enumerate(stops, 1):
        print(f"{i:3d}  {file}:{fn}{'   <- climb' if climb else ''}")
    files = {s[0] for s in stops}
    print(f"stops={len(stops)} files={len(files)} climbs={sum(s[3] for s in stops)}")


if __name__ == "__main__":
    main(sys.argv[1:])
