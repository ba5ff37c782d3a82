"""A user's mistake on the command line prints its message and the fix, not a Python traceback (issue 14);
``HYDRA_FULL_ERROR=1`` still shows the whole stack. Exit code 1 either way.

The formatting is :func:`vitlab.tasks.run_task`, a plain function every task's ``hydra_app`` calls: each kind of
mistake is checked through it in-process, ``HYDRA_FULL_ERROR=1`` through the task's ``main`` in-process; one
command line (two jobs at once, forked processes) checks the process end to end.
"""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg, refusal
from reliability_utils import Forked, env
from vitlab.evaluate import evaluate
from vitlab.train import main as train_main
from vitlab.train import train

#: (task, overrides, the message's key words): one per kind of mistake
MISTAKES = {
    "config": (train, ["optim.lr=-1"], "Error: optim.lr=-1 must be > 0"),
    "data": (train, ["data.train_size=-5"], "Error: data.train_size=-5 must be a number of images >= 1"),
    # the issue's own example: a wrong class count used to die in cross_entropy after 20 lines of stack
    "num_classes": (train, ["data.num_classes=5", "data.img_size=16", "data.train_size=64"],
                    "Error: data.num_classes=5 but the train split of digits has labels from 0 to 9 (10 classes): "
                    "set data.num_classes=10"),
    "missing file": (evaluate, ["ckpt_path=no/such.ckpt"], "Error: ckpt_path=no/such.ckpt: no such checkpoint"),
}


@pytest.mark.parametrize("kind", sorted(MISTAKES))
def test_user_mistake_is_one_error_line(kind, tmp_path):
    task, overrides, message = MISTAKES[kind]
    try:
        msg = refusal(task, compose_cfg(task.__name__, ["logger=none", *overrides], tmp_path / "out"))
    finally:
        GlobalHydra.instance().clear()
    assert message in msg


@pytest.mark.slow_process
def test_user_mistake_prints_message_without_traceback(tmp_path):
    """The one command line of this file, two jobs at once: each prints the Error line without a traceback, exit
    code 1, and each made its own run dir (two jobs started in the same second get their own dirs). Both are processes
    forked from this one (``reliability_utils.Forked``: no 15 s of imports each); a fresh interpreter's start is
    ``test_docs_console``'s."""
    e = env(HYDRA_FULL_ERROR="")
    procs = [Forked(train_main, ["optim.lr=-1", "logger=none"], tmp_path, e, merge=False) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1, err[-3000:]
        assert "Error: optim.lr=-1 must be > 0" in err, err[-3000:]
        assert "Traceback" not in err and 'File "' not in err, err[-3000:]
    dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(dirs) == 2 and all((d / ".hydra" / "config.yaml").is_file() for d in dirs)


def test_hydra_full_error_still_shows_the_stack(tmp_path, main_cli):
    code, _, err = main_cli(train_main, "optim.lr=-1", f"hydra.run.dir={tmp_path / 'out'}", env={"HYDRA_FULL_ERROR": "1"})
    assert code == 1
    assert "Traceback" in err and "vitlab.errors.ConfigError: optim.lr=-1 must be > 0" in err
    assert "in check_positive" in err  # where it was raised
