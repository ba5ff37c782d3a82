"""Shared fixtures: compose configs with Hydra's compose API and run tasks in-process on tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vitlab.config import compose_job

REPO = Path(__file__).resolve().parents[1]

# Keep test runs offline, quiet and on the two CI cores.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

# Under pytest-xdist (`make test` runs `-n 2`), each worker and the CLI subprocesses it starts use one core,
# so that two workers share the two CI cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

#: overrides that make a training run take seconds: no progress bar, few batches, CSV logging only
FAST = [
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with the job's output dir set to ``output_dir``."""
    return compose_job(config_name, overrides, output_dir)


def refusal(task, cfg: DictConfig) -> str:
    """Run ``task`` on ``cfg`` in-process exactly as its command line does (:func:`vitlab.tasks.run_task`) and
    return the one ``Error:`` line it refuses with (the command line prints that line, without a traceback,
    exit code 1); fails when the task does not refuse, or refuses with a bug's exception."""
    from vitlab.errors import UserError
    from vitlab.tasks import run_task

    with pytest.raises(UserError) as err:
        run_task(task, cfg)
    msg = str(err.value)
    assert msg.startswith("Error: ") and "\n" not in msg, msg
    return msg


@pytest.fixture
def refuse(compose_train):
    """``refuse(*overrides)``: the ``Error:`` line ``python -m vitlab.train <overrides>`` stops with, in-process."""
    from vitlab.train import train

    return lambda *overrides, **kw: refusal(train, compose_train(*overrides, **kw))


@pytest.fixture
def compose_train(tmp_path):
    def _compose(*overrides: str, fast: bool = True, out: Path | None = None) -> DictConfig:
        return compose_cfg("train", [*(FAST if fast else []), *overrides], out or tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(module: str, *args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args...`` in a subprocess, as a user would."""
    e = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli(tmp_path):
    def _run(module: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_cli(module, *args, cwd=kw.pop("cwd", tmp_path), **kw)

    return _run
