"""Read W&B offline run directories (``wandb/offline-run-*/run-*.wandb``) without a W&B account.

A ``.wandb`` file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
LevelDB-log-style 32 KiB blocks of records (crc32, length, type), each a serialised
``wandb_internal_pb2.Record``. Recent wandb releases ship no Python reader (their core is in Go), so
this module reads it: config, summary, the full history and the run's name/group/job type/tags.
It is what ``vitlab.report`` uses when a job has no ``metrics.json`` (e.g. it was synced from elsewhere).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from vitlab.errors import WandbFileError

HEADER = struct.Struct("<4sHB")
RECORD = struct.Struct("<IHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """Yield each record's payload; a truncated tail (a run killed mid-write) ends the iteration quietly."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise WandbFileError(f"{path}: {len(data)} bytes, too short to be a W&B run file")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise WandbFileError(f"{path}: not a W&B run file (header {ident!r} {magic:#x} v{version})")
    pos, pending = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD.size:  # block trailer padding
            pos += left_in_block
            continue
        crc, length, kind = RECORD.unpack_from(data, pos)
        pos += RECORD.size
        chunk = data[pos : pos + length]
        if len(chunk) < length:
            return  # truncated tail
        if kind == 0 and length == 0:  # zero padding
            pos += left_in_block - RECORD.size
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"{path}: checksum mismatch at byte {pos - RECORD.size} (file corrupt)")
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise WandbFileError(f"{path}: unknown record type {kind} at byte {pos - length - RECORD.size}")


def _value(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except ValueError:
        return value_json


def _apply(target: dict[str, Any], record) -> None:
    """A config or summary record: its updates set keys, its removes drop them."""
    for it in record.update:
        target[_key(it)] = _value(it.value_json)
    for it in record.remove:
        target.pop(_key(it), None)


def _key(item) -> str:
    return "/".join(item.nested_key) if len(item.nested_key) else item.key


@dataclass
class OfflineRun:
    """What a W&B offline run recorded."""

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def best(self, key: str, mode: str = "max") -> Any:
        vals = [r[key] for r in self.history if isinstance(r.get(key), (int, float))]
        if not vals:
            return None
        return max(vals) if mode == "max" else min(vals)


def find_run_file(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (is this a W&B run directory, e.g. wandb/offline-run-*?)")
    return files[0]


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse one offline run (the ``offline-run-*`` directory or its ``.wandb`` file)."""
    path = find_run_file(run_dir)
    run = OfflineRun(path=path)
    for raw in iter_record_bytes(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
            raise WandbFileError(f"{path}: a record does not parse ({e})") from e
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.project = r.run_id, r.display_name, r.project
            run.group, run.job_type, run.tags = r.run_group, r.job_type, list(r.tags)
            for it in r.config.update:
                run.config[_key(it)] = _value(it.value_json)
        elif kind == "config":
            _apply(run.config, rec.config)
        elif kind == "history":
            run.history.append({_key(it): _value(it.value_json) for it in rec.history.item})
        elif kind == "summary":
            _apply(run.summary, rec.summary)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    # W&B wraps each config value as {"value": v}
    run.config = {k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v) for k, v in run.config.items()}
    if not run.summary:  # offline runs may hold history only: the summary is the last value of each key
        for row in run.history:
            run.summary.update({k: v for k, v in row.items() if not k.startswith("_")})
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` / ``run-*`` directory holding a ``.wandb`` file under ``root``."""
    return sorted({p.parent for p in Path(root).rglob("run-*.wandb")})


def wait_until_finished(run_dir: str | Path, timeout_s: float = 30.0) -> OfflineRun:
    """Read a run that ``wandb.finish()`` just closed: W&B's writer process flushes the file asynchronously."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = read_offline_run(run_dir)
            if run.exit_code is not None or time.monotonic() > deadline:
                return run
        except (FileNotFoundError, WandbFileError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
