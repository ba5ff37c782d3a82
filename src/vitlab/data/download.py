"""Fetch and unpack an official archive only when asked (``data.download=true``), checked and safely.

- The archive is fetched to ``<root>/<name>.part`` and renamed once its MD5 matches the official one;
  an archive already in ``<root>`` is checked the same way and used without the network.
- Extraction refuses any member that would land outside the target folder (absolute paths, ``..``,
  links pointing out, chains of links that lead out once extracted, device files), before writing
  anything, so a hostile archive cannot overwrite anything else.
- Without a network the error says which file to fetch by hand and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from vitlab.errors import DatasetFormatError, DatasetNotFoundError, UnsafeArchiveError


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


def _is_within(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


class _Extraction:
    """The folder tree as it will be while an archive is extracted: the links written so far by earlier
    members, over what is already on disk. Paths resolve as the kernel would resolve them then."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # absolute path of a link the archive creates -> its target

    def readlink(self, path: str) -> str | None:
        if path in self.links:
            return self.links[path]
        return os.readlink(path) if os.path.islink(path) else None

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """``path`` (absolute) with every link followed (but the last component's, unless ``follow_last``)."""
        todo, cur, hops = [c for c in reversed(path.split("/")) if c], "/", 0
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":
                cur = os.path.dirname(cur)  # cur has no links left in it: its parent is the physical one
                continue
            nxt = os.path.join(cur, part)
            target = self.readlink(nxt) if (todo or follow_last) else None
            if target is None:
                cur = nxt
                continue
            hops += 1
            if hops > 40:  # the kernel's own limit (ELOOP)
                raise UnsafeArchiveError(f"{path}: too many levels of symbolic links")
            if target.startswith("/"):
                cur = "/"
            todo.extend(c for c in reversed(target.split("/")) if c)
        return cur


def check_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse (:class:`UnsafeArchiveError`) an archive with any member that would be written, or would link,
    outside ``dest`` when the members are extracted in order. Writes nothing.

    A lexical check is not enough: ``a -> .`` then ``a/b -> ..`` are each harmless on their own, but once
    ``a`` exists ``a/b`` is ``dest/b``, a link to dest's parent, and a later ``a/b/x`` lands outside. So the
    extraction is simulated member by member, following the links created so far (and any already in
    ``dest``) as the kernel would, and every path is checked where it resolves. This does not rely on the
    stdlib's ``filter="data"``, which only Pythons >= 3.10.12 / 3.11.4 / 3.12 have (``requires-python``
    allows 3.10.0), and which stops such a chain only after writing its first link.
    """
    base = os.path.realpath(dest)
    tree = _Extraction()

    def refuse(m: tarfile.TarInfo, why: str) -> None:
        raise UnsafeArchiveError(f"{archive}: member {m.name!r} {why}; refusing to extract (nothing was written)")

    links = []
    for m in members:
        parts = m.name.split("/")
        if os.path.isabs(m.name) or ".." in parts:
            refuse(m, f"would be written outside {dest}")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            refuse(m, "is a device or FIFO")
        where = tree.resolve(os.path.join(base, m.name), follow_last=False)
        if not _is_within(base, where) or (where == base and not m.isdir()):
            refuse(m, f"would be written at {where}, outside {dest}")
        if m.issym() or m.islnk():
            tree.links.pop(where, None)
        else:  # a file or folder is written through a link already at its place
            target = tree.resolve(where)
            if not _is_within(base, target):
                refuse(m, f"would be written through a link to {target}, outside {dest}")
        if m.issym():
            target = tree.resolve(os.path.join(os.path.dirname(where), m.linkname))
            if not _is_within(base, target):
                refuse(m, f"links to {m.linkname!r}, which resolves to {target}, outside {dest}")
            tree.links[where] = m.linkname
            links.append((m, where))
        elif m.islnk():  # tarfile hard-links dest/<linkname>, following links
            target = tree.resolve(os.path.join(base, m.linkname))
            if not _is_within(base, target):
                refuse(m, f"hard-links {m.linkname!r}, which resolves to {target}, outside {dest}")
    for m, where in links:  # once all are written, each symlink still points inside (a later link can redirect it)
        target = tree.resolve(where)
        if not _is_within(base, target):
            refuse(m, f"links to {m.linkname!r}, which resolves to {target} once extracted, outside {dest}")


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract a tar archive into ``dest``; any member that would escape ``dest`` aborts before anything is written.

    :func:`check_members` decides on every Python; the stdlib's data filter, where it exists, is a second check.
    """
    dest = Path(dest)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        check_members(archive, members, dest)
        dest.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: the stdlib's own second check
            tar.extractall(dest, members=members, filter="data")
        else:  # what the data filter does to modes: no setuid/setgid/sticky bits, no group/other write
            for m in members:
                if m.isreg() or m.isdir():
                    m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
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
