"""One owner per run directory: an exclusive lock held for the life of a run (or of a sweep).

Two processes writing one run directory corrupt each other without a word: the second resumes from the
first's in-flight ``last.ckpt``, both append to ``csv/metrics.csv``, both rewrite ``.hydra/`` and
``metrics.json``. So a vitlab process that writes a run or sweep directory first takes
``fcntl.flock(LOCK_EX)`` on ``<dir>/.vitlab.lock`` and keeps it until it is done; it writes its pid, host and
task into that file, so that a second process can say who owns the directory.

- The kernel drops a flock when its holder exits in any way (SIGKILL, OOM kill, crash), so a lock is never
  stale: ``resume=auto`` after a kill takes the directory over. The file itself stays (deleting it would let
  two processes lock two different files of the same name).
- Held per process and re-entrant: the Hydra callback takes it before Hydra writes ``.hydra/``
  (``vitlab.utils.hydra_callbacks.RunGuard``) and the task takes it again (in-process runs from tests,
  notebooks and ``vitlab.vtab`` go through the task only).
- Only global rank 0 of a distributed job owns the directory: the DDP ranks that Lightning re-launches with
  the same ``hydra.run.dir`` (and the SLURM tasks of one job) work under their rank 0's lock.
- A forked child (a DataLoader worker) closes its copies of the lock descriptors at once: otherwise an orphaned
  worker of a SIGKILLed run would keep the flock for seconds, and ``resume=auto`` would be refused meanwhile.
- A file system without flock support (some network mounts) gets a warning and no lock, never a refused run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitlab.errors import RunDirBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".vitlab.lock"
#: ranks set by torchrun / Lightning's launcher / SLURM / LSF: any non-zero one works under rank 0's lock
RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")

_held: dict[str, list] = {}  # real path of the directory -> [fd or None, re-entry count]
_mutex = threading.Lock()


def is_secondary_rank(environ: dict[str, str] | None = None) -> bool:
    """True in a process of a distributed job that is not global rank 0 (it shares rank 0's directory)."""
    env = os.environ if environ is None else environ
    for key in RANK_VARS:
        try:
            if int(env.get(key) or 0) != 0:
                return True
        except ValueError:
            continue
    return False


def holder(run_dir: str | Path) -> dict | None:
    """What the owner of ``run_dir`` wrote into the lock file (pid, host, task, since), or None."""
    try:
        return json.loads(Path(run_dir, LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not written its pid yet)"
    return (f"pid {info.get('pid')} on host {info.get('host')} ({info.get('task')}, since {info.get('since')})")


def acquire(run_dir: str | Path, key: str = "hydra.run.dir", task: str | None = None) -> None:
    """Own ``run_dir`` (created if missing) until :func:`release`; raise :class:`RunDirBusyError` naming the
    directory and the holder's pid if another live process owns it."""
    if is_secondary_rank():
        return
    d = Path(run_dir).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(d)
    with _mutex:
        if real in _held:
            _held[real][1] += 1
            return
        if fcntl is None:  # pragma: no cover - Windows
            _held[real] = [None, 1]
            return
        fd = os.open(os.path.join(real, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = holder(real)
            for _ in range(20):  # the owner writes its pid right after locking: give it a moment
                if info:
                    break
                time.sleep(0.05)
                info = holder(real)
            raise RunDirBusyError(
                f"{key}={real} is in use by {_describe(info)}: two processes writing one run directory overwrite "
                "each other's checkpoints, logs and metrics. Wait until it has finished (a killed process frees "
                f"the directory at once, and resume=auto then continues from its last checkpoint), or choose "
                f"another directory ({key}=<new dir>, or leave {key} unset for a fresh one)."
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            warnings.warn(f"{real}: this file system does not support locks ({e.strerror}); vitlab cannot stop a "
                          "second process from writing into the same run directory", stacklevel=2)
            _held[real] = [None, 1]
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "task": task or _task_name(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _held[real] = [fd, 1]


def release(run_dir: str | Path) -> None:
    """Give up one hold of ``run_dir``; the lock goes when the last hold of this process does."""
    real = os.path.realpath(Path(run_dir).expanduser())
    with _mutex:
        entry = _held.get(real)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[real]
        if entry[0] is not None:
            os.close(entry[0])  # closing the only descriptor drops the flock


def _forget_in_child() -> None:
    """After ``fork``: the child does not own the parent's run. Closing its copies leaves the parent's lock held
    (a flock goes with the last descriptor of the open file) but lets it go the moment the parent dies."""
    global _mutex
    _mutex = threading.Lock()  # another thread may have held it at fork time
    for fd, _ in _held.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def owns(run_dir: str | Path) -> bool:
    """Whether this process holds ``run_dir`` now."""
    return os.path.realpath(Path(run_dir).expanduser()) in _held


@contextmanager
def own(run_dir: str | Path, key: str = "hydra.run.dir", task: str | None = None) -> Iterator[None]:
    """``with own(dir):`` hold ``run_dir`` for the block (see :func:`acquire`)."""
    acquire(run_dir, key=key, task=task)
    try:
        yield
    finally:
        release(run_dir)


def _task_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else Path(sys.argv[0] or "python").name
