"""vitlab.pack + data=packed (issue 15): packing is faithful and resumable, shards read back into the same data,
and every damaged or foreign pack is refused by name."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf.errors import InterpolationResolutionError
from PIL import Image

from conftest import compose_cfg
from dataset_writers import truncate_file, write_imagenet
from reliability_utils import TINY, assert_same_weights, kill_at_checkpoint, run, start
from vitlab.data.digits import DigitsDataModule
from vitlab.data.imagenet import ImageNetDataModule
from vitlab.data.packed import MANIFEST, PackedDataModule, decode, min_side_for
from vitlab.data.packing import pack
from vitlab.data.transforms import build_transform
from vitlab.errors import DatasetNotFoundError, PackedDataError, PackError


def _pack(tmp: Path, *overrides: str):
    cfg = compose_cfg("pack", ["pack.num_workers=1", *overrides], tmp / "packlog")
    try:
        return pack(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "digits"
    _pack(out.parent, f"out={out}", "pack.part_size=500")  # 1,257 train images -> 3 parts
    return out


def _packed(root, **kw) -> PackedDataModule:
    kw.setdefault("num_workers", 0)
    return PackedDataModule(root=str(root), **kw)


def test_packed_digits_are_the_same_data_as_digits(digits_pack):
    ref = DigitsDataModule(num_workers=0, train_size=100)
    dm = _packed(digits_pack, train_size=100, img_size=32, normalization="paper")
    ref.setup(), dm.setup()
    # defaults recorded from the source: digits' pipelines, not the generic ones
    assert (dm.train_pipeline, dm.eval_pipeline) == ("translate", "none")
    for a, b in ((ref.train_set, dm.train_set), (ref.val_set, dm.val_set), (ref.test_set, dm.test_set)):
        assert len(a) == len(b) and a.targets == b.targets
    raw_ref, raw = ref.build_splits()[0], dm.build_splits()[0]
    for i in (0, 1, 700, len(raw) - 1):  # pixel-exact (lossless PNG) and across part boundaries
        assert torch.equal(raw[i][0], raw_ref[i][0]) and raw[i][1] == raw_ref[i][1]
    # the same seeded class-balanced subset, and the same augmented samples under the same seed
    assert dm.train_set.base.indices == ref.train_set.base.indices
    torch.testing.assert_close(dm.train_set[(5, 123)][0], ref.train_set[(5, 123)][0], rtol=0, atol=0)
    meta = json.loads((digits_pack / MANIFEST).read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["vitlab_version"]
    assert sum(meta["splits"]["train"]["class_counts"]) == 1257 and meta["options"]["max_side"] is None
    assert meta["source"]["name"] == "digits" and meta["source"]["img_size"] == 32


def test_packed_config_follows_img_size_and_crop_settings_like_its_source(digits_pack, compose_train):
    """digits evaluates at ``data.img_size``; so does its pack, and the source's crop settings come along."""
    from hydra.utils import instantiate

    cfg = compose_train("data=packed", f"data.root={digits_pack}", "data.img_size=16")
    assert cfg.data.img_size == cfg.data.eval_img_size == cfg.model.img_size == 16
    assert compose_train("data=packed", f"data.root={digits_pack}").data.eval_img_size == 32
    dm = instantiate(cfg.data, _convert_="all", num_workers=0)
    assert (dm.train_crop_scale, dm.eval_resize) == ((0.05, 1.0), "square")
    dm = _packed(digits_pack, train_crop_scale=[0.3, 1.0], eval_resize="center_crop")
    assert (dm.train_crop_scale, dm.eval_resize) == ((0.3, 1.0), "center_crop")


def test_imagenet_pack_keeps_bytes_real_labels_and_skips_corrupt_images(tmp_path):
    src = tmp_path / "imagenet"
    info = write_imagenet(src, train_per_class=4, real=True)
    bad = sorted((src / "train" / info["wnids"][1]).iterdir())[0]
    truncate_file(bad, keep=0.3)
    out = tmp_path / "shards"
    meta = _pack(tmp_path, "data=imagenet", f"data.root={src}", "data.num_classes=4", "data.val_fraction=0", f"out={out}")
    tr = meta["splits"]["train"]
    assert tr["count"] == 4 * 4 - 1 and tr["skipped"] == 1 and str(bad) in tr["skipped_examples"][0]
    ref = ImageNetDataModule(root=str(src), num_classes=4, val_fraction=0.0, num_workers=0)
    ref_train, _, ref_test = ref.build_splits()
    dm = _packed(out, img_size=32)
    train, _, test = dm.build_splits()
    good = [p for p in ref_train.paths if p != str(bad)]
    item = train.item(3)
    assert bytes(item["image"]) == Path(good[3]).read_bytes()  # the original bytes, not a re-encode
    for j in range(len(test)):  # ReaL label sets travel with each test image
        assert torch.equal(test[j][2], ref_test[j][2])
    assert dm.classes == ref.classes


