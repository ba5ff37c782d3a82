"""``python -m vitlab.bench timm_script``: ``python -m vitlab.train`` (its defaults) vs timm's own ``train.py`` +
``validate.py`` on the same job, side by side, interleaved.

    git clone https://github.com/huggingface/pytorch-image-models /tmp/timm-src     # its scripts, not the package
    git -C /tmp/timm-src checkout v$(python -c "import timm; print(timm.__version__)")
    python -m vitlab.bench timm_script --timm-src /tmp/timm-src --epochs 30
    python -m vitlab.bench timm_script --timm-train /path/train.py --timm-validate /path/validate.py -- model.variant=...

The job is the default ``python -m vitlab.train`` run (``vit_micro`` on ``digits``, AdamW, warm-up + cosine,
gradient clipping, ``logger=csv``), ``--epochs`` epochs on one thread (``OMP_NUM_THREADS=1``). timm's scripts get
the same job from vitlab's composed config, nothing written twice: the digits split exported as an image folder
(lossless PNGs of exactly the uint8 images vitlab trains on: ``train/ val/ test/<class>/``), the same network
(``vit_tiny_patch16_224`` with vitlab's ``vit_micro`` shape as ``--model-kwargs``; the parameter count is
checked), batch sizes, learning rate, weight decay (bias and norm excluded in both), warm-up fraction (as whole
epochs), per-update cosine to 0, clip norm and normalisation; no label smoothing or augmentation (``--no-aug``:
vitlab's digits pipeline is a small translation), ``--workers 0`` (vitlab reads digits from memory),
``--device cpu``. timm then runs ``validate.py`` on the test split with its best checkpoint, as vitlab's
run tests its own.

Reported per way (median over ``--repeats``, each repeat runs vitlab then timm back to back): training img/s of
the median epoch (timm: ``train.py``'s own per-epoch average from its last-batch log line; vitlab: images / time
from the epoch's start to its last batch end, from :class:`vitlab.callbacks.timing.HookProfiler`); whole-process
wall and CPU seconds (user + sys) and peak RSS, timm's being ``train.py`` + ``validate.py``; test accuracy. The
ratios vitlab/timm are taken per repeat. Targets: img/s >= 1.0x, wall <= 1.1x. The load average is
printed beside every repeat: on a shared machine only the ratios carry information.

timm's scripts are not part of vitlab: they are read from where the user points (a checkout of the repository
at the installed timm's version, or the two files), and copied into the bench's run folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
from PIL import Image

from vitlab import metrics as M
from vitlab.bench.training import run_in_terminal
from vitlab.callbacks.timing import LAUNCH_ENV
from vitlab.config import compose_job
from vitlab.errors import BenchConfigError
from vitlab.models import registry
from vitlab.models.vit import VIT_SHAPES
from vitlab.results import read_results
from vitlab.runs.assemble import build_datamodule

#: vitlab's side of the job, on top of the user's overrides: CSV only, no W&B (the job compared in docs/performance.md)
VITLAB_OVERRIDES = ("logger=csv",)
#: train.py's last-batch line of an epoch: ``Train: <epoch> [<idx>/<n> (100%)] ... (<avg s>s, <avg img/s>/s)``
TIMM_EPOCH_LINE = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+) \(100%\)\].*?\(([\d.]+)s,\s*([\d.]+)/s\)")
TIMM_PARAMS_LINE = re.compile(r"param count:\s*(\d+)")
TIMM_TOP1_LINE = re.compile(r"\* Acc@1 ([\d.]+)")


# ---------------------------------------------------------------------------------------------
# The job, once: vitlab's composed config -> the digits folder and timm's arguments
# ---------------------------------------------------------------------------------------------
def export_split(dm, root: Path) -> dict[str, int]:
    """Write the DataModule's train/val/test splits as ``root/<split>/<class>/<i>.png`` (lossless: the exact uint8
    images vitlab reads). Returns the image count per split."""
    counts = {}
    for name, ds in zip(("train", "val", "test"), dm.build_splits(), strict=True):
        for c in sorted(set(ds.targets)):
            (root / name / f"{c:03d}").mkdir(parents=True, exist_ok=True)
        for i, (img, target) in enumerate(zip(ds.images, ds.targets, strict=True)):
            Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())).save(root / name / f"{target:03d}" / f"{i:05d}.png")
        counts[name] = len(ds)
    return counts


def timm_args(cfg, data_root: Path, epochs: int) -> tuple[list[str], list[str], int]:
    """train.py's and validate.py's arguments for the job ``cfg`` (a composed ``conf/train.yaml``), and the warm-up
    in whole epochs. Only the ViT family is mapped (timm's ``vit_tiny_patch16_224`` with vitlab's shape)."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    family = registry.get(m.family)  # a plain ViT: tokens cut from pixels (not a hybrid's CNN feature map)
    if not (family.transformer and family.pixel_patches) or m.classifier != "token" or m.pos_embed != "1d":
        raise BenchConfigError(f"timm_script maps vitlab's ViT with a [class] token and 1d position embeddings; "
                               f"model={m.name} (family {m.family}) is not one: use model=vit_micro")
    if o.name != "adamw" or o.get("decay", "cosine") != "cosine":
        raise BenchConfigError(f"timm_script maps optim=adamw with decay=cosine, not {o.name}/{o.get('decay')}")
    shape = VIT_SHAPES[m.variant]
    warmup = o.get("warmup", 0) or 0
    warmup_epochs = round(warmup * epochs) if isinstance(warmup, float) and warmup < 1 else 0
    if not isinstance(warmup, float) and warmup:
        raise BenchConfigError(f"optim.warmup={warmup} steps: give it as a fraction of training (timm counts epochs)")
    mean, std = ("0.5", "0.5", "0.5"), ("0.5", "0.5", "0.5")  # data.normalization=paper: [-1, 1]
    if d.get("normalization", "paper") != "paper":
        raise BenchConfigError(f"data.normalization={d.normalization}: timm_script maps the paper's [-1, 1] only")
    model = ["--model", "vit_tiny_patch16_224", "--num-classes", str(int(d.num_classes)), "--img-size", str(int(m.img_size)),
             "--model-kwargs", f"img_size={int(m.img_size)}", f"patch_size={int(m.patch_size)}", f"embed_dim={shape.width}", f"depth={shape.depth}",
             f"num_heads={shape.heads}", f"mlp_ratio={shape.mlp / shape.width}", "fc_norm=False",
             "--mean", *mean, "--std", *std, "--crop-pct", "1.0", "--interpolation", "bilinear", "--device", "cpu",
             "--workers", "0", "--no-prefetcher"]
    train = [str(data_root), "--train-split", "train", "--val-split", "val", *model,
             "-b", str(int(d.batch_size)), "-vb", str(int(d.eval_batch_size)),
             "--opt", "adamw", "--lr", str(float(o.lr)), "--weight-decay", str(float(o.weight_decay)),
             "--opt-betas", *[str(b) for b in o.get("betas", (0.9, 0.999))], "--opt-eps", str(float(o.get("eps", 1e-8))),
             "--sched", "cosine", "--sched-on-updates", "--epochs", str(epochs), "--warmup-epochs", str(warmup_epochs),
             "--warmup-lr", "0", "--min-lr", "0", "--cooldown-epochs", "0", "--smoothing", "0", "--no-aug",
             "--checkpoint-hist", "1", "--seed", str(int(cfg.seed)), "--experiment", "timm"]
    if o.get("grad_clip"):
        train += ["--clip-grad", str(float(o.grad_clip)), "--clip-mode", "norm"]
    validate = [str(data_root), "--split", "test", *model, "-b", str(int(d.eval_batch_size))]
    return train, validate, warmup_epochs


