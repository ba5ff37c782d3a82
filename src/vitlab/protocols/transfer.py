"""The end of a pretrain -> fine-tune demo: fine-tuned vs from-scratch test accuracy, side by side.

:class:`TransferSummary` is a Hydra callback for ``experiment=transfer_demo`` / ``experiment=mpp_demo``: each
job's stage comes from its ``+<stage_key>=<stage>`` override (``.hydra/overrides.yaml``), its numbers from its
``metrics.json`` (both read by ``vitlab.utils.run_files``). It prints both accuracies and the difference, and says
what the difference supports (:func:`transfer_verdict`): "pretraining helps" only when the fine-tuned runs beat
scratch by more than the spread between seeds, never from runs at chance accuracy. With one seed per stage
the spread is unknown, and the summary says so instead of claiming a gain (add ``seed=1,2,3`` to measure it).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vitlab import metrics as M
from vitlab.results import collect_results
from vitlab.utils.run_files import read_overrides

#: what the comparison supports (``transfer_summary.json``'s ``verdict``)
HELPS, HURTS, WITHIN_SPREAD, ONE_SEED, AT_CHANCE, INCOMPLETE = (
    "helps", "hurts", "within_seed_spread", "one_seed", "at_chance", "incomplete")
#: an accuracy within this many binomial standard errors of chance (on the run's test set) is "at chance"
CHANCE_SIGMAS = 3.0


def job_stage(job_dir: str | Path, stage_key: str) -> str | None:
    for o in read_overrides(job_dir):
        o = o.lstrip("+")
        if o.startswith(f"{stage_key}="):
            return o.split("=", 1)[1]
    return None


def _accs(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r[M.TEST_ACC]) for r in rows if isinstance(r.get(M.TEST_ACC), (int, float))
            and math.isfinite(r[M.TEST_ACC])]


def chance_level(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(chance accuracy, the accuracy below which a run is at chance) from ``data/num_classes`` and
    ``data/test_size`` of the rows (None when they do not say): chance + :data:`CHANCE_SIGMAS` binomial standard
    errors of chance on that many test images."""
    k = next((r[M.DATA_NUM_CLASSES] for r in rows if isinstance(r.get(M.DATA_NUM_CLASSES), int)), None)
    if not k or k < 2:
        return None
    n = next((r[M.DATA_TEST_SIZE] for r in rows if isinstance(r.get(M.DATA_TEST_SIZE), int) and r[M.DATA_TEST_SIZE]),
             None)
    p = 1.0 / k
    margin = CHANCE_SIGMAS * math.sqrt(p * (1 - p) / n) if n else p / 2
    return p, p + margin


def transfer_verdict(finetune: list[float], scratch: list[float], chance_below: float | None) -> tuple[str, float | None]:
    """(verdict, seed spread) for fine-tuned vs scratch test accuracies (one per seed).

    The seed spread is the larger of the two stages' max - min; the gain (difference of the means) is a verdict
    only beyond it. A stage at chance accuracy (mean below ``chance_below``) supports no verdict at all."""
    if not finetune or not scratch:
        return INCOMPLETE, None
    if chance_below is not None and min(statistics.fmean(finetune), statistics.fmean(scratch)) < chance_below:
        return AT_CHANCE, None
    if len(finetune) < 2 or len(scratch) < 2:
        return ONE_SEED, None
    spread = max(max(finetune) - min(finetune), max(scratch) - min(scratch))
    gain = statistics.fmean(finetune) - statistics.fmean(scratch)
    return (HELPS if gain > spread else HURTS if gain < -spread else WITHIN_SPREAD), spread


