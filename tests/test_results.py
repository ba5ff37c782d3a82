"""metrics.json has one home, vitlab.results: written atomically, read back bounded and checked, collected in job order."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from vitlab import results
from vitlab.errors import ReportError
from vitlab.results import RESULT_FILE, collect_results, read_results, write_results

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"


def test_written_results_read_back_with_non_finite_as_null(tmp_path):
    out = write_results(tmp_path / "job", {"val/acc_best": 0.5, "train/loss": math.nan, "model/name": "vit_micro",
                                           "vtab/val_by_lr": {"0.01": 0.4}})
    assert out == tmp_path / "job" / RESULT_FILE and not list((tmp_path / "job").glob("*.tmp"))
    assert read_results(tmp_path / "job") == {"val/acc_best": 0.5, "train/loss": None, "model/name": "vit_micro",
                                              "vtab/val_by_lr": {"0.01": 0.4}}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not the mapping of results"),
    (json.dumps({"a": {"b": {"c": 1}}}), "key 'a' holds nested data"),
    (json.dumps({"x": "y" * 100}), "too big for a run file"),
])
def test_a_bad_results_file_is_refused_naming_it(tmp_path, monkeypatch, content, message):
    monkeypatch.setattr(results, "MAX_BYTES", 64)
    (tmp_path / RESULT_FILE).write_text(content)
    with pytest.raises(ReportError, match=f"{RESULT_FILE}: .*{message}"):
        read_results(tmp_path)


def test_collect_reads_every_job_in_job_order(tmp_path):
    for j in (10, 2, 0):
        write_results(tmp_path / str(j), {"job": j})
    (tmp_path / "1").mkdir()  # a job that failed before writing its results
    assert [r["job"] for r in collect_results(tmp_path)] == [0, 2, 10]
    assert collect_results(tmp_path)[0]["job_dir"] == str(tmp_path / "0")


def test_the_file_name_is_spelled_only_in_results_py():
    """Every writer and reader goes through vitlab.results: no other module spells the file's name."""
    found = [f"{p.relative_to(SRC)}:{n.lineno}" for p in sorted(SRC.rglob("*.py")) if p.name != "results.py"
             for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Constant) and n.value == RESULT_FILE]
    assert found == []