def find_scripts(a) -> tuple[Path, Path, str]:
    """train.py and validate.py: given as files, or read from a checkout of timm's repository at the installed
    version's tag (``v<timm.__version__>``; its current files, with a note, when the tag is missing)."""
    if a.timm_train or a.timm_validate:
        if not (a.timm_train and a.timm_validate):
            raise BenchConfigError("give both --timm-train and --timm-validate (or --timm-src)")
        for p in (a.timm_train, a.timm_validate):
            if not p.is_file():
                raise BenchConfigError(f"{p} is not a file: pass timm's train.py / validate.py from its repository")
        return a.timm_train, a.timm_validate, "files given"
    if not a.timm_src:
        raise BenchConfigError("timm's train.py is not part of the timm package: pass --timm-src <checkout of "
                               "github.com/huggingface/pytorch-image-models> (or --timm-train/--timm-validate)")
    tag = f"v{timm.__version__}"
    out = a.out / "timm_scripts"
    out.mkdir(parents=True, exist_ok=True)
    has_tag = subprocess.run(["git", "-C", str(a.timm_src), "rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}"],
                             capture_output=True).returncode == 0
    ref = tag if has_tag else "HEAD"
    for name in ("train.py", "validate.py"):
        r = subprocess.run(["git", "-C", str(a.timm_src), "show", f"{ref}:{name}"], capture_output=True)
        if r.returncode != 0:
            raise BenchConfigError(f"{a.timm_src}: no {name} at {ref} ({r.stderr.decode(errors='replace').strip()}): "
                                   "pass a checkout of huggingface/pytorch-image-models")
        (out / name).write_bytes(r.stdout)
    version = subprocess.run(["git", "-C", str(a.timm_src), "describe", "--tags", "--always", ref],
                             capture_output=True, text=True).stdout.strip()
    note = f"{ref} of {a.timm_src} ({version})" + ("" if has_tag else
                                                    f"; NOTE: no tag {tag} (installed timm) there, its current files")
    return out / "train.py", out / "validate.py", note