def transfer_summary(rows: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
    by_stage: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        by_stage.setdefault(job_stage(r["job_dir"], stage_key), []).append(r)
    pre_rows = by_stage.get("pretrain") or by_stage.get("mpp_pretrain") or []
    ft_rows, sc_rows = by_stage.get("finetune") or [], by_stage.get("scratch") or []
    pre = pre_rows[0] if pre_rows else {}
    ft, sc = _accs(ft_rows), _accs(sc_rows)
    chance = chance_level(ft_rows + sc_rows)
    verdict, spread = transfer_verdict(ft, sc, chance[1] if chance else None)
    pre_chance = chance_level(pre_rows)
    at_chance = [name for name, accs, lvl in (("pretraining", _accs(pre_rows), pre_chance), ("fine-tuned", ft, chance),
                                              ("scratch", sc, chance))
                 if accs and lvl and statistics.fmean(accs) < lvl[1]]
    out = {
        "pretrain_stage": "mpp_pretrain" if "mpp_pretrain" in by_stage else "pretrain",
        "pretrain_data": pre.get(M.DATA_NAME), "pretrain_test_acc": pre.get(M.TEST_ACC),
        "finetune_data": (ft_rows[0] if ft_rows else {}).get(M.DATA_NAME),
        "finetune_test_acc": statistics.fmean(ft) if ft else None,
        "scratch_test_acc": statistics.fmean(sc) if sc else None,
        "seeds": {"finetune": len(ft), "scratch": len(sc)},
        "seed_spread": spread, "chance": chance[0] if chance else None, "at_chance": at_chance, "verdict": verdict,
        "pretrain_fewshot": {k: v for k, v in pre.items() if k.startswith(M.FEWSHOT_PREFIX) and isinstance(v, float)},
    }
    if ft and sc:
        out["gain"] = out["finetune_test_acc"] - out["scratch_test_acc"]
    return out


def format_transfer(s: dict[str, Any]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    what = "masked patch prediction, self-supervised" if s["pretrain_stage"] == "mpp_pretrain" else "supervised"
    metric = "masked-patch colour acc" if s["pretrain_stage"] == "mpp_pretrain" else "test acc"
    seeds = s.get("seeds") or {}
    mean = " (mean of {} seeds)" if min(seeds.values(), default=1) > 1 else ""
    lines = [
        f"pretraining ({what}) on {s['pretrain_data']}: {metric} {pct(s['pretrain_test_acc'])}",
        f"  fine-tuned on {s['finetune_data']} from the pretrained checkpoint: test acc {pct(s['finetune_test_acc'])}"
        + mean.format(seeds.get("finetune")),
        f"  trained on {s['finetune_data']} from scratch (same model, data, steps): test acc {pct(s['scratch_test_acc'])}"
        + mean.format(seeds.get("scratch")),
    ]
    gain, spread, verdict = s.get("gain"), s.get("seed_spread"), s.get("verdict")
    diff = "" if gain is None else f"{100 * gain:+.2f} points vs scratch"
    if verdict == INCOMPLETE or gain is None:
        lines.append("  (a job did not finish: no comparison)")
    elif verdict == AT_CHANCE:
        runs = [r for r in s.get("at_chance", []) if r != "pretraining"]
        which = f"the {' and '.join(runs)} run{'s are' if len(runs) > 1 else ' is'}" if runs else "the runs are"
        lines.append(f"  -> no conclusion: {diff}, but {which} at chance accuracy ({pct(s['chance'])}); train "
                     "longer or check the learning rate before comparing")
    elif verdict == ONE_SEED:
        lines.append(f"  -> no conclusion yet: {diff} from one seed, and the spread between seeds is unknown; "
                     "add seed=1,2,3 to measure it")
    elif verdict == WITHIN_SPREAD:
        lines.append(f"  -> within noise: {diff}, no more than the spread between seeds ({100 * spread:.2f} points)")
    elif verdict == HELPS:
        lines.append(f"  -> pretraining helps: +{100 * gain:.2f} points over scratch, more than the spread between "
                     f"seeds ({100 * spread:.2f} points)")
    else:
        lines.append(f"  -> pretraining does NOT help here: {diff}, beyond the spread between seeds "
                     f"({100 * spread:.2f} points)")
    if s["pretrain_stage"] == "pretrain" and "pretraining" in (s.get("at_chance") or []):
        lines.append("  (the pretraining run itself is at chance accuracy: it learnt nothing to transfer)")
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
