"""Walking a dataset tree that may hold symlinks, without hanging, relabelling images or leaving the root.

A dataset tree is data from someone else: its links are followed only while they stay inside
``data.root``, and each folder is walked once, identified by (device, inode), so a link back up the tree
(``cat/loop -> ..``) can neither multiply the images under the wrong class nor, with two such loops, walk
for ever. What is skipped is named in a warning. Importable without torch (the config resolvers use it).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from pathlib import Path


def _within(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


def _dir_key(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _linked_dir_problem(link: str, root: str) -> str | None:
    """Why the linked folder ``link`` must not be walked (it resolves outside ``root``), or None."""
    real = os.path.realpath(link)
    if not _within(root, real):
        return (
            f"links to {real}, outside data.root ({root}): skipped. A dataset tree is data, and its links must stay "
            "inside it; copy or bind-mount that folder under data.root, or point data.root at it"
        )
    return None


def list_class_dirs(directory: Path, root: Path | str | None = None) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory`` (the classes).

    A linked sub-folder that resolves outside ``root`` (default: ``directory``), or back onto ``directory``
    or a folder above it (a loop: that "class" would hold every other class's images), is skipped with a
    warning naming it.
    """
    root_real = os.path.realpath(root if root is not None else directory)
    above = ancestor_keys(directory, root_real)
    names = []
    for e in os.scandir(directory):
        if e.name.startswith(".") or not e.is_dir():
            continue
        if e.is_symlink():
            why = _linked_dir_problem(e.path, root_real)
            if why is None and _dir_key(e.path) in above:
                why = f"links back to {os.path.realpath(e.path)}, a folder above it (a symlink loop): skipped"
            if why is not None:
                warnings.warn(f"class folder {e.path} {why}", stacklevel=2)
                continue
        names.append(e.name)
    return sorted(names)


def ancestor_keys(directory: Path | str, root_real: str) -> set[tuple[int, int]]:
    """(device, inode) of ``directory`` and of every folder above it up to ``root_real``."""
    keys, d = set(), os.path.realpath(directory)
    while True:
        keys.add(_dir_key(d))
        if d == root_real or not _within(root_real, d) or d == os.path.dirname(d):
            return keys
        d = os.path.dirname(d)


def walk_files(
    top: Path | str,
    extensions: tuple[str, ...],
    root: Path | str,
    seen: set[tuple[int, int]] = frozenset(),
    elsewhere: dict[str, str] | None = None,
) -> list[str]:
    """Sorted paths of the non-hidden ``extensions`` files under ``top``, following links to folders safely.

    ``os.walk(followlinks=True)`` has no cycle check: one link to ``..`` walks the whole tree again ~40
    times under the wrong class (until the kernel's link limit), two loops walk it exponentially often.
    Here every folder is walked once, by (device, inode), real folders before linked ones: a link to a
    folder already walked or listed in ``seen`` (the folders above ``top``) is a loop and is skipped with
    a warning, as is a linked folder that resolves outside ``root`` or into another class folder
    (``elsewhere``: real path -> class name), whose images would otherwise be counted twice, once under
    the wrong label.
    """
    root_real = os.path.realpath(root)
    seen = set(seen) | {_dir_key(top)}
    files, stack, links = [], [str(top)], deque()
    while stack or links:
        if not stack:  # every real folder first, so a link never takes the place of the folder it points to
            link = links.popleft()
            why = _linked_dir_problem(link, root_real)
            real = os.path.realpath(link)
            other = next((c for r, c in (elsewhere or {}).items() if _within(r, real)), None)
            if why is None and other is not None:
                why = f"links to {real}, inside class folder {other!r}: skipped, its images keep their own label"
            try:
                key = _dir_key(link)
            except OSError:
                continue  # dangling or unreadable now
            if why is None and key in seen:
                why = (
                    f"leads to {real}, a folder already walked (a symlink loop, or a second way to the same "
                    "folder): skipped, so its images count once"
                )
            if why is not None:
                warnings.warn(f"{link} {why}", stacklevel=2)
                continue
            seen.add(key)
            stack.append(link)
            continue
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            warnings.warn(f"cannot list {d} ({e}): its images are left out", stacklevel=2)
            continue
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:  # regular or not: the loader names and refuses what is not (data.skip_corrupt)
                if e.name.lower().endswith(extensions) and not e.name.startswith("."):
                    files.append(e.path)
            elif e.is_symlink():
                links.append(e.path)  # walked once no real folder is left, in the order found
            else:
                try:
                    key = _dir_key(e.path)
                except OSError:
                    continue
                if key in seen:  # a bind mount or the like looping back: still walk each folder once
                    warnings.warn(f"{e.path} is a folder already walked (a loop): skipped", stacklevel=2)
                    continue
                seen.add(key)
                stack.append(e.path)
    return sorted(files)
