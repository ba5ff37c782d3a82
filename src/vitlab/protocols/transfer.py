"""The end of a pretrain -> fine-tune demo: fine-tuned vs from-scratch test accuracy, side by side.

:class:`TransferSummary` is a Hydra callback for ``experiment=transfer_demo`` / ``experiment=mpp_demo``: each
job's stage comes from its ``+<stage_key>=<stage>`` override (``.hydra/overrides.yaml``), its numbers from its
``metrics.json``. It prints both accuracies and the difference, and says plainly when pretraining did not help.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vitlab import metrics as M
from vitlab.results import collect_results


def job_stage(job_dir: str | Path, stage_key: str) -> str | None:
    f = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    for o in OmegaConf.load(f):
        o = str(o).lstrip("+")
        if o.startswith(f"{stage_key}="):
            return o.split("=", 1)[1]
    return None


def transfer_summary(rows: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
    by_stage = {job_stage(r["job_dir"], stage_key): r for r in rows}
    pre = by_stage.get("pretrain") or by_stage.get("mpp_pretrain") or {}
    ft, sc = by_stage.get("finetune") or {}, by_stage.get("scratch") or {}
    out = {
        "pretrain_stage": "mpp_pretrain" if "mpp_pretrain" in by_stage else "pretrain",
        "pretrain_data": pre.get(M.DATA_NAME), "pretrain_test_acc": pre.get(M.TEST_ACC),
        "finetune_data": ft.get(M.DATA_NAME), "finetune_test_acc": ft.get(M.TEST_ACC),
        "scratch_test_acc": sc.get(M.TEST_ACC),
        "pretrain_fewshot": {k: v for k, v in pre.items() if k.startswith(M.FEWSHOT_PREFIX) and isinstance(v, float)},
    }
    if out["finetune_test_acc"] is not None and out["scratch_test_acc"] is not None:
        out["gain"] = out["finetune_test_acc"] - out["scratch_test_acc"]
    return out


def format_transfer(s: dict[str, Any]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    what = "masked patch prediction, self-supervised" if s["pretrain_stage"] == "mpp_pretrain" else "supervised"
    metric = "masked-patch colour acc" if s["pretrain_stage"] == "mpp_pretrain" else "test acc"
    lines = [
        f"pretraining ({what}) on {s['pretrain_data']}: {metric} {pct(s['pretrain_test_acc'])}",
        f"  fine-tuned on {s['finetune_data']} from the pretrained checkpoint: test acc {pct(s['finetune_test_acc'])}",
        f"  trained on {s['finetune_data']} from scratch (same model, data, steps): test acc {pct(s['scratch_test_acc'])}",
    ]
    gain = s.get("gain")
    if gain is None:
        lines.append("  (a job did not finish: no comparison)")
    elif gain > 0:
        lines.append(f"  -> pretraining helps: +{100 * gain:.2f} points over scratch")
    else:
        lines.append(f"  -> pretraining does NOT help here: {100 * gain:+.2f} points vs scratch")
    return "\n".join(lines)


class TransferSummary(Callback):
    def __init__(self, stage_key: str = "transfer_demo") -> None:
        self.stage_key = stage_key

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_results(sweep_dir)
        if not rows:
            return
        s = transfer_summary(rows, self.stage_key)
        (sweep_dir / "transfer_summary.json").write_text(json.dumps(s, indent=2))
        print("\n" + format_transfer(s))
