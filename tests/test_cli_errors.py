"""A user's mistake on the command line prints its message and the fix, not a Python traceback (issue 14);
``HYDRA_FULL_ERROR=1`` still shows the whole stack. Exit code 1 either way.

The formatting is :func:`vitlab.tasks.run_task`, a plain function every task's ``hydra_app`` calls: each kind of
mistake is checked through it in-process; two command lines check the process end to end.
"""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg, refusal
from reliability_utils import env, run, train_cmd
from vitlab.evaluate import evaluate
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


def test_user_mistake_prints_message_without_traceback(tmp_path):
    res = run(train_cmd(tmp_path / "out", "optim.lr=-1"), tmp_path, env=env(HYDRA_FULL_ERROR=""), timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Error: optim.lr=-1 must be > 0" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and 'File "' not in res.stderr, res.stderr[-3000:]


def test_hydra_full_error_still_shows_the_stack(tmp_path):
    res = run(train_cmd(tmp_path / "out", "optim.lr=-1"), tmp_path, env=env(HYDRA_FULL_ERROR="1"), timeout=300)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "vitlab.errors.ConfigError: optim.lr=-1 must be > 0" in res.stderr
    assert "in check_positive" in res.stderr  # where it was raised