def test_max_side_and_quality_re_encode_and_are_recorded(tmp_path):
    src = tmp_path / "imagenet"
    write_imagenet(src, train_per_class=2, size=(60, 40))
    out = tmp_path / "small"
    meta = _pack(tmp_path, "data=imagenet", f"data.root={src}", "data.num_classes=4", f"out={out}", "pack.max_side=30", "pack.quality=80")
    assert meta["options"]["max_side"] == 30 and meta["options"]["quality"] == 80
    img = _packed(out, img_size=32).build_splits()[0][0][0]
    assert tuple(img.shape) == (3, 20, 30)


def test_max_side_alone_shrinks_large_jpegs_and_keeps_small_ones(tmp_path):
    src = tmp_path / "imagenet"
    write_imagenet(src, train_per_class=2, size=(60, 40))
    big = _pack(tmp_path, "data=imagenet", f"data.root={src}", "data.num_classes=4", f"out={tmp_path / 'a'}",
                "pack.max_side=30")
    assert big["options"]["max_side"] == 30 and big["options"]["quality"] is None
    assert tuple(_packed(tmp_path / "a", img_size=32).build_splits()[0][0][0].shape) == (3, 20, 30)
    _pack(tmp_path, "data=imagenet", f"data.root={src}", "data.num_classes=4", f"out={tmp_path / 'b'}",
          "pack.max_side=60")
    item = _packed(tmp_path / "b", img_size=32).build_splits()[0].item(0)
    assert bytes(item["image"]) == Path(ImageNetDataModule(root=str(src), num_classes=4).build_splits()[0].paths[0]
                                        ).read_bytes()  # not over the limit: the original bytes


class _Killed(Exception):
    pass


def test_interrupted_pack_resumes_from_finished_parts(tmp_path, monkeypatch):
    import vitlab.data.packing as vp

    out, calls = tmp_path / "digits", []
    real_part = vp.pack_part

    def dies_on_third_part(*args):
        calls.append(args[:2])
        if len(calls) == 3:
            raise _Killed  # as a killed run
        return real_part(*args)

    monkeypatch.setattr(vp, "pack_part", dies_on_third_part)
    with pytest.raises(_Killed):
        _pack(tmp_path, f"out={out}", "pack.part_size=100", "pack.splits=[val,test]")
    assert not (out / MANIFEST).exists()
    with pytest.raises(DatasetNotFoundError, match="unfinished pack"):
        _packed(out)
    # a worker killed mid-part leaves a tmp folder with a half chunk: it must not count
    junk = out / "test" / ".parts" / ".tmp-p00000-99999"
    junk.mkdir(parents=True)
    (junk / "chunk-0-0.bin").write_bytes(b"half")
    calls.clear()
    monkeypatch.setattr(vp, "pack_part", lambda *a: calls.append(a[:2]) or real_part(*a))
    meta = _pack(tmp_path, f"out={out}", "pack.part_size=100", "pack.splits=[val,test]")
    assert calls == [("test", 0), ("test", 1), ("test", 2), ("test", 3)]  # val's 2 parts were done
    assert meta["splits"]["val"]["count"] == 180 and meta["splits"]["test"]["count"] == 360
    _, val, test = DigitsDataModule(num_workers=0).build_splits()
    dm = _packed(out)
    assert dm.open_split("val").targets == val.targets and dm.open_split("test").targets == test.targets
    assert not list(out.rglob(".tmp-*")) and not (out / ".pack_state.json").exists()


def test_pack_refuses_out_inside_the_source_or_over_other_files(tmp_path, digits_pack):
    src = tmp_path / "imagenet"
    write_imagenet(src, train_per_class=2)
    with pytest.raises(PackError, match="inside the source dataset"):
        _pack(tmp_path, "data=imagenet", f"data.root={src}", "data.num_classes=4", f"out={src / 'shards'}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(PackError, match="not written by vitlab.pack"):
        _pack(tmp_path, f"out={mine}", "pack.overwrite=true")
    assert (mine / "notes.txt").read_text() == "keep me"
    again = tmp_path / "again"
    shutil.copytree(digits_pack, again)
    with pytest.raises(PackError, match="already holds a finished pack.*pack.overwrite=true"):
        _pack(tmp_path, f"out={again}")
    meta = _pack(tmp_path, f"out={again}", "pack.overwrite=true", "pack.splits=[val]")
    assert set(meta["splits"]) == {"val"} and not (again / "train").exists()


def test_overwrite_removes_only_what_the_pack_wrote(tmp_path, digits_pack):
    out = tmp_path / "out"
    shutil.copytree(digits_pack, out)
    theirs = [out / "notes.txt", out / "val" / "mine.txt", out / "results" / "r.csv", out / "train" / "keep.bin"]
    for f in theirs:
        f.parent.mkdir(exist_ok=True)
        f.write_text("keep me")
    meta = _pack(tmp_path, f"out={out}", "pack.overwrite=true", "pack.splits=[val]")
    assert set(meta["splits"]) == {"val"} and all(f.read_text() == "keep me" for f in theirs)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["keep.bin"]  # its chunks, index, labels: gone
    assert _packed(out).open_split("val").targets == DigitsDataModule(num_workers=0).build_splits()[1].targets


def test_a_second_pack_into_the_same_out_is_refused_naming_the_first(tmp_path):
    from vitlab.errors import RunDirBusyError

    out = tmp_path / "out"
    code = ("import sys, time; from vitlab.utils import run_owner; "
            "run_owner.acquire(sys.argv[1], key='out', task='vitlab.pack'); print('locked', flush=True); time.sleep(300)")
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusyError, match=rf"out={out} is in use by pid {first.pid} .*\(vitlab.pack"):
            _pack(tmp_path, f"out={out}", "pack.splits=[val]")
    finally:
        first.kill()
        first.wait()
    assert [p.name for p in out.iterdir()] == [".vitlab.lock"]  # nothing written


