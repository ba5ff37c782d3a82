"""Hostile files (issue 11, items 2, 3, 8, 9): each test builds the hostile file itself, tiny and fast.

A decompression bomb is refused from its header, before any pixel is decoded; only regular files are
read, with a size cap; a symlink loop in a dataset tree neither hangs the scan nor relabels images; and
an archive whose links chain out of the target is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import signal
import struct
import sys
import tarfile
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from dataset_writers import write_class_folders, write_image
from vitlab.data.catalog import folder_num_classes
from vitlab.data.download import safe_extract
from vitlab.data.files import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, load_image, scan_class_folders
from vitlab.data.folder import FolderDataModule
from vitlab.errors import DataConfigError, RefusedImageError, UnsafeArchiveError

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
FILE_DATASETS = ["folder", "imagenet", "imagenet21k", "pets", "flowers102", "vtab"]
BOMB_SIDE = 20000


# ---- the hostile files ---------------------------------------------------------------------------------
def bomb_jpeg(side: int = BOMB_SIDE) -> bytes:
    """A valid baseline greyscale JPEG of ``side`` x ``side`` mid-grey pixels, 4.7 MB for 20000^2.

    Every 8x8 block codes as DC difference 0 (``00``) + end of block (``1010``) in the standard Huffman
    tables, so four blocks are the three bytes 28 A2 8A. Header and tables come from PIL's own 8x8 file.
    """
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "JPEG", quality=50)
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    sos = data.index(b"\xff\xda")
    sos_end = sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    blocks = (side // 8) ** 2
    assert side % 8 == 0 and blocks % 4 == 0
    header = data[: sof + 5] + struct.pack(">HH", side, side) + data[sof + 9 : sos_end]
    return header + b"\x28\xa2\x8a" * (blocks // 4) + b"\xff\xd9"


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels (220 KB for 20000^2; 1.2 GB once RGB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(1), b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail, instead of hanging the suite, if the block runs longer than ``seconds`` (the bug being a hang)."""

    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_cap(extra_bytes: int):
    """Lower the data-segment limit to the current use + ``extra_bytes``, so that code reading without end
    (e.g. from /dev/zero) fails with a MemoryError here instead of taking the machine's memory."""
    used = int(re.search(r"VmData:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    old = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, old)


def peak_rss_growth(fn) -> tuple[int, object]:
    """(bytes by which the peak resident set grew while ``fn`` ran, its result or exception).

    Linux resets the process's peak RSS (VmHWM) on writing 5 to /proc/self/clear_refs, so this measures
    in-process what decoding allocated, including libjpeg's and torch's memory that tracemalloc cannot see."""
    status = Path("/proc/self/status")
    rss = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status.read_text()).group(1)) * 1024  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")
    before = rss("VmRSS")
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - returned for the caller to assert on
        out = e
    return rss("VmHWM") - before, out


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and FIFOs")


# ---- 1. decompression bombs: one limit, checked on the header, on every decode path ---------------------
@linux_only
@pytest.mark.parametrize("decoder", ["auto", "pil"])
def test_bombs_are_refused_from_the_header_within_the_memory_of_a_normal_image(tmp_path, monkeypatch, decoder):
    normal = write_image(tmp_path / "normal.jpg", 0, size=(500, 375))  # an average ImageNet photo
    jpg = tmp_path / "bomb.jpg"
    jpg.write_bytes(bomb_jpeg())
    png = tmp_path / "bomb.png"
    png.write_bytes(bomb_png())
    with monkeypatch.context() as m:  # what the headers declare, read past PIL's own guard
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(jpg).size == Image.open(png).size == (BOMB_SIDE, BOMB_SIDE)

    grew_normal, img = peak_rss_growth(lambda: load_image(normal, decoder))
    assert not isinstance(img, Exception)
    for bomb in (jpg, png):
        grew, err = peak_rss_growth(lambda b=bomb: load_image(b, decoder))
        assert isinstance(err, RefusedImageError), err
        assert str(bomb) in str(err) and "data.max_image_pixels" in str(err) and "skip_corrupt" in str(err)
        # decoded, the bomb is 1.2 GB of RGB; refused from its header it costs about its file size
        assert grew < 200 * 2**20, f"{bomb.name} ({decoder}) grew the peak RSS by {grew / 2**20:.0f} MB"
        print(f"{decoder} {bomb.name}: peak RSS +{grew / 2**20:.1f} MB (normal 500x375 image: "
              f"+{grew_normal / 2**20:.1f} MB)")


