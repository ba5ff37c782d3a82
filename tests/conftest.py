"""Shared fixtures: compose configs with Hydra's compose API and run tasks in-process on tiny settings."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import omegaconf.omegaconf
import pytest
import yaml
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

class _YamlParsedOnce:
    """``yaml`` as ``omegaconf.omegaconf`` sees it. ``OmegaConf.load``, which Hydra reads every config file with at
    every compose, parses each text once per test process and hands out deep copies: the same objects, so the same
    configs. The suite composes hundreds of configs from the same files; the repeated parse was about a quarter of
    the time of the compose-heavy modules (test_configs, test_checkpoint_trust, test_lht: 97 s -> 75 s). A job
    composes once: the command line has nothing to gain from it."""

    def __init__(self) -> None:
        self.parsed: dict[str, object] = {}

    def __getattr__(self, name: str):
        return getattr(yaml, name)

    def load(self, stream, Loader):  # noqa: N803 - yaml's signature
        text = stream if isinstance(stream, str) else stream.read()
        if text not in self.parsed:  # always OmegaConf's loader (a new class per call): the text is the key
            self.parsed[text] = yaml.load(text, Loader=Loader)
        return copy.deepcopy(self.parsed[text])


omegaconf.omegaconf.yaml = _YamlParsedOnce()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow_process: the test starts real processes (signals, DDP, locks, one "
                                       "end-to-end command line); its module is run first")


def pytest_collection_modifyitems(config, items) -> None:
    """The order ``make test`` hands modules to its workers (``-n 2 --dist loadfile --no-loadscope-reorder``: a
    module's tests run on one worker, so its module fixtures are made once): modules with ``slow_process`` tests
    first (the long tests start early), then the others, the ones with most tests first, so the run ends on small
    modules and no worker sits idle while the other finishes a long one."""
    module = lambda item: item.nodeid.split("::")[0]  # noqa: E731
    slow: dict[str, int] = {}
    size: dict[str, int] = {}
    for item in items:
        slow[module(item)] = slow.get(module(item), 0) + (item.get_closest_marker("slow_process") is not None)
        size[module(item)] = size.get(module(item), 0) + 1
    items.sort(key=lambda item: (-slow[module(item)], -size[module(item)]))  # stable: a module's own order is kept


#: overrides that make a training run take seconds: no progress bar, few batches, CSV logging only
FAST = [
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
]


#: the one tiny training run the tests share (vit_micro on 192 digits at 16 px, 2 optimiser steps): a real
#: checkpoint of the real code path, made once per test process (per pytest-xdist worker) by :func:`tiny_run`
TINY_RUN = ["model=vit_micro", "data=digits", "data.img_size=16", "data.train_size=192", "data.batch_size=32",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "logger=none", "extras.print_config=false"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of :data:`TINY_RUN` (config.yaml, metrics.json, checkpoints/last.ckpt). Read it, never
    write into it: every test of this process shares it."""
    from vitlab.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    try:
        train(compose_cfg("train", TINY_RUN, out))
    finally:
        GlobalHydra.instance().clear()
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    """``checkpoints/last.ckpt`` of :func:`tiny_run`."""
    return tiny_run / "checkpoints" / "last.ckpt"


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


def module_argv(main, args) -> list[str]:
    """``sys.argv`` as ``python -m <main's module> args`` has it: the module's file, then the arguments."""
    return [sys.modules[main.__module__].__file__, *args]


def call_main(main) -> tuple[int, str]:
    """Call a task's ``main`` as the interpreter runs ``python -m``: returns the exit code and what the
    interpreter prints for what escaped (``SystemExit``'s message, or a traceback, with exit code 1)."""
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            return e.code or 0, ""
        return 1, f"{e.code}\n"
    except Exception as e:  # noqa: BLE001 - uncaught: Python prints the traceback, exit code 1
        return 1, "".join(traceback.format_exception(e))
    return 0, ""


@pytest.fixture
def main_cli(monkeypatch, capfd):
    """``main_cli(main, *args, env={...})`` runs ``python -m vitlab.<task> args`` in this process: the task's own
    ``main`` (Hydra's command line, its callbacks, vitlab's error formatting), then does what the interpreter does
    with what escapes it (``SystemExit``'s message or a traceback to stderr, exit code 1). Returns ``(exit code,
    stdout, stderr)``. ``env`` values of None unset the variable. A subprocess costs 10-20 s of imports; this, none."""

    def _run(main, *args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
        for k, v in (env or {}).items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "argv", module_argv(main, args))
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            code, tail = call_main(main)
        finally:
            GlobalHydra.instance().clear()
            for h in root.handlers[:]:  # Hydra's job logging: back to pytest's, so no handler outlives its stream
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            for h in handlers:
                if h not in root.handlers:
                    root.addHandler(h)
            root.setLevel(level)
        out, err = capfd.readouterr()
        return code, out, err + tail

    return _run


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
