"""The paper's results tables in vitlab.paper, cell by cell, against copies made apart from it (issue 22): the
markdown tables of the shared PAPER.md (parsed at test time where it exists) and rows typed here by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vitlab import paper

ROOT = Path(__file__).resolve().parents[1]
PAPER_MD = next((p for p in (Path(os.environ.get("VITLAB_PAPER_MD", "/nonexistent")), ROOT.parent / "shared" / "PAPER.md",
                             ROOT.parents[1] / "shared" / "PAPER.md") if p.is_file()), None)
MODELS5 = ["vit_b16", "vit_b32", "vit_l16", "vit_l32", "vit_h14"]
DATA = {"ImageNet": "imagenet", "ImageNet-21k": "imagenet21k", "JFT-300M": "jft300m", "CIFAR-10": "cifar10",
        "CIFAR-100": "cifar100", "ImageNet ReaL": "imagenet_real", "Oxford Flowers-102": "flowers102",
        "Oxford-IIIT Pets": "pets"}

# typed by hand from App. C, Table 5: (pretraining data, dataset) -> B/16, B/32, L/16, L/32, H/14
HAND_TABLE5 = {
    ("imagenet", "imagenet"): (77.91, 73.38, 76.53, 71.16, None),
    ("imagenet", "pets"): (93.81, 92.04, 93.64, 91.35, None),
    ("imagenet21k", "imagenet"): (83.97, 81.28, 85.15, 80.99, 85.13),
    ("imagenet21k", "cifar100"): (91.67, 91.97, 93.44, 93.04, 93.82),
    ("jft300m", "imagenet"): (84.15, 80.73, 87.12, 84.37, 88.04),
    ("jft300m", "flowers102"): (99.56, 99.27, 99.56, 99.45, 99.68),
}


def _cell(text: str) -> float | None:
    return None if text.strip() in ("–", "-", "") else float(text)


def _md_table(after: str) -> list[list[str]]:
    """The rows of the first markdown table after the heading that starts with ``after`` in PAPER.md."""
    lines = PAPER_MD.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the |---| line


def _stored5(data: str, dataset: str) -> tuple[float | None, ...]:
    return tuple(paper.TABLE5.get((m, data), {}).get(dataset) for m in MODELS5)


def test_table5_has_84_cells_and_no_h14_on_imagenet():
    cells = [v for r in paper.TABLE5.values() for k, v in r.items() if k != "source"]
    assert len(cells) == 84 and ("vit_h14", "imagenet") not in paper.TABLE5


@pytest.mark.parametrize(("key", "want"), sorted(HAND_TABLE5.items()))
def test_table5_rows_typed_by_hand(key, want):
    assert _stored5(*key) == want


@pytest.mark.skipif(PAPER_MD is None, reason="the shared PAPER.md is not beside this checkout")
def test_table5_equals_paper_md_cell_by_cell():
    got, pre = {}, None
    for row in _md_table("## Table 5"):
        pre = DATA[row[0]] if row[0] else pre
        got[(pre, DATA[row[1]])] = tuple(_cell(c) for c in row[2:])
    assert len(got) == 18
    assert {k: _stored5(*k) for k in got} == got


@pytest.mark.skipif(PAPER_MD is None, reason="the shared PAPER.md is not beside this checkout")
def test_table6_and_table2_equal_paper_md():
    names = {v: k for k, v in paper._MODEL_LABELS.items()}
    t6 = {(names[r[0]], int(r[1])): (*map(float, r[2:8]), int(r[8])) for r in _md_table("## Model-scaling results")}
    assert {k: (*(v[d] for d in paper.TRANSFER_DATA), v["exaflops"]) for k, v in paper.TABLE6.items()} == t6
    t2 = _md_table("## Headline results")
    cols = [("vit_h14", "jft300m"), ("vit_l16", "jft300m"), ("vit_l16", "imagenet21k"), ("bit_r152x4", "jft300m")]
    for row in t2[:7]:
        d = DATA.get(row[0], "vtab")
        assert [paper.TABLE2[c][d] for c in cols] == [float(x) for x in row[1:5]], row[0]


def test_printed_table5_is_the_stored_numbers(capsys):
    assert paper.main(["table5"]) == 0
    out = capsys.readouterr().out
    assert "| ImageNet-21k | ImageNet | 83.97 | 81.28 | 85.15 | 80.99 | 85.13 |" in out
    assert "| ImageNet | CIFAR-10 | 98.13 | 97.77 | 97.86 | 97.94 | – |" in out
    printed = [line for line in out.splitlines() if line.startswith("| ") and line[2:5] in ("Ima", "JFT")]
    assert len(printed) == 18
    for line in printed:  # every printed cell is the stored one
        c = [x.strip() for x in line.strip("|").split("|")]
        assert _stored5(DATA[c[0]], DATA[c[1]]) == tuple(_cell(x) for x in c[2:])


@pytest.mark.parametrize("name", ["table2", "table6", "recipes"])
def test_other_tables_print(capsys, name):
    assert paper.main([name]) == 0
    assert capsys.readouterr().out.count("\n|") > 5


def test_unknown_table_is_a_one_line_error(capsys):
    assert paper.main(["table9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error:") and "table5" in err and err.count("\n") == 1


def test_a_384px_run_is_matched_with_table5_not_table2():
    # ViT-L/16 on ImageNet-21k fine-tuned on ImageNet at 384 px: Table 5's 85.15, not Table 2's 85.30 (512 px)
    r = paper.paper_results("vit_l16", "imagenet21k")
    assert r["imagenet"] == paper.TABLE5[("vit_l16", "imagenet21k")]["imagenet"] == 85.15
    assert r["source"].startswith("Table 5")
    # a JFT run without its epochs: Table 5 (the longest runs); with them: Table 6's row
    assert paper.paper_results("vit_l16", "jft300m")["imagenet"] == 87.12 == paper.TABLE6[("vit_l16", 14)]["imagenet"]
    assert paper.paper_results("vit_l16", "jft300m", 7) is paper.TABLE6[("vit_l16", 7)]
    # H/14 on JFT: the tables disagree, and the source says which one the number came from
    assert paper.paper_results("vit_h14", "jft300m")["imagenet"] == 88.04
    assert "not Table 6" in paper.paper_results("vit_h14", "jft300m")["source"]
    assert paper.paper_results("vit_h14", "jft300m", 14)["source"] == "Table 6 row 6"
    # JFT models Table 5 lacks: Table 6's shortest run
    assert paper.paper_results("bit_r152x2", "jft300m") is paper.TABLE6[("bit_r152x2", 7)]
    assert paper.paper_results("vit_h14", "imagenet") is None
