"""FLOP counts are kept between processes (issue 23: 0.6 s of every run's start-up), keyed so a change counts again."""

from __future__ import annotations

import json

import pytest

import vitlab.inspection.flops as F

CFG = dict(family="vit", variant="micro", patch_size=8, num_classes=10, img_size=16, name="vit_micro")


def test_flop_count_is_read_back_from_the_cache_and_a_corrupt_entry_is_recounted(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    F._config_flops.cache_clear()
    try:
        first = F.model_config_flops(CFG)
        (entry,) = (tmp_path / "vitlab" / "flops").glob("*.json")
        F._config_flops.cache_clear()  # a new process: no in-memory copy
        real = F.count_flops
        monkeypatch.setattr(F, "count_flops", lambda *a, **k: pytest.fail("counted again despite the cache"))
        assert F.model_config_flops(CFG) == first
        entry.write_text('{"forward_flops": "not a number"}')  # a damaged entry is counted afresh and rewritten
        monkeypatch.setattr(F, "count_flops", real)
        F._config_flops.cache_clear()
        assert F.model_config_flops(CFG) == first
        assert json.loads(entry.read_text())["forward_flops"] == first.forward_flops
    finally:
        F._config_flops.cache_clear()
