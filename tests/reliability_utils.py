"""Helpers shared by the reliability tests: tiny CLI runs, killing a real process at a real checkpoint."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import call_main, module_argv
from vitlab.train import main as train_main

#: a training run of a few seconds: 6 batches of 32 per epoch at 16 px, one val batch, step checkpoints every 2 steps
TINY = [
    "data.batch_size=32",
    "data.train_size=192",
    "data.img_size=16",
    "data.eval_batch_size=200",
    "trainer.limit_val_batches=1",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.last_every_n_train_steps=2",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
]
STEPS_PER_EPOCH = 6
TESTS = Path(__file__).resolve().parent


def env(**extra: str) -> dict[str, str]:
    """A CLI subprocess's environment: offline, one thread, and tests/ importable (``reliability_utils.Gate``)."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
            "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "PYTHONPATH": path, **extra}


def train_args(run_dir: Path, *args: str) -> list[str]:
    """The arguments of a :data:`TINY` ``vitlab.train`` job in ``run_dir`` (for ``main_cli`` or :func:`train_cmd`)."""
    return [*TINY, f"hydra.run.dir={run_dir}", *args]


def train_cmd(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "vitlab.train", *train_args(run_dir, *args)]


def run(cmd: list[str], cwd: Path, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=kw.pop("env", None) or env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def start(cmd: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=kw.pop("env", None) or env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


class Forked:
    """``python -m <task> args`` as a real process (its own pid, signals, locks, rlimits), forked from this test
    process, which has imported torch, Lightning and vitlab already: the child starts at the task's ``main``
    instead of paying the 12-15 s of imports a fresh interpreter does. The interface is the part of
    ``subprocess.Popen`` the tests use (``start(..., stdout=PIPE, stderr=STDOUT)``): ``pid``, ``poll``, ``wait``,
    ``send_signal``, ``kill``, ``returncode``, ``communicate`` and ``stdout.read()`` (the console so far).
    The command line's own start (a fresh interpreter's imports, console and settings) is covered by
    ``test_docs_console``, and by ``test_ddp``'s second rank, which Lightning starts as ``python -m vitlab.train``."""

    def __init__(self, main, args: list[str], cwd: Path, env: dict[str, str], preexec=None,
                 merge: bool = True) -> None:
        fds = [tempfile.mkstemp(prefix=f"forked-{name}-", suffix=".log", dir=cwd) for name in ("out", "err")[:2 - merge]]
        self.args, self.returncode = [main.__module__, *args], None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: never returns into pytest
            code = 1
            try:
                os.dup2(fds[0][0], 1)
                os.dup2(fds[-1][0], 2)
                code = _child(main, args, cwd, env, preexec)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        for fd, _ in fds:
            os.close(fd)
        self.pid = pid
        # read as the child writes, like a pipe: stdout (with stderr merged in, as ``start`` does), stderr
        self.stdout, self.stderr = [open(path) for _, path in fds] + [None] * merge  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        t0 = time.monotonic()
        while self.poll() is None:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        self.wait(timeout)
        return self.stdout.read(), self.stderr and self.stderr.read()

    def result(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Wait, and return what ``subprocess.run(..., capture_output=True, text=True)`` would."""
        out, err = self.communicate(timeout)
        return subprocess.CompletedProcess(self.args, self.returncode, out, err)


def _child(main, args: list[str], cwd: Path, env: dict[str, str], preexec) -> int:
    """The forked child, before the task's ``main``: what a fresh interpreter would have (its own console on the
    inherited descriptors 1 and 2, default signal handlers and warnings, no pytest logging, the given
    environment, directory and argv), then ``main``."""
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = logging.getLogger()
    for h in root.handlers[:]:  # pytest's capture handlers
        root.removeHandler(h)
    for lg in logging.root.manager.loggerDict.values():  # handlers made on pytest's captured streams
        for h in getattr(lg, "handlers", []):
            if type(h) is logging.StreamHandler:
                h.setStream(sys.stderr)
    warnings.showwarning = warnings._showwarning_orig  # pytest records warnings; a real process prints them
    warnings._showwarnmsg_impl = _print_warning
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # as ``python -m <module>`` has them: what Lightning's DDP launcher re-runs for the other ranks
    sys.argv = module_argv(main, args)
    sys.modules["__main__"].__spec__ = importlib.util.find_spec(main.__module__)
    GlobalHydra.instance().clear()
    if preexec is not None:
        preexec()
    if "OMP_NUM_THREADS" in env:  # what a fresh interpreter's torch reads at its start
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    code, tail = call_main(main)
    sys.stderr.write(tail)
    return code


def _print_warning(msg) -> None:
    sys.stderr.write(warnings._formatwarnmsg(msg))


def fork_train(run_dir: Path, *args: str, cwd: Path, environ: dict[str, str] | None = None, **kw) -> Forked:
    """A :data:`TINY` ``vitlab.train`` job in ``run_dir`` as a real (forked) process: :class:`Forked`."""
    return Forked(train_main, train_args(run_dir, *args), cwd, environ or env(), **kw)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 300, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def kill_at_checkpoint(proc: subprocess.Popen, ckpt: Path, min_step: int = 1, sig: int = signal.SIGKILL) -> int:
    """Wait until ``ckpt`` exists with global_step >= min_step, then send ``sig``; return that step."""
    def ready() -> bool:
        try:
            return ckpt.is_file() and ckpt_step(ckpt) >= min_step
        except Exception:  # noqa: BLE001 - replaced while reading
            return False

    wait_for(ready, proc, what=f"{ckpt} at step >= {min_step}")
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return ckpt_step(ckpt)


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"{len(diff)} tensors differ between {a} and {b}, e.g. {diff[:3]}"



class InjectNaN(L.Callback):
    """``+callbacks.inject._target_=reliability_utils.InjectNaN``: the input batch of global step ``at_step``
    becomes NaN, as a corrupt image decoded to garbage would."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            batch[0].fill_(float("nan"))


class InjectInfGrad(L.Callback):
    """``+callbacks.inject._target_=reliability_utils.InjectInfGrad``: at global step ``at_step`` one gradient
    becomes inf after a finite loss (an overflow in backward)."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.at_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


class Gate(L.Callback):
    """``+callbacks.gate._target_=reliability_utils.Gate +callbacks.gate.dir=<d>`` (:func:`gate`): at global step
    ``at_step`` (after the step-2 checkpoint) write ``<d>/reached`` and wait until ``<d>/open`` exists, so a test
    knows the run is live (and can kill it there: no race with the end of training)."""

    def __init__(self, dir: str, at_step: int = 3, timeout: float = 300.0) -> None:
        self.dir, self.at_step, self.timeout = Path(dir), at_step, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        (self.dir / "reached").write_text(str(os.getpid()))
        t0 = time.monotonic()
        while not (self.dir / "open").exists() and time.monotonic() - t0 < self.timeout:
            time.sleep(0.05)


def gate(d: Path) -> list[str]:
    """The overrides that add :class:`Gate` on directory ``d`` to a training job."""
    return ["+callbacks.gate._target_=reliability_utils.Gate", f"+callbacks.gate.dir={d}"]


@contextlib.contextmanager
def one_thread():
    """In-process training on one thread, as the CLI subprocesses run (``OMP_NUM_THREADS=1``): their weights can
    then be compared bit for bit with this process's."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