def _hw(img: Image.Image | torch.Tensor) -> tuple[int, int]:
    return tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else img.size[::-1]


@pytest.mark.parametrize("decoder", ["auto", "pil"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_one_pixel_limit_applies_to_every_format_and_decoder(tmp_path, monkeypatch, decoder, fmt):
    path = write_image(tmp_path / f"img.{fmt.lower()}", 1, size=(64, 48))
    assert _hw(load_image(path, decoder, max_image_pixels=64 * 48)) == (48, 64)  # at the limit: read
    with pytest.raises(RefusedImageError, match=rf"{path} declares 64x48 = 3,072 pixels, more than "
                                                r"data.max_image_pixels=3,071"):
        load_image(path, decoder, max_image_pixels=64 * 48 - 1)
    # Above PIL's own global limit (here lowered to 1000, so PIL alone would refuse > 2000 px), the
    # user's data.max_image_pixels still decides: one limit, not two.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _hw(load_image(path, decoder, max_image_pixels=10_000)) == (48, 64)


@linux_only
@pytest.mark.parametrize("draft_min_side", [None, 32])
def test_a_bomb_inside_a_packed_shard_is_refused_from_its_header(draft_min_side):
    """Shards come from other people too: the packed reader (plain and draft-decoding paths) goes through the
    same header check as a file on disk."""
    from vitlab.data.packed import decode

    grew, err = peak_rss_growth(lambda: decode(bomb_jpeg(), draft_min_side, "image 7 of shards/x/train"))
    assert isinstance(err, RefusedImageError), err
    assert "image 7 of shards/x/train" in str(err) and "data.max_image_pixels" in str(err)
    assert grew < 200 * 2**20, f"peak RSS grew by {grew / 2**20:.0f} MB"


# ---- 2. only regular files, with a size cap ---------------------------------------------------------------
def _load_cifar_batch(path):
    from vitlab.data.cifar import (
        load_batch,  # CIFAR's pickles: the same regular-file check, then numpy-only unpickling
    )

    return load_batch(path)


@linux_only
@pytest.mark.parametrize(("name", "what", "read"), [("x.jpg", "image", load_image),
                                                    ("data_batch_1", "CIFAR batch", _load_cifar_batch)])
def test_a_fifo_is_refused_at_once_instead_of_hanging(tmp_path, name, what, read):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(RefusedImageError, match=rf"{what} {fifo} is a FIFO, not a regular file"):
        read(fifo)


@linux_only
def test_a_link_to_dev_zero_is_refused_not_read_until_memory_runs_out(tmp_path):
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with memory_cap(1 << 30), deadline(60), pytest.raises(
        RefusedImageError, match=rf"image {link} is a character device, not a regular file \(/dev/zero\)"
    ):
        load_image(link)


def test_files_over_the_size_cap_are_refused_unread(tmp_path):
    img = write_image(tmp_path / "ok.png", 2, size=(16, 16))
    size = img.stat().st_size
    assert load_image(img, max_file_bytes=size).size == (16, 16)
    with pytest.raises(RefusedImageError, match=rf"{img} is {size:,} bytes, more than data.max_file_bytes={size - 1:,}"):
        load_image(img, max_file_bytes=size - 1)
    sparse = tmp_path / "huge.jpg"  # 1 GiB on paper, no disk: the default cap refuses it from its size
    with open(sparse, "wb") as f:
        f.truncate(2**30)
    assert 2**30 > DEFAULT_MAX_FILE_BYTES
    with memory_cap(256 << 20), pytest.raises(RefusedImageError, match="data.max_file_bytes=536,870,912"):
        load_image(sparse)


@linux_only
def test_skip_corrupt_skips_every_hostile_file_by_name_through_the_config_keys(tmp_path):
    write_class_folders(tmp_path / "train", ["a", "b"], 2, ".png")
    write_class_folders(tmp_path / "val", ["a", "b"], 1, ".png")
    hostile = {
        "bomb.jpg": lambda p: p.write_bytes(bomb_jpeg()),
        "fifo.jpg": os.mkfifo,
        "zero.jpg": lambda p: p.symlink_to("/dev/zero"),
        "big.png": lambda p: p.write_bytes((tmp_path / "train" / "a" / "a_0.png").read_bytes() + b"\0" * 4096),
    }
    for name, make in hostile.items():
        make(tmp_path / "train" / "a" / name)
    kw = dict(root=str(tmp_path), img_size=16, num_workers=0, max_file_bytes=4096)
    train, _, _ = FolderDataModule(**kw).build_splits()
    assert len(train) == 8
    for name in hostile:
        i = train.paths.index(str(tmp_path / "train" / "a" / name))
        with deadline(20), memory_cap(1 << 30), pytest.raises(RefusedImageError, match=rf"{name}.*skip_corrupt=true"):
            train[i]
    train, _, _ = FolderDataModule(**kw, skip_corrupt=True).build_splits()
    with deadline(20), memory_cap(1 << 30), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = [train[i] for i in range(len(train))]
    assert all(img.size == (40, 32) for img, _ in got)  # every hostile file was replaced by a readable one
    skipped = " ".join(str(w.message) for w in rec if "data.skip_corrupt: skipped" in str(w.message))
    assert all(name in skipped for name in hostile) and "4 corrupt image(s)" in skipped
    for bad in ([0], -1, "many", 1.5):
        with pytest.raises(DataConfigError, match=r"data.max_image_pixels=.* must be a positive int"):
            FolderDataModule(**{**kw, "max_image_pixels": bad})


@linux_only
def test_the_packer_names_and_skips_special_files_and_obeys_the_pixel_limit(tmp_path):
    """``vitlab.pack`` reads source files through the loaders' guards: a FIFO named ``x.jpg`` and a link to
    ``/dev/zero`` are skipped by name at once, and an image over ``data.max_image_pixels`` is refused from its
    header, as training refuses it (issue 20, item 2)."""
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_cfg
    from vitlab.data.packing import pack

    src = tmp_path / "src"
    write_class_folders(src / "train", ["a", "b"], 2, ".png")
    write_class_folders(src / "val", ["a", "b"], 1, ".png")
    a = src / "train" / "a"
    os.mkfifo(a / "fifo.jpg")
    (a / "zero.jpg").symlink_to("/dev/zero")
    write_image(a / "huge.png", 0, size=(100, 100))  # 10,000 pixels, over data.max_image_pixels=2000 below
    try:
        cfg = compose_cfg("pack", ["data=folder", f"data.root={src}", f"out={tmp_path / 'out'}", "pack.num_workers=1",
                                   "data.max_image_pixels=2000"], tmp_path / "log")
    finally:
        GlobalHydra.instance().clear()
    with deadline(60), memory_cap(1 << 30):
        meta = pack(cfg)
    train = meta["splits"]["train"]
    assert train["count"] == 4 and train["skipped"] == 3
    why = "\n".join(train["skipped_examples"])
    assert f"image {a / 'fifo.jpg'} is a FIFO, not a regular file" in why
    assert f"image {a / 'zero.jpg'} is a character device, not a regular file (/dev/zero)" in why
    assert f"image {a / 'huge.png'} declares 100x100 = 10,000 pixels, more than data.max_image_pixels=2,000" in why


def test_file_dataset_configs_list_both_limits_with_the_code_defaults():
    from vitlab.config import compose_group

    for name in FILE_DATASETS:
        cfg = compose_group("data", name)  # the data yaml with its bases (conf/data/base/files.yaml holds the limits)
        assert (cfg["max_image_pixels"], cfg["max_file_bytes"]) == (DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_FILE_BYTES), name
    assert DEFAULT_MAX_IMAGE_PIXELS < BOMB_SIDE**2 / 4  # a 20000^2 bomb is well over the default


# ---- 3. tree walks: symlink loops and links out of the root ------------------------------------------------
def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_class_folders(root, ["a", "b"], [3, 2], ".png")
    (root / "a" / "sub").mkdir()
    write_image(root / "a" / "sub" / "deep.png", 0)
    return root


def _counts(root: Path) -> dict[str, int]:
    paths, targets, classes = scan_class_folders(root)
    return {c: targets.count(i) for i, c in enumerate(classes)}


def test_one_symlink_loop_relabels_nothing(tmp_path):
    root = _tree(tmp_path)
    (root / "a" / "loop").symlink_to("..")  # a/loop -> data: the whole tree again, inside class a
    with deadline(60), pytest.warns(UserWarning, match=r"a/loop leads to .*data, a folder already walked"):
        assert _counts(root) == {"a": 4, "b": 2}
    assert folder_num_classes(str(root)) == 2
    dm = FolderDataModule(root=str(root), img_size=16, num_workers=0, val_fraction=0.4)
    with pytest.warns(UserWarning, match="symlink loop"):
        tr, va, _ = dm.build_splits()
    assert sorted(tr.targets + va.targets) == [0, 0, 0, 0, 1, 1]


def test_two_symlink_loops_do_not_hang(tmp_path):
    root = _tree(tmp_path)
    (root / "a" / "up").symlink_to("..")
    (root / "a" / "sub" / "upup").symlink_to("../..")
    (root / "b" / "self").symlink_to(".")
    (root / "loop_class").symlink_to(".")  # a "class" that is the root itself
    with deadline(60), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert _counts(root) == {"a": 4, "b": 2}
    msgs = " ".join(str(w.message) for w in rec)
    assert all(s in msgs for s in ("a/up", "upup", "b/self", "class folder " + str(root / "loop_class")))


def test_links_out_of_the_root_or_into_another_class_are_skipped_with_a_warning(tmp_path):
    root = _tree(tmp_path)
    outside = tmp_path / "elsewhere"
    write_class_folders(outside, ["c"], 5, ".png")
    (root / "a" / "out").symlink_to(outside / "c")
    (root / "c").symlink_to(outside / "c")
    (root / "b" / "to_a").symlink_to(root / "a" / "sub")
    (root / "a" / "inside").symlink_to(root / "a" / "sub")  # a link inside its own class: followed once
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert _counts(root) == {"a": 4, "b": 2}
    msgs = [str(w.message) for w in rec]
    assert any("a/out links to" in m and "outside data.root" in m for m in msgs)
    assert any(f"class folder {root / 'c'} links to" in m and "outside data.root" in m for m in msgs)
    assert any("b/to_a links to" in m and "inside class folder 'a'" in m for m in msgs)
    # a tree whose data.root is the link's target's parent reads the linked class as its own
    assert _counts(outside) == {"c": 5}


# ---- 4. archives: links resolved as they would be extracted, nothing written --------------------------------
def _tar(path: Path, members: list[tuple[str, str | None]]) -> Path:
    """``(name, link target)`` pairs: a symlink where a target is given, else a 2-byte file (``/``: a folder)."""
    with tarfile.open(path, "w") as tar:
        for name, link in members:
            m = tarfile.TarInfo(name.rstrip("/"))
            if link is not None:
                m.type, m.linkname = tarfile.SYMTYPE, link
                tar.addfile(m)
            elif name.endswith("/"):
                m.type = tarfile.DIRTYPE
                tar.addfile(m)
            else:
                m.size = 2
                tar.addfile(m, io.BytesIO(b"hi"))
    return path


@pytest.fixture(params=["with data filter", "without data filter"])
def python_filter(request, monkeypatch):
    """Both kinds of supported Python: with the stdlib's tarfile data filter (3.10.12+) and without (3.10.0)."""
    if request.param == "without data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("members", "culprit"),
    [
        ([("a", "."), ("a/b", ".."), ("a/b/escaped.txt", None)], "a/b"),  # the chain of issue 11
        ([("d/", None), ("x", "y/d/../.."), ("y", ".")], "x"),  # x points inside until y is written
        ([("a", "."), ("a/a", "."), ("a/a/a", "../.."), ("a/a/a/escaped.txt", None)], "a/a/a"),
    ],
    ids=["a->.,a/b->..", "link redirected by a later link", "three-link chain"],
)
def test_link_chains_leaving_the_target_are_refused_before_anything_is_written(tmp_path, python_filter, members, culprit):
    archive = _tar(tmp_path / "evil.tar", members)
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    before = _listing(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=rf"member '{culprit}' .*refusing to extract"):
        safe_extract(archive, dest)
    assert _listing(tmp_path) == before  # not even dest was created, and nothing landed outside it


def test_links_that_stay_inside_extract_normally(tmp_path, python_filter):
    members = [("data/x.txt", None), ("alias", "data"), ("alias/y.txt", None), ("up", "data/.."), ("deep/link", "../alias")]
    dest = tmp_path / "dest"
    safe_extract(_tar(tmp_path / "ok.tar", members), dest)
    assert (dest / "data" / "y.txt").read_text() == "hi" and (dest / "deep" / "link" / "x.txt").read_text() == "hi"
    assert os.readlink(dest / "alias") == "data"
