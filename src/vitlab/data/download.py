"""Fetch and unpack an official archive only when asked (``data.download=true``), checked and safely.

- The archive is fetched to ``<root>/<name>.part`` and renamed once its MD5 matches the official one;
  an archive already in ``<root>`` is checked the same way and used without the network.
- Extraction refuses any member that would land outside the target folder (absolute paths, ``..``,
  links pointing out, device files), so a hostile archive cannot overwrite anything else.
- Without a network the error says which file to fetch by hand and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from vitlab.data.files import DatasetFormatError, DatasetNotFoundError


class UnsafeArchiveError(DatasetFormatError):
    """An archive member would be written outside the extraction folder."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, md5: str | None) -> None:
    if md5 is None:
        return
    got = md5sum(path)
    if got != md5:
        raise DatasetFormatError(
            f"{path} has MD5 {got}, but the official archive's is {md5}: the file is incomplete or a different "
            "release. Delete it and download it again."
        )


def _is_within(base: Path, target: Path) -> bool:
    base, target = os.path.realpath(base), os.path.realpath(target)
    return os.path.commonpath([base, target]) == base


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract a tar archive into ``dest``; any member that would escape ``dest`` aborts before anything is written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = dest / m.name
            if os.path.isabs(m.name) or not _is_within(dest, target):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} would be written outside {dest}; refusing to extract")
            if m.issym() or m.islnk():
                link = (target.parent / m.linkname) if m.issym() else dest / m.linkname
                if os.path.isabs(m.linkname) or not _is_within(dest, link):
                    raise UnsafeArchiveError(
                        f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest}; refusing to extract"
                    )
            if m.isdev() or m.isfifo():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or FIFO; refusing to extract")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: the stdlib's own second check
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover
            tar.extractall(dest, members=members)
    return [m.name for m in members]


def fetch_archive(url: str, root: Path, filename: str, md5: str | None, expected: str, timeout: float = 30.0) -> Path:
    """``<root>/<filename>``, checked against ``md5``: reused if present, else downloaded from ``url``.

    ``expected`` describes what must end up in ``root``; it goes into the error when the network fails.
    """
    root.mkdir(parents=True, exist_ok=True)
    dest = root / filename
    if dest.is_file():
        check_md5(dest, md5)
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except Exception as e:
        part.unlink(missing_ok=True)
        raise DatasetNotFoundError(
            f"data.download=true could not fetch {url} ({type(e).__name__}: {e}). This machine may have no network.\n"
            f"Fetch it by hand (MD5 {md5}) on a machine that has one, then either\n"
            f"  - put the archive at {dest} and run again with data.download=true (it is checked and extracted), or\n"
            f"  - extract it yourself so that {expected} exists, and run with data.download=false."
        ) from e
    try:
        check_md5(part, md5)
    except DatasetFormatError:
        part.unlink(missing_ok=True)
        raise
    part.rename(dest)
    return dest
