"""The console of a run: its identity, progress and final metrics, nothing twice, no third-party noise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

MAX_LINES = 60


@pytest.mark.slow_process
def test_one_step_run_prints_at_most_60_lines_each_once(tmp_path):
    """`python -m vitlab.train trainer.max_steps=1` exactly as a user types it (no W&B key, no WANDB_MODE, no
    WANDB_SILENT: W&B logs offline): a subprocess, because what is checked is the console of a real process
    (Hydra's and Lightning's handlers) and W&B's settings as a fresh process reads them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HYDRA_FULL_ERROR"}
    env.update(VITLAB_LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.run([sys.executable, "-m", "vitlab.train", "trainer.max_steps=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{out}"
    assert not [ln for ln in lines if ln.startswith("INFO: ")], "Lightning's own handler prints each line twice"
    for noise in ("litlogger", "LeafSpec", "Total FLOPs", "wandb:", "CONFIG"):
        assert noise not in out, f"{noise!r} on the console:\n{out}"
    # identity, progress, final metrics
    assert "overrides: trainer.max_steps=1" in out and "final metrics:" in out and "test/acc" in out
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    tree = (run / "config_tree.log").read_text()
    assert "CONFIG" in tree and "vit_micro" in tree  # the tree is saved, not printed
    assert "failed to start" not in out, out[-3000:]  # W&B without a key: offline, never "No API key configured"
    assert list((run / "wandb").glob("offline-run-*")), "the default logger writes an offline W&B run"