def test_resumed_pack_with_other_options_is_refused(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / ".pack_state.json").write_text(json.dumps({"format": 1, "options": {"max_side": 64}}))
    with pytest.raises(PackError, match="interrupted pack .*options changed"):
        _pack(tmp_path, f"out={out}")


def test_foreign_version_class_table_and_damaged_shards_are_named(tmp_path, digits_pack):
    root = tmp_path / "copy"
    shutil.copytree(digits_pack, root)
    meta = json.loads((root / MANIFEST).read_text())
    with pytest.raises(PackedDataError, match=r"data.num_classes=1000 but the shards .* hold 10 classes"):
        _packed(root, num_classes=1000)
    with pytest.raises(PackedDataError, match=r"another class table .*#3: '3' instead of 'cat'"):
        _packed(root, classes=["0", "1", "2", "cat", "4", "5", "6", "7", "8", "9"])
    (root / MANIFEST).write_text(json.dumps({**meta, "format": 0, "vitlab_version": "0.0.1"}))
    with pytest.raises(PackedDataError, match=r"packed by vitlab 0.0.1 \(pack format 0\).* reads pack format 1"):
        _packed(root)
    (root / MANIFEST).write_text(json.dumps(meta))
    chunk = root / "val" / meta["splits"]["val"]["chunks"][0]["filename"]
    truncate_file(chunk, keep=0.5)
    with pytest.raises(PackedDataError, match=rf"shard {chunk} is truncated"):
        _packed(root).setup()
    chunk.unlink()
    with pytest.raises(PackedDataError, match=rf"shard {chunk} is missing"):
        _packed(root).setup()


def test_unreachable_url_is_named_within_the_timeout_and_hides_the_endpoint_password(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://minio:pw7@127.0.0.1:{port}")  # a short password: not in env
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match=r"cannot read s3://no-bucket/pack/vitlab_pack.json .*timeout=2") as e:
        PackedDataModule(root="s3://no-bucket/pack", timeout=2)
    assert time.monotonic() - t0 < 20
    assert "pw7" not in str(e.value)


@pytest.fixture(scope="module")
def s3_pack(digits_pack):
    """The digits pack uploaded to a local S3-compatible server (moto's, in a thread of this process): the URL and
    the environment a job needs to reach it (AWS_ENDPOINT_URL, which boto3 and litdata's S3 client both read)."""
    server_mod = pytest.importorskip("moto.server", reason="the S3 test needs moto's server: pip install -e '.[dev]'")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.get_host_and_port()[1]}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="vitlab-packs")
    for f in sorted(digits_pack.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), "vitlab-packs", f"digits/{f.relative_to(digits_pack)}")
    yield "s3://vitlab-packs/digits", env
    server.stop()


def test_packed_reads_from_a_local_s3_server_the_same_samples_as_from_disk(s3_pack, digits_pack, tmp_path,
                                                                          monkeypatch):
    url, env = s3_pack
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    remote, local = _packed(url, cache_dir=str(tmp_path / "cache"), timeout=10, img_size=16), \
        _packed(digits_pack, img_size=16)
    remote.setup(), local.setup()
    assert (len(remote.train_set), len(remote.val_set), len(remote.test_set)) == (1257, 180, 360)
    for i in range(0, 180, 17):
        assert torch.equal(remote.val_set[i][0], local.val_set[i][0]) and remote.val_set[i][1] == local.val_set[i][1]
    for i in range(0, 1257, 131):  # a training sample: the same seeded augmentation of the same image
        assert torch.equal(remote.train_set[(i, 5)][0], local.train_set[(i, 5)][0])
    assert len(list((tmp_path / "cache").rglob("*.bin"))) == 4  # the chunks read (val 1, train 3), downloaded once


