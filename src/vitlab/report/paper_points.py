"""The paper's number beside yours: match a finished run to a row of the paper's results tables.

A run matches when the paper fine-tuned the same model, pretrained on the same data, on the same dataset:
``model/name`` (vitlab's paper names: ``vit_b16``, ``bit_r50x1``, ``r50_vit_b16``), ``paper.pretrain_data`` (what
``model.pretrained`` was pretrained on; the ``paper/finetune_<data>`` recipes carry the key) and ``data/name``.
The numbers come only from :mod:`vitlab.paper` (:func:`vitlab.paper.paper_results`): Table 6 for a JFT-300M run
with its epochs, else Table 5 (by pretraining data), both fine-tuned at 384 px; Table 2 (512/518 px, Polyak
averaging) only where neither has the cell, and the source says which. Runs that match nothing get no paper number: the report never guesses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vitlab import metrics as M
from vitlab import paper
from vitlab.metrics import PAPER_ACC, PAPER_EXAFLOPS, PAPER_SOURCE
from vitlab.report.collect import PRETRAIN_DATA_KEY, PRETRAIN_EPOCHS_KEY

log = logging.getLogger("vitlab.report")



def paper_match(row: dict[str, Any]) -> dict[str, Any] | None:
    """``{paper/acc, paper/source[, paper/exaflops]}`` for a run the paper also reports, else None."""
    model, pre, data = row.get(M.MODEL_NAME), row.get(PRETRAIN_DATA_KEY), row.get(M.DATA_NAME)
    if not (model and pre and data):
        return None
    epochs = row.get(PRETRAIN_EPOCHS_KEY)
    candidates = (paper.paper_results(str(model), str(pre), int(epochs) if isinstance(epochs, (int, float)) else None),
                  paper.TABLE2.get((str(model), str(pre))))  # Table 6 / Table 5 first, Table 2 only for what they lack
    found = next((c for c in candidates if c and isinstance(c.get(str(data)), (int, float))), None)
    if found is None:
        return None
    out = {PAPER_ACC: found[str(data)] / 100, PAPER_SOURCE: found["source"]}
    if isinstance(found.get("exaflops"), (int, float)):
        out[PAPER_EXAFLOPS] = float(found["exaflops"])
    return out


def annotate(rows: Iterable[dict[str, Any]]) -> int:
    """Add the paper's number to every row that matches one (in place); return how many matched."""
    n = 0
    for r in rows:
        pre = r.get(PRETRAIN_DATA_KEY)
        if pre and str(pre) not in paper.PRETRAIN_DATA:
            log.warning("%s: %s=%r is none of the paper's pretraining sets %s; no paper number for this run",
                        r.get("job_dir", "a run"), PRETRAIN_DATA_KEY, pre, list(paper.PRETRAIN_DATA))
        m = paper_match(r)
        if m:
            r.update(m)
            n += 1
    return n