# ---------------------------------------------------------------------------------------------
# One repeat: vitlab, then timm's two scripts
# ---------------------------------------------------------------------------------------------
def parse_timm_train(log: str) -> dict[str, Any]:
    """Per-epoch training img/s (train.py's average over the epoch, from its last-batch line) and the param count."""
    rates = {int(m.group(1)): float(m.group(5)) for m in TIMM_EPOCH_LINE.finditer(log)}
    params = TIMM_PARAMS_LINE.search(log)
    return {"epoch_img_per_s": [rates[k] for k in sorted(rates)], "params": int(params.group(1)) if params else None}


def parse_timm_top1(log: str) -> float | None:
    m = TIMM_TOP1_LINE.search(log)
    return float(m.group(1)) / 100 if m else None


def _fail(what: str, ran: dict[str, Any], log: Path) -> RuntimeError:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    return RuntimeError(f"{what} failed (exit {ran['rc']}); log {log}:\n{tail}")


def run_vitlab(overrides: list[str], epochs: int, work: Path, env: dict[str, str], timeout: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    probe, log = work / "probe.json", work / "vitlab.log"
    cmd = [sys.executable, "-m", "vitlab.train", *VITLAB_OVERRIDES, f"trainer.max_epochs={epochs}", *overrides,
           f"hydra.run.dir={work / 'run'}", "+callbacks.bench_probe._target_=vitlab.callbacks.timing.HookProfiler",
           f"+callbacks.bench_probe.out={probe}"]
    ran = run_in_terminal(cmd, {**env, LAUNCH_ENV: repr(time.time())}, log, timeout)
    if ran["rc"] != 0 or not probe.is_file():
        raise _fail("python -m vitlab.train", ran, log)
    p = json.loads(probe.read_text())
    metrics = read_results(work / "run")
    return {"img_per_s": statistics.median(p["epoch_img_per_s"]), "epoch_img_per_s": p["epoch_img_per_s"],
            "wall_s": ran["wall_s"], "cpu_s": ran["cpu_s"], "max_rss_mb": ran["max_rss_mb"],
            "launch_to_first_step_s": p["launch_to_first_step_s"], "test_acc": metrics.get(M.TEST_ACC),
            "params": metrics.get(M.MODEL_PARAMS)}


def run_timm(train_py: Path, validate_py: Path, train_args: list[str], validate_args: list[str], work: Path,
             env: dict[str, str], timeout: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "train.log"
    ran = run_in_terminal([sys.executable, str(train_py), *train_args, "--output", str(work)], env, log, timeout)
    if ran["rc"] != 0:
        raise _fail(f"timm {train_py}", ran, log)
    parsed = parse_timm_train(log.read_text(errors="replace"))
    if not parsed["epoch_img_per_s"]:
        raise RuntimeError(f"no per-epoch 'Train: ... (100%)' line in {log}: is {train_py} timm's train.py?")
    best = work / "timm" / "model_best.pth.tar"
    vlog = work / "validate.log"
    vran = run_in_terminal([sys.executable, str(validate_py), *validate_args, "--checkpoint", str(best)], env, vlog, timeout)
    if vran["rc"] != 0:
        raise _fail(f"timm {validate_py}", vran, vlog)
    return {"img_per_s": statistics.median(parsed["epoch_img_per_s"]), "epoch_img_per_s": parsed["epoch_img_per_s"],
            "wall_s": ran["wall_s"] + vran["wall_s"], "cpu_s": ran["cpu_s"] + vran["cpu_s"],
            "train_wall_s": ran["wall_s"], "validate_wall_s": vran["wall_s"],
            "max_rss_mb": max(ran["max_rss_mb"], vran["max_rss_mb"]), "params": parsed["params"],
            "test_acc": parse_timm_top1(vlog.read_text(errors="replace"))}


def compare(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians per way and the per-repeat ratios vitlab/timm (img/s: >= 1 is better; wall, CPU: <= 1 is better)."""
    out: dict[str, Any] = {}
    for way in ("vitlab", "timm"):
        out[way] = {k: statistics.median([r[way][k] for r in runs]) for k in ("img_per_s", "wall_s", "cpu_s", "max_rss_mb")}
        accs = [r[way]["test_acc"] for r in runs if r[way].get("test_acc") is not None]
        out[way]["test_acc"] = statistics.median(accs) if accs else None
    for k in ("img_per_s", "wall_s", "cpu_s"):
        pairs = [r["vitlab"][k] / r["timm"][k] for r in runs]
        out[f"ratio_{k}"] = {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}
    return out


def table(res: dict[str, Any], epochs: int, runs: list[dict[str, Any]]) -> str:
    v, t = res["vitlab"], res["timm"]

    def ratio(k: str) -> str:
        r = res[f"ratio_{k}"]
        return f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"

    def acc(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"

    loads = [r["loadavg_1m"] for r in runs]
    return "\n".join([
        f"## vitlab.train vs timm train.py + validate.py: {epochs} epochs, one thread, {len(runs)} interleaved "
        f"repeat(s), load average {min(loads)}-{max(loads)}",
        "",
        "| | timm train.py (+ validate.py) | python -m vitlab.train | vitlab/timm, per repeat: median (min-max) |",
        "|---|---|---|---|",
        f"| training img/s, median epoch (target >= 1.0x) | {t['img_per_s']:.1f} | {v['img_per_s']:.1f} | {ratio('img_per_s')} |",
        f"| whole process, wall s (target <= 1.1x) | {t['wall_s']:.1f} | {v['wall_s']:.1f} | {ratio('wall_s')} |",
        f"| whole process, CPU s (user + sys) | {t['cpu_s']:.1f} | {v['cpu_s']:.1f} | {ratio('cpu_s')} |",
        f"| peak RSS MB | {t['max_rss_mb']:.0f} | {v['max_rss_mb']:.0f} | |",
        f"| test accuracy | {acc(t['test_acc'])} | {acc(v['test_acc'])} | |",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m vitlab.bench timm_script", description=__doc__.split("\n\n")[0])
    p.add_argument("--timm-src", type=Path, default=None, help="a git checkout of huggingface/pytorch-image-models")
    p.add_argument("--timm-train", type=Path, default=None, help="timm's train.py (instead of --timm-src)")
    p.add_argument("--timm-validate", type=Path, default=None, help="timm's validate.py (instead of --timm-src)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per process")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for the JSON file and the runs")
    p.add_argument("overrides", nargs="*", help="vitlab.train overrides (after --), applied to both ways")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.repeats < 1:
        p.error("--epochs and --repeats must be >= 1")
    stamp = time.strftime("%Y%m%d_%H%M%S")
    a.out = a.out / f"timm_script_{stamp}"
    a.out.mkdir(parents=True, exist_ok=True)
    train_py, validate_py, source = find_scripts(a)
    cfg = compose_job("train", [*VITLAB_OVERRIDES, f"trainer.max_epochs={a.epochs}", *a.overrides], a.out / "compose")
    data_root = a.out / "digits_folder"
    counts = export_split(build_datamodule(cfg.data), data_root)
    train_args, validate_args, warmup_epochs = timm_args(cfg, data_root, a.epochs)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    env.setdefault("TERM", "xterm-256color")
    print(f"timm scripts: {source}; data: {data_root} {counts}; timm train.py {' '.join(train_args)}",
          file=sys.stderr, flush=True)
    runs = []
    for rep in range(a.repeats):  # interleaved: vitlab, timm, vitlab, timm, ...
        load = round(os.getloadavg()[0], 2)
        v = run_vitlab(list(a.overrides), a.epochs, a.out / f"rep{rep}" / "vitlab", env, a.timeout)
        t = run_timm(train_py, validate_py, train_args, validate_args, a.out / f"rep{rep}" / "timm", env, a.timeout)
        if t["params"] is not None and v["params"] is not None and t["params"] != v["params"]:
            raise RuntimeError(f"timm built {t['params']:,} parameters, vitlab {v['params']:,}: not the same network")
        runs.append({"vitlab": v, "timm": t, "loadavg_1m": load})
        print(f"[{rep + 1}/{a.repeats}] img/s vitlab {v['img_per_s']:.1f} timm {t['img_per_s']:.1f}; wall vitlab "
              f"{v['wall_s']:.1f}s timm {t['wall_s']:.1f}s; load {load} -> {round(os.getloadavg()[0], 2)}",
              file=sys.stderr, flush=True)
    res = compare(runs)
    print(table(res, a.epochs, runs))
    path = a.out / "bench_timm_script.json"
    path.write_text(json.dumps({"timm_scripts": source, "timm": timm.__version__, "epochs": a.epochs,
                                "threads": a.threads, "warmup_epochs": warmup_epochs, "split": counts,
                                "timm_train_args": train_args, "timm_validate_args": validate_args,
                                "overrides": [*VITLAB_OVERRIDES, *a.overrides], "summary": res, "runs": runs}, indent=2))
    print(f"wrote {path}")
    return res