@pytest.mark.slow  # ~40 s: a real job, DataLoader workers reading the chunks from the server
def test_train_on_a_pack_in_s3_from_the_command_line(s3_pack, tmp_path):
    url, env = s3_pack
    out = tmp_path / "run"
    res = run([sys.executable, "-m", "vitlab.train", "data=packed", f"data.root={url}", *TINY,
               f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=1", f"hydra.run.dir={out}"],
              cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline", **env})
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/train_size"] == 192 and metrics["data/root"] == url and "val/acc" in metrics


def test_a_hostile_pack_in_s3_is_refused_unread(s3_pack, hostile, tmp_path, monkeypatch):
    import boto3

    _, env = s3_pack
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root, marker = hostile("image")
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    for f in sorted(root.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), "vitlab-packs", f"hostile/{f.relative_to(root)}")
    url = "s3://vitlab-packs/hostile"
    with pytest.raises(PackedDataError, match=rf"{url}/train/index.json: field 'image' is declared 'pickle'"):
        dm = _packed(url, cache_dir=str(tmp_path / "cache"), timeout=10)
        dm.setup()
        dm.train_set[(0, 0)]
    assert not marker.exists() and not list(tmp_path.rglob("*.bin"))  # not even downloaded


def _photo(w: int = 500, h: int = 375) -> bytes:
    rng = np.random.default_rng(0)
    coarse = rng.normal(128, 45, size=(h // 16 + 1, w // 16 + 1, 3))
    img = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 14, size=(h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("pipeline", ["eval", "finetune"])
@pytest.mark.parametrize("size", [32, 64])
def test_draft_decoding_changes_pixels_only_by_resampling_error(pipeline, size):
    """DCT-scaled decoding must cover the same region: the output differs by resampling error only."""
    data = _photo()
    side = min_side_for(pipeline, size, 0.875)
    small = decode(data, draft_min_side=side)
    assert small.shape[-1] < 500  # it did decode at reduced scale
    assert min(small.shape[-2:]) >= side
    tf = build_transform(pipeline, size, "paper")
    torch.manual_seed(0)
    a = tf(decode(data))
    torch.manual_seed(0)
    b = tf(small)
    err = (a - b).abs().mean().item()  # in [-1, 1] units; measured 0.012-0.015 here
    assert err < 0.02, err
    assert (a - tf(decode(_photo(375, 500)))).abs().mean() > 0.1  # the bound would catch another image region


@pytest.mark.parametrize("size", [32, 64, 224])
def test_drafted_inception_crop_differs_only_by_resampling_error(size):
    """pretrain + data.draft: the crop is drawn on the full-size geometry, then decoded at 1/2-1/8 scale only where
    it keeps >= 2 x size pixels a side. Same seed, same region: the output differs from the standard pipeline's by
    no more than another resampling filter (bicubic instead of bilinear, on the full-size decode) does, and not at
    all where no reduced scale covers the crop (224 px from a 500x375 photo). Measured on this photo at 32 / 64 px:
    0.034 / 0.020 mean abs in [-1, 1] units (bicubic vs bilinear: 0.028 / 0.018)."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from vitlab.data.packed import DraftInceptionCrop
    from vitlab.data.sampler import seeded_rng

    data = _photo()
    full = decode(data)
    crop = DraftInceptionCrop(size, (0.05, 1.0))
    rrc = v2.RandomResizedCrop(size, scale=(0.05, 1.0), antialias=True)  # the standard pipeline's crop
    to_unit = lambda t: t.float() / 127.5 - 1  # noqa: E731 - the paper's normalisation
    errs, filter_errs, drafted = [], [], 0
    for seed in range(24):
        with seeded_rng(seed):
            p = rrc.make_params([full])  # the crop the standard pipeline draws for this seed
        a = to_unit(F.resized_crop(full, **p, size=[size, size], antialias=True))
        cubic = to_unit(F.resized_crop(full, **p, size=[size, size], antialias=True,
                                       interpolation=InterpolationMode.BICUBIC))
        with seeded_rng(seed):
            b = to_unit(crop(data, "photo", 10**8))
        with seeded_rng(seed):
            torch.testing.assert_close(build_transform("pretrain", size, "paper", flip=False)(full), a)
        drafted += min(p["height"], p["width"]) >= 4 * size
        errs.append((a - b).abs().mean().item())
        filter_errs.append((a - cubic).abs().mean().item())
        if seed == 0:
            assert (a - b.flip(-2)).abs().mean() > 0.1  # the bound would catch a crop of another region
    if size == 224:
        assert drafted == 0 and max(errs) == 0  # nothing to gain: exactly the standard pipeline
    else:
        assert drafted >= 8, drafted  # it did decode at reduced scale
        assert np.mean(errs) <= 1.25 * np.mean(filter_errs) and max(errs) < 0.08, (errs, filter_errs)


@pytest.mark.parametrize("backend", ["simplejpeg", "torchvision"])
def test_drafted_224px_crop_is_the_torchvision_imagefolder_sample(backend, monkeypatch):
    """The pixel rule of the fast original-bytes reader (data.draft + data.normalize_on_device, make bench-data's
    packed_original_vs_torchvision row): where no DCT scale covers the crop (every crop of a 500x375 photo at 224 px:
    1/2 scale would need a crop >= 448 px a side), a seeded sample is torchvision ImageFolder's sample (PIL decode,
    then the same pipeline and seed) byte for byte: through simplejpeg's decoder, and through the fallback without
    it (torchvision's decoder). Crops decoded at 1/2-1/8 scale differ by resampling error (the test above)."""
    import vitlab.data.files as files
    from vitlab.data.packed import DraftInceptionCrop
    from vitlab.data.sampler import seeded_rng
    from vitlab.data.transforms import INCEPTION_CROP_SCALE, FlipNormalize

    def no_torchvision_decoder(*a, **kw):
        raise AssertionError("simplejpeg is installed: torchvision's decoder must not run")

    if backend == "torchvision":
        monkeypatch.setattr(files, "simplejpeg", None)
    else:
        assert files.simplejpeg is not None, "simplejpeg (a dependency in pyproject.toml) is not installed"
        monkeypatch.setattr(files, "decode_image", no_torchvision_decoder)
        monkeypatch.setattr(files, "decode_jpeg", no_torchvision_decoder)
    top_rows = []  # the crops decoded as the image's top rows alone (simplejpeg only)
    decode_top_rows = files.decode_jpeg_top_rows
    monkeypatch.setattr(files, "decode_jpeg_top_rows", lambda d, rows: top_rows.append(rows) or decode_top_rows(d, rows))
    data = _photo()
    imagefolder = Image.open(io.BytesIO(data)).convert("RGB")  # torchvision's ImageFolder loader (PIL)
    standard = build_transform("pretrain", 224, "paper", normalize=False)  # uint8 out: the pixels themselves
    crop, flip = DraftInceptionCrop(224, INCEPTION_CROP_SCALE), FlipNormalize(None, None)
    for seed in range(16):
        with seeded_rng(seed):
            a = standard(imagefolder)
        with seeded_rng(seed):
            b = flip(crop(data, "photo", 10**8))
        assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b), seed
    if backend == "simplejpeg":
        assert sum(rows < 375 - files.TOP_ROWS_MARGIN for rows in top_rows) >= 8  # most crops end above the bottom


@pytest.mark.parametrize("kind", ["444", "422", "420", "440", "411", "gray", "progressive", "restart markers"])
def test_top_rows_of_a_jpeg_decode_alone_to_the_full_decodes_pixels(kind):
    """The inception crop decodes only the rows down to its bottom edge (the frame height, in a copy of the bytes,
    set to the rows needed): every row is the full decode's, bit for bit, for every chroma subsampling."""
    import simplejpeg

    from vitlab.data.files import decode_jpeg_top_rows

    pixels = np.asarray(Image.open(io.BytesIO(_photo(203, 157))))
    if kind == "gray":
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(pixels[..., :1]), 90, colorspace="GRAY")
    elif kind in ("progressive", "restart markers"):
        buf = io.BytesIO()
        opts = {"progressive": True} if kind == "progressive" else {"restart_marker_rows": 1}
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90, **opts)
        data = buf.getvalue()
    else:
        data = simplejpeg.encode_jpeg(pixels, 90, colorsubsampling=kind)
    full = simplejpeg.decode_jpeg(data, "RGB")
    assert full.shape[:2] == (157, 203)
    for rows in [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 154]:
        top = decode_jpeg_top_rows(data, rows)
        assert top is not None and top.shape == (rows, 203, 3) and np.array_equal(top, full[:rows]), rows
    assert decode_jpeg_top_rows(data, 155) is None  # the margin reaches the bottom: the whole image decodes


def test_top_rows_decode_leaves_truncated_and_unusual_jpegs_to_the_strict_full_decode():
    """A file without its end marker (truncated) or with markers the header walk does not know is decoded whole,
    strictly: a truncated image is still refused naming it, whatever rows the crop needs."""
    from vitlab.data.files import decode_image_bytes, decode_jpeg_top_rows, jpeg_height_field
    from vitlab.errors import CorruptImageError

    data = _photo(203, 157)
    at = jpeg_height_field(data)
    assert at is not None and int.from_bytes(data[at:at + 2], "big") == 157
    truncated = data[: len(data) // 2]
    assert decode_jpeg_top_rows(truncated, 10) is None
    with pytest.raises(CorruptImageError, match="photo.jpg"):
        decode_image_bytes(truncated, "photo.jpg", "torchvision", 10**8, plan=lambda w, h: (1, 10))
    arithmetic = data[:at - 5] + b"\xff\xc9" + data[at - 3:]  # SOF9: arithmetic coding
    for odd in (arithmetic, data[:2] + b"\x00" + data[3:], data[:4] + b"\x00\x01" + data[6:], b"\xff\xd8\xff\xd9"):
        assert decode_jpeg_top_rows(odd, 10) is None
    assert jpeg_height_field(data[:at]) is None  # a header cut before the height


def test_packed_pretrain_with_draft_crops_at_decode_and_keeps_flip_and_seeds(digits_pack):
    """Wiring: with data.draft the DataModule moves the inception crop into the reader (PNG: full-size decode),
    and a seeded sample is then the standard pipeline's sample, flip included."""
    from vitlab.data.packed import DraftInceptionCrop

    plain = _packed(digits_pack, img_size=16, train_pipeline="pretrain")
    draft = _packed(digits_pack, img_size=16, train_pipeline="pretrain", draft=True)
    plain.setup(), draft.setup()
    assert isinstance(draft.train_set.base.crop, DraftInceptionCrop) and plain.train_set.base.crop is None
    for seed in range(6):
        torch.testing.assert_close(draft.train_set[(7, seed)][0], plain.train_set[(7, seed)][0], rtol=0, atol=1e-6)


def test_drafted_uint8_crops_stack_channels_last_and_reach_the_model_as_the_per_sample_pixels(digits_pack):
    """data.draft + data.normalize_on_device: the crops keep the layout the resize wrote (HWC in memory) and the
    loader's collate stacks them into a channels-last batch (no per-image or per-batch transposition in the workers,
    issue 23's reader speed); the batch holds each sample's pixels, and after the device hook the model gets the
    contiguous NCHW float batch the per-sample pipeline gives."""
    from vitlab.data.transforms import normalize_batch

    dm = _packed(digits_pack, img_size=16, train_pipeline="pretrain", draft=True, normalize_on_device=True,
                 batch_size=8)
    dm.setup()
    loader = dm.train_dataloader()
    keys = list(itertools.islice(iter(loader.sampler), 8))
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    samples = torch.stack([dm.train_set[k][0] for k in keys])
    assert torch.equal(x, samples) and y.tolist() == [dm.train_set.targets[i] for i, _ in keys]
    z = dm.on_after_batch_transfer([x, y], 0)[0]
    assert z.dtype == torch.float32 and z.is_contiguous() and torch.equal(z, normalize_batch(samples))


@pytest.mark.slow
def test_packed_sigkill_mid_epoch_then_auto_resume_is_bitwise_equal(tmp_path, digits_pack):
    args = [*TINY, "data=packed", f"data.root={digits_pack}", "data.num_workers=1"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cmd = lambda d, *a: [sys.executable, "-m", "vitlab.train", *args, f"hydra.run.dir={d}", *a]  # noqa: E731
    p_ref = start(cmd(ref), tmp_path)
    p_kill = start(cmd(killed), tmp_path)
    step = kill_at_checkpoint(p_kill, killed / "checkpoints" / "last.ckpt", min_step=2)
    assert 0 < step < 18
    again = run(cmd(killed), tmp_path)
    assert again.returncode == 0 and "resuming from" in again.stderr + again.stdout, again.stderr[-3000:]
    out_ref, _ = p_ref.communicate(timeout=900)
    assert p_ref.returncode == 0, out_ref[-3000:]
    assert_same_weights(ref / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_ddp_ranks_and_workers_read_disjoint_parts_covering_the_epoch(tmp_path, digits_pack):
    """2 DDP processes x 2 loader workers: every training image is read exactly once per epoch, by several readers."""
    trace = tmp_path / "trace"
    args = [a for a in TINY if not a.startswith(("trainer.max_epochs", "callbacks.model_checkpoint"))]
    cmd = [sys.executable, "-m", "vitlab.train", *args, "data=packed", f"data.root={digits_pack}", "trainer=ddp_cpu",
           "data.num_workers=2", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}"]
    from reliability_utils import env

    out = run(cmd, tmp_path, env=env(VITLAB_PACKED_TRACE=str(trace)), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    reads: dict[str, list[int]] = {}
    for f in trace.glob("*.txt"):
        reads[f.name] = [int(line.split()[1]) for line in f.read_text().splitlines() if line.startswith("train ")]
    readers = {k: v for k, v in reads.items() if v}
    assert len(readers) >= 4 and {k.split("-")[0] for k in readers} == {"rank0", "rank1"}
    all_reads = np.concatenate([np.asarray(v) for v in readers.values()])
    subset = _packed(digits_pack, train_size=192)
    subset.setup()
    expected = sorted(subset.train_set.base.indices)
    counts = np.bincount(all_reads, minlength=1257)
    assert sorted(np.flatnonzero(counts)) == expected and set(counts[expected]) == {2}  # 2 epochs, once each


def _train_reads(trace: Path) -> dict[str, list[int]]:
    reads = {f.name: [int(line.split()[1]) for line in f.read_text().splitlines() if line.startswith("train ")]
             for f in trace.glob("*.txt")}
    return {k: v for k, v in reads.items() if v}


@pytest.mark.slow
def test_two_node_torchrun_on_packed_data_reads_each_image_once_per_epoch(tmp_path, digits_pack):
    """The reliability tests' 2-node localhost torchrun (tests/test_ddp.py), on packed data: one run, one lock,
    each node reads its own part, and together they cover the seeded subset once per epoch."""
    from reliability_utils import env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trace, run_dir = tmp_path / "trace", tmp_path / "shared_run"
    args = [a for a in TINY if not a.startswith(("trainer.max_epochs", "callbacks.model_checkpoint"))]
    nodes = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "vitlab.train", *args, "data=packed",
               f"data.root={digits_pack}", "data.num_workers=1", "trainer=ddp_cpu", "trainer.devices=1",
               "trainer.num_nodes=2", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
        nodes.append(start(cmd, tmp_path, env=env(VITLAB_PACKED_TRACE=str(trace))))
    outs = [p.communicate(timeout=900)[0] for p in nodes]
    for p, out in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # 2 epochs x 3 global batches of 2 x 32
    readers = _train_reads(trace)
    by_rank = {r: np.concatenate([v for k, v in readers.items() if k.startswith(f"rank{r}-")]) for r in (0, 1)}
    assert len(by_rank[0]) == len(by_rank[1]) == 2 * 96  # each node reads its half of each epoch
    subset = _packed(digits_pack, train_size=192)
    subset.setup()
    expected = sorted(subset.train_set.base.indices)
    counts = np.bincount(np.concatenate(list(by_rank.values())), minlength=1257)
    assert sorted(np.flatnonzero(counts)) == expected and set(counts[expected]) == {2}  # 2 epochs, once each


# ---- a pack is data (issue 20): vitlab reads only what vitlab.pack writes, and runs nothing from it -------------
class _WritesOnUnpickle:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return Path.write_text, (Path(self.path), "pwned")


def _rewrite_split(root: Path, split: str, items: list[dict]) -> None:
    """Replace ``split`` of the pack in ``root`` by ``items`` written with litdata's own writer (which declares each
    field's serializer in index.json), and update the manifest to match: every check but the formats' passes."""
    from litdata.streaming.writer import BinaryWriter

    from vitlab.data.packed import sha256_file

    sdir, tmp = root / split, root / f".w-{split}"
    shutil.rmtree(sdir)
    writer = BinaryWriter(str(tmp), chunk_bytes="64MB")
    for k, item in enumerate(items):
        writer[k] = item
    writer.done()
    index = json.loads((tmp / "0.index.json").read_text())
    sdir.mkdir()
    for c in index["chunks"]:
        os.replace(tmp / c["filename"], sdir / c["filename"])
    shutil.rmtree(tmp)
    (sdir / "index.json").write_text(json.dumps({"chunks": index["chunks"], "config": index["config"]}))
    buf = io.BytesIO()
    np.save(buf, np.zeros(len(items), dtype=np.int32))
    (sdir / "labels.npy").write_bytes(buf.getvalue())
    meta = json.loads((root / MANIFEST).read_text())
    meta["splits"][split].update(
        count=len(items), labels_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
        chunks=[{"filename": c["filename"], "items": c["chunk_size"], "bytes": c["chunk_bytes"],
                 "sha256": sha256_file(sdir / c["filename"])} for c in index["chunks"]])
    (root / MANIFEST).write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def hostile(digits_pack, tmp_path_factory):
    """field -> (a copy of the digits pack whose every split stores that field as a pickle that writes a marker
    file when unpickled, the marker)."""
    made = {}

    def make(field: str = "image") -> tuple[Path, Path]:
        if field not in made:
            root = tmp_path_factory.mktemp("hostile") / "pack"
            shutil.copytree(digits_pack, root)
            marker = root.parent / "pwned.txt"
            item = {"image": b"\x89PNG", "label": 0, "index": 0}
            item[field] = _WritesOnUnpickle(str(marker))
            for split in ("train", "val", "test"):
                _rewrite_split(root, split, [dict(item, index=k) for k in range(200)])  # >= data.train_size
            made[field] = root, marker
        return made[field]

    return make


def test_the_hostile_pack_runs_code_in_litdatas_own_reader(hostile):
    """Why vitlab reads chunks itself: litdata decodes a field with the serializer index.json names."""
    from litdata import StreamingDataset

    root, marker = hostile("image")
    StreamingDataset(str(root / "val"))[0]
    assert marker.read_text() == "pwned"
    marker.unlink()


@pytest.mark.parametrize(("field", "entry"), [("image", "data module"), ("image", "data.verify=true"),
                                              ("label", "data module"), ("image", "vitlab.train")])
def test_a_pickle_declared_field_is_refused_before_anything_is_read(hostile, field, entry, tmp_path):
    root, marker = hostile(field)
    match = rf"{root}/train/index.json: field '{field}' is declared 'pickle'.*refused before reading any of it"
    with pytest.raises(PackedDataError, match=match):
        if entry == "vitlab.train":
            from vitlab.train import train

            try:
                cfg = compose_cfg("train", ["model=vit_micro", "data=packed", f"data.root={root}", *TINY], tmp_path)
            finally:
                GlobalHydra.instance().clear()
            train(cfg)
        else:
            dm = _packed(root, verify=entry == "data.verify=true")
            dm.setup()
            dm.train_set[(0, 0)]
    assert not marker.exists()


def test_a_checkpoint_whose_data_config_names_a_hostile_pack_runs_nothing(hostile, digits_pack, tmp_path):
    """``vitlab.evaluate ckpt_path=...`` alone: the checkpoint's stored data config points at the hostile pack."""
    from hydra.core.hydra_config import HydraConfig

    from vitlab.evaluate import evaluate
    from vitlab.train import train

    root, marker = hostile("image")
    run = tmp_path / "run"
    try:
        train(compose_cfg("train", ["model=vit_micro", "data=packed", f"data.root={digits_pack}", *TINY,
                                    "trainer.max_epochs=1", "trainer.limit_train_batches=1"], run))
    finally:
        GlobalHydra.instance().clear()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["vitlab_config"]["data"]["root"] == str(digits_pack)
    ckpt["vitlab_config"]["data"]["root"] = str(root)
    torch.save(ckpt, tmp_path / "evil.ckpt")
    try:
        cfg = compose_cfg("evaluate", [f"ckpt_path={tmp_path / 'evil.ckpt'}"], tmp_path / "eval")
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(PackedDataError, match=rf"{root}/\w+/index.json: field 'image' is declared 'pickle'"):
        evaluate(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["index.json", "index.json and manifest"])
def test_chunk_names_that_leave_the_pack_are_refused(digits_pack, tmp_path, where):
    root = tmp_path / "pack"
    shutil.copytree(digits_pack, root)
    meta, index = json.loads((root / MANIFEST).read_text()), json.loads((root / "val" / "index.json").read_text())
    evil = f"../train/{meta['splits']['train']['chunks'][0]['filename']}"  # another split's chunk: it exists
    index["chunks"][0]["filename"] = evil
    (root / "val" / "index.json").write_text(json.dumps(index))
    if where != "index.json":
        meta["splits"]["val"]["chunks"][0]["filename"] = evil
        (root / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(PackedDataError, match=rf"{root}/val/index.json names a chunk '\.\./train/.*' outside its split"):
        _packed(root).setup()


def test_a_truncated_shard_with_a_lying_manifest_is_named(digits_pack, tmp_path):
    """The chunk, its manifest entry and index.json all agree on a truncated size: the item table gives it away."""
    from vitlab.data.packed import sha256_file

    root = tmp_path / "pack"
    shutil.copytree(digits_pack, root)
    meta, index = json.loads((root / MANIFEST).read_text()), json.loads((root / "val" / "index.json").read_text())
    chunk = root / "val" / meta["splits"]["val"]["chunks"][0]["filename"]
    truncate_file(chunk, keep=0.6)
    size = chunk.stat().st_size
    meta["splits"]["val"]["chunks"][0].update(bytes=size, sha256=sha256_file(chunk))
    index["chunks"][0]["chunk_bytes"] = size
    (root / MANIFEST).write_text(json.dumps(meta))
    (root / "val" / "index.json").write_text(json.dumps(index))
    dm = _packed(root, verify=True)
    dm.setup()
    with pytest.raises(PackedDataError, match=rf"shard {chunk} is truncated or damaged: its item table points outside"):
        dm.val_set[0]


def test_a_silent_endpoint_gives_up_after_data_timeout_while_resolving_the_config(monkeypatch, compose_train):
    """A server that accepts and never answers: the config's resolvers (num_classes ...) obey data.timeout too."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # connections complete in the kernel's backlog; nothing ever answers
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
        cfg = compose_train("data=packed", "data.root=s3://bucket/pack", "data.timeout=1")
        t0 = time.monotonic()
        for key in ("num_classes", "img_size", "normalization", "num_classes"):  # each access resolves again
            with pytest.raises(InterpolationResolutionError, match=r"vitlab_pack.json .*within data.timeout=1s"):
                cfg.data[key]
        assert time.monotonic() - t0 < 20  # a hang guard
        server.setblocking(False)
        tries = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                server.accept()[0].close()
                tries += 1
        assert tries == 1  # one request of 1 s in all: not one per access, nor a retry
