"""A user's mistake on the command line prints its message and the fix, not a Python traceback (issue 14);
``HYDRA_FULL_ERROR=1`` still shows the whole stack. Exit code 1 either way."""

from __future__ import annotations

import sys

import pytest

from reliability_utils import env, run, train_cmd

#: (task command, the message's key words): one per kind of mistake
MISTAKES = {
    "config": (["vitlab.train", "optim.lr=-1"], "Error: optim.lr=-1 must be > 0"),
    "data": (["vitlab.train", "data.train_size=-5"], "Error: data.train_size=-5 must be positive"),
    # the issue's own example: a wrong class count used to die in cross_entropy after 20 lines of stack
    "num_classes": (["vitlab.train", "data.num_classes=5"], "Error: data.num_classes=5 but the train split of digits "
                    "has labels from 0 to 9 (10 classes): set data.num_classes=10"),
    "missing file": (["vitlab.evaluate", "ckpt_path=no/such.ckpt"], "Error: ckpt_path=no/such.ckpt: no such checkpoint"),
}


def _cmd(module_and_args: list[str], out_dir) -> list[str]:
    module, *args = module_and_args
    if module == "vitlab.train":
        return train_cmd(out_dir, *args)
    return [sys.executable, "-m", module, *args, f"hydra.run.dir={out_dir}"]


@pytest.mark.parametrize("kind", [pytest.param("data", marks=pytest.mark.slow), "config", "num_classes", "missing file"])
def test_user_mistake_prints_message_without_traceback(kind, tmp_path):
    cmd, message = MISTAKES[kind]
    res = run(_cmd(cmd, tmp_path / "out"), tmp_path, env=env(HYDRA_FULL_ERROR=""), timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    assert message in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and 'File "' not in res.stderr, res.stderr[-3000:]


def test_hydra_full_error_still_shows_the_stack(tmp_path):
    cmd, message = MISTAKES["config"]
    res = run(_cmd(cmd, tmp_path / "out"), tmp_path, env=env(HYDRA_FULL_ERROR="1"), timeout=300)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "vitlab.errors.ConfigError: optim.lr=-1 must be > 0" in res.stderr
    assert "in validate_train_cfg" in res.stderr  # where it was raised
