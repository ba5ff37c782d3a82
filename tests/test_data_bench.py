"""``make bench-data`` (issue 15): packed shards vs torchvision ImageFolder vs vitlab's folder loader on the same
JPEGs, the listing timer, and the imagenet21k index cache that spares a second run the listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vitlab.data.imagenet21k as i21k
from vitlab.bench.data import BASELINE, WDS_ROW, main, write_tree
from vitlab.data.imagenet21k import ImageNet21kDataModule


def test_bench_data_compares_packed_with_torchvision_and_writes_json(tmp_path, capsys):
    result = main(["--images", "12", "--configs", "pretrain:32,finetune:32", "--batch", "4", "--workers", "0",
                   "--repeats", "1", "--max-side", "64", "--pack-workers", "1", "--listing", "40",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ratio packed/torchvision (pretrain 32 px):" in out and "ratio packed, data.draft=true/torchvision" in out
    assert "pack.max_side=64 pack.quality=90 (re-encoded: other pixels)" in out
    assert "listing 40 files" in out and "open the packed copy" in out
    data = json.loads(Path(out.strip().splitlines()[-1].removeprefix("wrote ")).read_text())
    loaders = {r["loader"] for r in data["rows"]}
    on_device = "data.draft=true, data.normalize_on_device=true"
    assert loaders == {BASELINE, "vitlab folder", WDS_ROW, "packed", "packed, data.draft=true", f"packed, {on_device}",
                       f"packed, pack.max_side=64, {on_device}"}
    assert len(data["rows"]) == len(result["rows"]) == 2 * 7
    assert all(r["images"] == 12 and r["img_per_s"] > 0 for r in data["rows"])  # every loader read every image
    assert all(r["img_per_cpu_s"] > 0 for r in data["rows"])  # the per-core figure: CPU seconds were counted
    assert f"ratio packed, {on_device}/torchvision (pretrain 32 px):" in out and "img per CPU-second" in out
    assert data["listing"]["files"] == 40 and data["listing"]["open_packed_s"] > 0
    fig = data["packed_original_vs_torchvision"]  # issue 23's figure, one per pipeline:size
    assert set(fig) == {"pretrain:32", "finetune:32"} and fig["pretrain:32"]["loader"] == f"packed, {on_device}"
    assert fig["pretrain:32"]["img_per_s_per_worker"] > 0 and fig["pretrain:32"]["img_per_cpu_s"] > 0
    assert "packed_original_vs_torchvision pretrain:32: " in out


def test_loaders_take_turns_in_reverse_order_every_other_repeat(monkeypatch):
    """After the warm-up, the passes go A..F, F..A, A..F: in a fixed order the baseline would always run first in a
    round and the original-bytes reader last, and a drift in the machine's load would favour one of them."""
    import vitlab.bench.data as bench

    order: list[str] = []
    monkeypatch.setattr(bench, "loaders_for", lambda *a, **kw: {"a": "a", "b": "b", "c": "c"})
    monkeypatch.setattr(bench, "_one_pass", lambda ld: (order.append(ld), (4, 1.0, 2.0))[1])
    rows = bench.run(Path("."), {}, "pretrain", 32, 4, 0, repeats=3)
    assert "".join(order) == "abc" + "abc" + "cba" + "abc"  # warm-up, then three repeats
    assert [r["loader"] for r in rows] == ["a", "b", "c"] and rows[0]["img_per_cpu_s"] == 2.0


def _count_listings(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = i21k.scan_class_folders

    def counting(directory, *a, **kw):
        calls.append(str(directory))
        return real(directory, *a, **kw)

    monkeypatch.setattr(i21k, "scan_class_folders", counting)
    return calls


def test_imagenet21k_index_is_cached_and_listed_again_when_the_tree_changes(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "i21k", 30, per_class=10)
    calls = _count_listings(monkeypatch)

    def splits():
        dm = ImageNet21kDataModule(root=str(root), num_classes=3, val_fraction=0.2, num_workers=0, index_cache=True,
                                   cache_dir=str(tmp_path / "cache"))
        train, val, _ = dm.build_splits()
        return sorted(train.paths + val.paths), train.paths, dm.classes

    first = splits()
    assert len(calls) == 1 and len(first[0]) == 30
    assert splits() == first and len(calls) == 1  # the second run reads the cache: no listing
    assert not list(root.rglob("*.gz"))  # nothing written into the dataset
    new = root / "n00000001" / "img_new.JPEG"
    new.write_bytes((root / "n00000001" / "img_0000010.JPEG").read_bytes())
    changed = splits()
    assert len(calls) == 2 and str(new) in changed[0]  # a changed class folder: listed again
    os.remove(new)
    os.rename(root / "n00000002", root / "n00000009")
    assert splits()[2] == ["n00000000", "n00000001", "n00000009"] and len(calls) == 3


def test_imagenet21k_index_cache_replays_the_listing_warnings(tmp_path):
    root = write_tree(tmp_path / "i21k", 20, per_class=10)
    (root / "n00000000" / "loop").symlink_to(root, target_is_directory=True)
    kw = dict(root=str(root), num_classes=2, val_fraction=0.2, num_workers=0, index_cache=True,
              cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # listed, then from the cache: the same warning both times
        with pytest.warns(UserWarning, match="loop"):
            ImageNet21kDataModule(**kw).build_splits()
