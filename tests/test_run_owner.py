"""One owner per run directory (issue 11, item 4): a second process in a live run's (or sweep's) directory stops
before it touches anything, naming the directory and the owner's pid; the owner finishes untouched; a killed
owner's directory is taken over, so ``resume=auto`` after SIGKILL still works."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability_utils import TINY, Forked, fork_train, metrics, train_args, wait_for
from reliability_utils import env as _env  # tests/ on PYTHONPATH: reliability_utils.Gate
from reliability_utils import gate as _gate
from vitlab.errors import RunDirBusyError
from vitlab.train import main
from vitlab.utils.run_owner import acquire, holder, own, owns, release


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---- the lock itself (in-process + a tiny holder process: no training) ------------------------------------
_HOLD = """
import sys, time
from pathlib import Path
from vitlab.utils.run_owner import acquire
acquire(sys.argv[1]); Path(sys.argv[2]).write_text("held"); time.sleep(120)
"""


def test_lock_is_reentrant_in_one_process_and_refused_to_another(tmp_path):
    d = tmp_path / "run"
    with own(d):
        with own(d):  # the Hydra callback and the task both hold it: one lock
            assert owns(d)
        assert owns(d)
        assert holder(d)["pid"] == os.getpid()
    assert not owns(d)

    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(d), str(ready)], env=_env())
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert p.poll() is None and time.monotonic() - t0 < 60, "holder did not start"
            time.sleep(0.05)
        with pytest.raises(RunDirBusyError) as err:
            acquire(d)
        msg = str(err.value)
        assert str(d.resolve()) in msg and f"pid {p.pid}" in msg and "hydra.run.dir=" in msg
        assert not owns(d)
    finally:
        p.kill()
        p.wait()
    acquire(d)  # the kernel dropped the dead holder's lock: taken over at once
    try:
        assert holder(d)["pid"] == os.getpid()
    finally:
        release(d)


def test_a_forked_worker_does_not_keep_a_killed_owners_lock(tmp_path):
    """A DataLoader worker is a fork of the run: once the run is gone, its dir must be free although the worker lives."""
    d, ready = tmp_path / "run", tmp_path / "ready"
    child = os.fork() if hasattr(os, "fork") else pytest.skip("no fork")
    if child == 0:  # pragma: no cover - the owner: lock, fork a long-lived "worker", then exit at once
        try:
            acquire(d)
            if os.fork() == 0:
                assert not owns(d)
                time.sleep(10)
                os._exit(0)
            ready.write_text("")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert ready.exists()
    acquire(d)  # with the worker's copy of the lock open, this was refused for as long as the worker lived
    try:
        assert holder(d)["pid"] == os.getpid()
    finally:
        release(d)


# ---- two real training processes ----------------------------------------------------------------------------
# The owner is a real process (its own pid; forked: reliability_utils.Forked); the second run is vitlab.train's
# main in this process (main_cli).
@pytest.mark.slow_process
def test_second_run_in_a_live_run_dir_is_refused_and_the_first_finishes(tmp_path, main_cli):
    run_dir, gate = tmp_path / "job", tmp_path / "gate"
    gate.mkdir()
    first = fork_train(run_dir, *_gate(gate), cwd=tmp_path)
    try:
        wait_for(lambda: (gate / "reached").exists(), first, what="the first run at step 3")
        before = _snapshot(run_dir)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()

        code, out, err = main_cli(main, *train_args(run_dir), env={"HYDRA_FULL_ERROR": None})
        assert code == 1, out[-2000:] + err[-2000:]
        assert f"hydra.run.dir={run_dir.resolve()} is in use by pid {first.pid}" in err, err[-2000:]
        assert "Traceback" not in err
        assert "resuming" not in out + err  # it never got as far as reading last.ckpt
        assert _snapshot(run_dir) == before, "the refused process changed the live run's files"
    finally:
        (gate / "open").write_text("")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert metrics(run_dir)["time/wall_s"] > 0
    rows = list(csv.reader((run_dir / "csv" / "metrics.csv").open()))
    assert rows[0][0] != rows[1][0] and sum(r == rows[0] for r in rows) == 1  # one header, one writer


@pytest.mark.slow_process
def test_sigkill_frees_the_dir_and_resume_auto_takes_it_over(tmp_path, main_cli):
    run_dir, gate = tmp_path / "job", tmp_path / "gate"
    gate.mkdir()
    first = fork_train(run_dir, *_gate(gate), cwd=tmp_path)
    wait_for(lambda: (gate / "reached").exists(), first, what="the first run at step 3")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=120)
    assert holder(run_dir)["pid"] == first.pid  # the dead owner's file is still there...
    (gate / "open").write_text("")
    code, out, err = main_cli(main, *train_args(run_dir, *_gate(gate)))
    assert code == 0, err[-3000:]
    assert "resuming from" in out + err  # ...and its lock went with it
    assert metrics(run_dir)["time/wall_s"] > 0
    assert holder(run_dir)["pid"] != first.pid and holder(run_dir)["pid"] == os.getpid()


# ---- two sweeps into one sweep directory ---------------------------------------------------------------------
@pytest.mark.slow_process
def test_second_sweep_into_a_live_sweep_dir_is_refused_and_the_first_writes_its_summary(tmp_path, main_cli):
    sweep_dir, gate = tmp_path / "sweep", tmp_path / "gate"
    gate.mkdir()
    args = ["--multirun", *TINY, f"hydra.sweep.dir={sweep_dir}", "seed=1"]
    first = Forked(main, [*args, *_gate(gate)], tmp_path, _env())
    try:
        wait_for(lambda: (gate / "reached").exists(), first, what="the first sweep's job at step 3")
        code, out, err = main_cli(main, *args, env={"HYDRA_FULL_ERROR": None})
        assert code == 1, out[-2000:] + err[-2000:]
        assert f"hydra.sweep.dir={sweep_dir.resolve()} is in use by pid {first.pid}" in err
        assert "Traceback" not in err
        assert "Launching" not in out + err  # refused before any job started
    finally:
        (gate / "open").write_text("")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    rows = json.loads((sweep_dir / "summary.json").read_text())
    assert len(rows) == 1 and (sweep_dir / "summary.md").is_file()
    assert (sweep_dir / "0" / "metrics.json").is_file()
