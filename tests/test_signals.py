"""Preemption and Ctrl-C on a real training process: a checkpoint is saved, the exit is clean, the run resumes."""

from __future__ import annotations

import csv
import os
import signal
import stat

import pytest
import torch

from reliability_utils import env, fork_train, kill_at_checkpoint, train_args
from vitlab.wandb_io.offline import find_offline_runs, read_offline_run


def _loadable(path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and ckpt["optimizer_states"]
    return int(ckpt["global_step"])


def _interrupt(tmp_path, sig: signal.Signals, *args: str, min_step: int, env=None):
    """Start a real training job, send ``sig`` once ``last.ckpt`` holds step >= ``min_step``, and check that the
    process exits with 128 + sig and leaves a loadable checkpoint at least as new as the one seen."""
    run_dir = tmp_path / "job"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    p = fork_train(run_dir, *args, cwd=tmp_path, environ=env)
    seen = kill_at_checkpoint(p, ckpt, min_step=min_step, sig=sig)
    out = p.stdout.read()
    assert p.returncode == 128 + sig, out[-3000:]
    assert _loadable(ckpt) >= seen
    return run_dir, ckpt, seen, out


@pytest.mark.slow_process
def test_sigusr1_under_slurm_saves_requeues_and_resumes(tmp_path, main_cli):
    """SLURM's `--signal=USR1@90`: save last.ckpt at the end of the step, `scontrol requeue`, exit 138; resume."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # stands in for SLURM's CLI: records how vitlab called it
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/requeued\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    e = env(SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = ("logger=default", "trainer.log_every_n_steps=1")  # CSV + W&B offline
    run_dir, ckpt, seen, out = _interrupt(tmp_path, signal.SIGUSR1, *args, min_step=2, env=e)
    assert "SIGUSR1 at epoch" in out and "Traceback" not in out
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
    # The requeued job runs the same command in the same directory and finishes from the checkpoint.
    from vitlab.train import main  # the requeued job: vitlab.train's main, in this process (main_cli)

    code, out, err = main_cli(main, *train_args(run_dir, *args),
                              env={"SLURM_JOB_ID": "4242", "PATH": e["PATH"], "WANDB_MODE": "offline"})
    assert code == 0, err[-3000:]
    assert "resuming from" in out + err  # on the console (in-process, pytest's capture sees the log on stdout)
    assert _loadable(ckpt) == 18
    # One W&B run continued (same id, both parts finished), and the CSV curve kept its first part.
    parts = [read_offline_run(d) for d in find_offline_runs(run_dir / "wandb")]
    assert len(parts) == 2 and parts[0].run_id == parts[1].run_id
    assert all(p.exit_code is not None for p in parts)
    with open(run_dir / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert min(steps) < seen and max(steps) >= 17


@pytest.mark.slow
def test_ctrl_c_leaves_usable_checkpoint_and_finished_wandb_run(tmp_path):
    run_dir, _, _, out = _interrupt(tmp_path, signal.SIGINT, "logger=default", min_step=2)
    assert "SIGINT at epoch" in out
    (wb,) = find_offline_runs(run_dir / "wandb")
    assert read_offline_run(wb).exit_code is not None, "the W&B run was not finished"


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(tmp_path):
    _, ckpt, _, out = _interrupt(tmp_path, signal.SIGTERM, "callbacks.model_checkpoint.last_every_n_train_steps=4",
                                 min_step=4)
    assert not list(ckpt.parent.glob("*.tmp"))
