"""vitlab.bench: is the framework free? vitlab's train path vs a plain PyTorch loop vs timm's own model.

    python -m vitlab.bench                                   # CPU: ViT-Ti/4 @32 and BiT-R50x1 @64; GPU: + ViT-S/16, B/16 @224
    python -m vitlab.bench 'train_overrides=["trainer.precision=bf16-mixed"]'   # any vitlab.train override, on all three ways
    python -m vitlab.bench experiment=bench/tiny                   # seconds: the smoke test's settings

For every model, three ways train on the same in-memory data, batch, optimiser and precision:

- ``vitlab``: the ``vitlab.train`` path: ``conf/train.yaml`` composed with Hydra, the DataModule, the
  ``ClassificationModule``, the configured callbacks and loggers, ``lightning.Trainer.fit`` (with its
  validation loop, which gives the eval throughput);
- ``plain``: a hand-written PyTorch loop on the same vitlab-built timm model, the same optimiser, LR
  schedule, gradient clipping and autocast, fed by the same DataLoader;
- ``timm``: the ``plain`` loop on ``timm.create_model(<name>)`` at timm's defaults.

Each (model, way, repeat) runs in its own worker process, interleaved (a, b, c, a, b, c, ...), so that
peak memory is per run and a drifting machine load hits all three ways alike. Warm-up steps are
excluded; each figure is the median over repeats, printed with its min-max spread. Utilisation (MFU)
= model FLOPs per second (``vitlab.inspection.flops``) / the machine's measured matmul peak (fp32 on CPU,
bf16 on GPU), measured in every worker before and after its timed windows: each run's rate over its own peak (the
better of the two), median over repeats; ``mfu_vs_best_peak`` divides the median rate by the best peak of any
worker. Results go to a Markdown table and a JSON file whose path is the last line printed: ``wrote <path>.json``.
"""

from __future__ import annotations

import json
import math
import os
import pty
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vitlab.bench.worker import (  # the worker: one (model, way, repeat) in its own process
    JOB_LABEL,
    JOB_WAYS,
    WAY_LABEL,
    WAYS,
    job_rate,
    machine_info,
    resolve_device,
)
from vitlab.callbacks.timing import LAUNCH_ENV
from vitlab.errors import BenchConfigError
from vitlab.tasks import hydra_app, task_wrapper
from vitlab.utils.plain import to_plain

__all__ = ["aggregate", "aggregate_job", "job_overrides", "markdown", "model_specs", "run_bench", "worker_overrides",
           "write_outputs"]
#: what the start-up figure is compared with: the imports every vitlab.train run needs, and nothing else
BARE_IMPORTS = "import torch, lightning, timm, hydra"


# ---------------------------------------------------------------------------------------------
# Orchestrator: interleave workers, aggregate, print, write JSON
# ---------------------------------------------------------------------------------------------
def model_specs(cfg, device: str) -> list[dict[str, Any]]:
    """The model entries of ``conf/bench.yaml`` that run on ``device``, with device-specific settings applied."""
    models = to_plain(cfg.models) or {}
    only = list(cfg.get("only") or [])
    unknown = [m for m in only if m not in models]
    if unknown:
        raise BenchConfigError(f"only={unknown} names no entry of models: choose from {sorted(models)}")
    out = []
    for key, m in models.items():
        if m is None or (only and key not in only):
            continue
        devices = m.get("devices", ["cpu", "cuda"])
        if device not in devices:
            continue
        spec = {k: v for k, v in m.items() if k not in ("cpu", "cuda")}
        spec.update(m.get(device) or {})
        for req in ("overrides", "img_size", "batch_size"):
            if req not in spec:
                raise BenchConfigError(f"models.{key}.{req} is missing")
        spec["key"] = key
        out.append(spec)
    if not out:
        raise BenchConfigError(f"no model in models (only={only or 'all'}) runs on device={device}")
    return out


def worker_overrides(cfg, spec: dict[str, Any], device: str) -> list[str]:
    steps = int(cfg.warmup_steps) + int(cfg.steps)
    eval_steps = int(cfg.eval_warmup_steps) + int(cfg.eval_steps)
    bs, ebs = int(spec["batch_size"]), int(spec.get("eval_batch_size") or spec["batch_size"])
    data = {
        "_target_": "vitlab.data.memory.BenchDataModule", "name": "bench", "num_classes": int(spec.get("num_classes", 10)),
        "img_size": int(spec["img_size"]), "batch_size": bs, "eval_batch_size": ebs,
        "train_images": bs * steps, "val_images": ebs * max(1, eval_steps),
    }
    return [
        *list(cfg.device_overrides.get(device) or []),
        *list(spec["overrides"]),
        *[f"++data.{k}={v}" for k, v in data.items()],
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        f"trainer.limit_val_batches={eval_steps}",
        "test=false",
        *list(cfg.get("train_overrides") or []),
    ]


def job_overrides(cfg, spec: dict[str, Any], device: str) -> list[str]:
    """The job section's ``vitlab.train`` overrides: ``job.epochs`` epochs of ``job.steps_per_epoch`` batches, each
    followed by ``job.val_steps`` validation batches, with the default callbacks and progress bar."""
    job = cfg.job
    bs, ebs = int(spec["batch_size"]), int(spec.get("eval_batch_size") or spec["batch_size"])
    data = {
        "_target_": "vitlab.data.memory.BenchDataModule", "name": "bench", "num_classes": int(spec.get("num_classes", 10)),
        "img_size": int(spec["img_size"]), "batch_size": bs, "eval_batch_size": ebs,
        "train_images": bs * int(job.steps_per_epoch), "val_images": ebs * int(job.val_steps),
    }
    return [
        *list(cfg.device_overrides.get(device) or []),
        *list(spec["overrides"]),
        *[f"++data.{k}={v}" for k, v in data.items()],
        f"trainer.max_epochs={int(job.epochs)}",
        f"trainer.limit_train_batches={int(job.steps_per_epoch)}",
        f"trainer.limit_val_batches={int(job.val_steps)}",
        "test=false",
        *list(job.get("overrides") or []),
        *list(cfg.get("train_overrides") or []),
    ]


def run_in_terminal(cmd: list[str], env: dict[str, str], log_path: Path, timeout: int) -> dict[str, Any]:
    """Run ``cmd`` with a pseudo-terminal as stdout and stderr, as from a user's shell (a progress bar draws as it
    does there); its output goes to ``log_path``. Returns the exit code, the wall seconds, and the child's CPU
    seconds (user + sys, its own children included) and peak RSS from ``wait4``."""
    master, slave = pty.openpty()
    with open(log_path, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
        os.close(slave)

        def drain() -> None:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                fh.write(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
            reader.join(timeout=10)
            os.close(master)
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_mb": ru.ru_maxrss / 1024}


def _run_job(spec: dict[str, Any], work: Path, timeout: int) -> dict[str, Any]:
    """One way of the job in its own process: ``default`` is ``python -m vitlab.train`` itself (plus the
    ``HookProfiler`` that times it); ``plain`` and ``timm`` are bench workers. Launch time, whole-process wall."""
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "worker.log"
    env = {**os.environ, **{k: str(v) for k, v in (spec.get("env") or {}).items()}}
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    env.setdefault("TERM", "xterm-256color")
    if spec["job_way"] == "default":
        probe = work / "probe.json"
        cmd = [sys.executable, "-m", "vitlab.train", *spec["overrides"], f"hydra.run.dir={work / 'run'}",
               "+callbacks.bench_probe._target_=vitlab.callbacks.timing.HookProfiler",
               f"+callbacks.bench_probe.out={probe}", f"+callbacks.bench_probe.warmup={spec['job']['warmup_steps']}"]
        if spec.get("threads") not in (None, "auto"):
            env["OMP_NUM_THREADS"] = str(spec["threads"])
    else:
        probe = work / "result.json"
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps({**spec, "result": str(probe)}, indent=2))
        cmd = [sys.executable, "-m", "vitlab.bench", "--worker", str(spec_path)]
    env[LAUNCH_ENV] = repr(time.time())
    ran = run_in_terminal(cmd, env, log_path, timeout)
    rc, wall = ran["rc"], ran["wall_s"]
    if rc != 0 or not probe.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"bench job {spec['key']}/{spec['job_way']} failed (exit {rc}); log {log_path}:\n{tail}")
    r = json.loads(probe.read_text())
    bs = int(spec["batch_size"])
    return {**job_rate(r["train_t"], r["end_t"], int(spec["job"]["warmup_steps"]), bs), "process_wall_s": wall,
            "launch_to_first_step_s": r.get("launch_to_first_step_s"), "epochs": r.get("epochs"),
            "callbacks": r.get("callbacks"), "loadavg_1m": round(os.getloadavg()[0], 2)}


def imports_done(imports: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds from launch to the end of ``imports`` in a fresh process, and that process's CPU seconds by
    then (``time.process_time()``, as :class:`~vitlab.callbacks.timing.HookProfiler` reads it in a job; the
    interpreter's exit is not counted). With :data:`BARE_IMPORTS`: the floor of any start-up."""
    code = f"{imports}; import time; print(time.time(), time.process_time())"
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True,
                         text=True).stdout
    done, cpu = (float(v) for v in out.split()[-2:])
    return done - t0, cpu


def _run_subprocess(spec: dict[str, Any], work: Path, timeout: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = work / "spec.json", work / "result.json", work / "worker.log"
    spec_path.write_text(json.dumps({**spec, "result": str(out_path)}, indent=2))
    env = {**os.environ, **{k: str(v) for k, v in (spec.get("env") or {}).items()}}
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    with open(log_path, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "vitlab.bench", "--worker", str(spec_path)],
                              stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"bench worker {spec['key']}/{spec['way']} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return json.loads(out_path.read_text())


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(spec: dict[str, Any], runs: dict[str, list[dict]], peak_flops: float) -> dict[str, Any]:
    """One model's entry of the JSON: per-way medians + spreads, and the vitlab way's headline figures."""
    ways: dict[str, Any] = {}
    for way, rs in runs.items():
        tr = [r["train"]["img_per_s"] for r in rs]
        ev = [r["eval"]["img_per_s"] for r in rs if "eval" in r]
        fl = rs[0]["train_flops_per_img"]
        ways[way] = {
            "img_per_s": _stats(tr),
            "eval_img_per_s": _stats(ev) if ev else None,
            # each run over the peak its own process measured around its windows (the same minutes of a VM whose
            # speed drifts), median over repeats; and the median rate over the best peak of any worker
            "mfu": statistics.median(r["train"]["img_per_s"] * fl / r["peak"]["flops"] for r in rs),
            "mfu_vs_best_peak": statistics.median(tr) * fl / peak_flops,
            "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
            "train_gflops_per_img": fl / 1e9,
            "eval_gflops_per_img": rs[0]["eval_flops_per_img"] / 1e9,
            "precision": rs[0]["precision"],
            "overrides_extra": rs[0].get("overrides_extra", []),
            **{k: rs[0][k] for k in ("callbacks", "loggers", "timm_model") if k in rs[0]},
        }
    entry: dict[str, Any] = {
        "img_size": spec["img_size"], "batch_size": spec["batch_size"],
        "eval_batch_size": spec.get("eval_batch_size") or spec["batch_size"],
        "overrides": spec["overrides"], "ways": ways,
    }
    main = ways.get("vitlab") or next(iter(ways.values()))
    entry.update(img_per_s=main["img_per_s"]["median"], mfu=main["mfu"], peak_mem_mb=main["peak_mem_mb"],
                 eval_img_per_s=(main["eval_img_per_s"] or {}).get("median"))
    if "vitlab" in runs and "plain" in runs:
        # pairs run back to back, so each repeat's ratio sees the same machine load
        pairs = [a["train"]["img_per_s"] / b["train"]["img_per_s"] for a, b in zip(runs["vitlab"], runs["plain"], strict=True)]
        entry["ratio_vitlab_vs_plain"] = statistics.median(pairs)
        entry["ratio_spread"] = [min(pairs), max(pairs)]
        entry["ratio_of_medians"] = ways["vitlab"]["img_per_s"]["median"] / ways["plain"]["img_per_s"]["median"]
    else:
        entry["ratio_vitlab_vs_plain"] = None
    for name, rs in runs.items():
        if name.startswith("vitlab+") and "vitlab" in runs:  # the lever's effect, pairwise against plain vitlab
            pairs = [v["train"]["img_per_s"] / a["train"]["img_per_s"] for v, a in zip(rs, runs["vitlab"], strict=True)]
            ways[name]["speedup_vs_vitlab"] = statistics.median(pairs)
            ways[name]["speedup_spread"] = [min(pairs), max(pairs)]
    return entry


def aggregate_job(runs: dict[str, list[dict]], bare: list[float], warmup: int) -> dict[str, Any]:
    """The job section of one model: per-way medians, the pairwise ratios, start-up and the per-callback costs."""
    ways = {}
    for way, rs in runs.items():
        ways[way] = {
            "img_per_s": _stats([r["img_per_s"] for r in rs]),
            "process_wall_s": _stats([r["process_wall_s"] for r in rs]),
            "launch_to_first_step_s": _stats([r["launch_to_first_step_s"] for r in rs])
            if all(r.get("launch_to_first_step_s") is not None for r in rs) else None,
        }
    out: dict[str, Any] = {"ways": ways, "bare_import_s": _stats(bare) if bare else None}
    for other in ("plain", "timm"):
        if "default" in runs and other in runs:  # each repeat's ways ran back to back: pairwise, then the median
            pairs = [a["img_per_s"] / b["img_per_s"] for a, b in zip(runs["default"], runs[other], strict=True)]
            out[f"ratio_default_vs_{other}"] = statistics.median(pairs)
            out[f"ratio_default_vs_{other}_spread"] = [min(pairs), max(pairs)]
    if "default" in runs:
        d = runs["default"]
        if bare and ways["default"]["launch_to_first_step_s"]:
            out["startup_gap_s"] = ways["default"]["launch_to_first_step_s"]["median"] - statistics.median(bare)
        step_s = statistics.median([r["window_s"] / r["steps"] for r in d])  # whole job, per timed batch
        table = {}
        for name in d[0].get("callbacks") or {}:
            per = [(r["callbacks"] or {}).get(name, {}) for r in d]
            table[name] = {
                "per_step_ms": statistics.median([1e3 * c.get("step_s", 0.0) / r["steps"] for c, r in zip(per, d, strict=True)]),
                "per_epoch_ms": statistics.median([1e3 * c.get("epoch_s", 0.0) / max(1, r["epochs"] or 1)
                                                   for c, r in zip(per, d, strict=True)]),
                "setup_ms": statistics.median([1e3 * c.get("setup_s", 0.0) for c in per]),
            }
        out["callback_costs"] = dict(sorted(table.items(), key=lambda kv: -(kv[1]["per_step_ms"] + kv[1]["per_epoch_ms"])))
        out["default_s_per_step"] = step_s
    return out


def _label(way: str, w: dict[str, Any]) -> str:
    if way in WAY_LABEL:
        return WAY_LABEL[way]
    sp = w.get("speedup_vs_vitlab")
    return f"(a) + {way.split('+', 1)[1]}" + (f" (x{sp:.2f} vs a)" if sp else "")


def _fmt_rate(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    d = 1 if s["median"] >= 10 else 2 if s["median"] >= 1 else 3
    return f"{s['median']:.{d}f} ({s['min']:.{d}f}-{s['max']:.{d}f})"


def markdown(result: dict[str, Any]) -> str:
    m, pk = result["machine"], result["peak"]
    lines = [
        f"## vitlab bench: {m['device']}",
        "",
        f"- machine: {m.get('gpu') or m['cpu']}; {m['cores']} cores, {result['threads']} torch threads"
        + (f"; driver {m.get('driver')}, CUDA {m.get('cuda')}" if m.get("gpu") else ""),
        f"- software: torch {m['torch']}, lightning {m['lightning']}, timm {m['timm']}, python {m['python']}",
        (f"- peak: {pk['flops'] / 1e9:.1f} GFLOP/s ({pk['dtype']} {pk['n']}x{pk['n']} matmul, best of "
         f"{pk['measurements']} workers' medians; spread {pk['min'] / 1e9:.1f}-{pk['flops'] / 1e9:.1f}). MFU: each "
         "run over its own worker's peak, median; in brackets, the median rate over the best peak")
        if pk["measurements"] else "- peak: not measured (ways=[]: the job section only)",
        f"- protocol: {result['config']['warmup_steps']} warm-up + {result['config']['steps']} timed train steps, "
        f"{result['config']['eval_warmup_steps']} + {result['config']['eval_steps']} eval steps, "
        f"{result['config']['repeats']} interleaved repeats; median (min-max); load average "
        f"{m['loadavg_1m']} at start, {result['loadavg_end']} at end",
        "",
        "| model | way | batch | train img/s | MFU | eval img/s | peak mem MB | a/b |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, e in result["models"].items():
        for way, w in e["ways"].items():
            ratio = ""
            if way == "vitlab" and e.get("ratio_vitlab_vs_plain") is not None:
                lo, hi = e["ratio_spread"]
                ratio = f"{e['ratio_vitlab_vs_plain']:.3f} ({lo:.3f}-{hi:.3f})"
            lines.append(
                f"| {key} | {_label(way, w)} | {e['batch_size']} | {_fmt_rate(w['img_per_s'])} | {100 * w['mfu']:.1f}% "
                f"({100 * w['mfu_vs_best_peak']:.1f}%) "
                f"| {_fmt_rate(w['eval_img_per_s'])} | {w['peak_mem_mb']:.0f} | {ratio} |"
            )
    lines += _job_markdown(result)
    for line in result.get("gpu_plan") or []:
        lines += ["", f"- {line}"]
    return "\n".join(lines)


def _fmt_s(s: dict[str, float] | None) -> str:
    return "-" if not s else f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _job_markdown(result: dict[str, Any]) -> list[str]:
    jobs = {k: e["job"] for k, e in result["models"].items() if e.get("job")}
    if not jobs:
        return []
    jc = result["config"]["job"]
    lines = [
        "",
        f"### The job as users run it: {jc['epochs']} epochs x {jc['steps_per_epoch']} steps, {jc['val_steps']} "
        f"validation batch(es) and a checkpoint every epoch; img/s over the whole job after {jc['warmup_steps']} "
        f"warm-up batch(es); (d) has the default callbacks, progress bar (in a terminal) and {jc.get('overrides')}",
        "",
        "| model | way | job img/s | launch -> first step s | process wall s | d/way |",
        "|---|---|---|---|---|---|",
    ]
    for key, j in jobs.items():
        for way, w in j["ways"].items():
            r = j.get(f"ratio_default_vs_{way}")
            spread = j.get(f"ratio_default_vs_{way}_spread")
            ratio = f"{r:.3f} ({spread[0]:.3f}-{spread[1]:.3f})" if r is not None else ""
            lines.append(f"| {key} | {JOB_LABEL[way]} | {_fmt_rate(w['img_per_s'])} | {_fmt_s(w['launch_to_first_step_s'])} "
                         f"| {_fmt_s(w['process_wall_s'])} | {ratio} |")
        if j.get("bare_import_s"):
            gap = j.get("startup_gap_s")
            lines += ["", f"- `python -c '{BARE_IMPORTS}'`: {_fmt_s(j['bare_import_s'])} s; (d) launch -> first "
                          "optimiser step - that = " + (f"**{gap:.2f} s**" if gap is not None else "-")]
        if j.get("callback_costs"):
            step_ms = 1e3 * j["default_s_per_step"]
            lines += ["", f"Per-callback cost in (d), {key} (median over repeats; a job step = {step_ms:.0f} ms "
                          "including its share of validation and checkpoints):", "",
                      "| callback / logger | per step ms | % of a step | per epoch ms | set-up + warm-up ms |",
                      "|---|---|---|---|---|"]
            for name, c in j["callback_costs"].items():
                lines.append(f"| {name} | {c['per_step_ms']:.2f} | {100 * c['per_step_ms'] / step_ms:.2f}% "
                             f"| {c['per_epoch_ms']:.1f} | {c['setup_ms']:.1f} |")
    return lines


def _model_entry(spec, runs, job_runs, bare, peak_flops, job) -> dict[str, Any]:
    entry = aggregate(spec, runs, peak_flops) if any(runs.values()) else {"ways": {}, "batch_size": spec["batch_size"]}
    if any(job_runs.values()):
        entry["job"] = aggregate_job(job_runs, bare, int(job["warmup_steps"]))
        entry["ratio_default_vs_plain"] = entry["job"].get("ratio_default_vs_plain")
    return entry


def gpu_plan(cfg, device: str) -> list[str] | None:
    """Without a GPU: what ``make bench`` measures when one is present (the same command, unchanged)."""
    if device == "cuda":
        return None

    models = to_plain(cfg.models) or {}
    gpu_only = [k for k, m in models.items() if m and "cpu" not in m.get("devices", ["cpu", "cuda"])]
    pk = to_plain(cfg.peak.cuda)
    return [
        f"no GPU here: on one, `make bench` (unchanged) runs every model in bf16 against a {pk['dtype']} "
        f"{pk['n']}x{pk['n']} matmul peak, adding {', '.join(gpu_only) or 'no GPU-only model'} at 224 px "
        "(ViT-B/16's bf16 MFU is the GPU figure to quote)",
        "the data reader keeping a GPU fed: `make bench-data` gives img/s per loader worker at pretrain:224; "
        "divide the GPU's ViT-B/16 train img/s from this bench by it for the workers a GPU needs",
    ]


def run_bench(cfg) -> dict[str, Any]:
    device = resolve_device(str(cfg.device))
    ways = list(cfg.ways)
    job = to_plain(cfg.get("job")) or {}
    job_ways = list(job.get("ways") or [])
    bad = [w for w in ways if w not in WAYS]
    if bad or not (ways or job_ways):
        raise BenchConfigError(f"ways={ways} must be a list drawn from {list(WAYS)}, non-empty unless job.ways is set")
    if [w for w in job_ways if w not in JOB_WAYS]:
        raise BenchConfigError(f"job.ways={job_ways} must be drawn from {list(JOB_WAYS)}")
    if job_ways:
        for k in ("epochs", "steps_per_epoch", "val_steps", "warmup_steps"):
            if int(job.get(k, 0)) < 1:
                raise BenchConfigError(f"job.{k}={job.get(k)} must be >= 1")
        if int(job["warmup_steps"]) >= int(job["epochs"]) * int(job["steps_per_epoch"]):
            raise BenchConfigError("job.warmup_steps must be < job.epochs x job.steps_per_epoch (batches left to time)")
    for k in ("repeats", "steps"):
        if int(cfg[k]) < 1:
            raise BenchConfigError(f"{k}={cfg[k]} must be >= 1")
    for k in ("warmup_steps", "eval_warmup_steps", "eval_steps"):
        if int(cfg[k]) < 0:
            raise BenchConfigError(f"{k}={cfg[k]} must be >= 0")
    if int(cfg.warmup_steps) == 0 and int(cfg.steps) < 2:
        raise BenchConfigError("warmup_steps=0 needs steps >= 2 (the first batch starts the clock)")
    specs = model_specs(cfg, device)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    peak_cfg = to_plain(cfg.peak[device])
    base = {
        "device": device, "threads": cfg.threads, "peak": peak_cfg, "warmup_steps": int(cfg.warmup_steps),
        "steps": int(cfg.steps), "eval_warmup_steps": int(cfg.eval_warmup_steps), "eval_steps": int(cfg.eval_steps),
        "env": to_plain(cfg.get("env")) or {},
    }
    variants = {str(k): list(v or []) for k, v in (to_plain(cfg.get("variants")) or {}).items()}
    # a variant = way (a) with extra overrides (one lever switched), run interleaved with the others
    slots = [(w, w, []) for w in ways] + [(f"vitlab+{k}", "vitlab", v) for k, v in variants.items()]
    runs: dict[str, dict[str, list[dict]]] = {s["key"]: {name: [] for name, _, _ in slots} for s in specs}
    peaks: list[float] = []
    threads = None
    job_runs: dict[str, dict[str, list[dict]]] = {s["key"]: {w: [] for w in job_ways} for s in specs}
    bare: dict[str, list[float]] = {s["key"]: [] for s in specs}
    total = len(specs) * int(cfg.repeats) * (len(slots) + len(job_ways))
    done = 0
    t_start = time.perf_counter()
    for spec in specs:
        ov = worker_overrides(cfg, spec, device)
        jov = job_overrides(cfg, spec, device) if job_ways else []
        for rep in range(int(cfg.repeats)):
            for name, way, extra in slots:  # interleaved: a, b, c, a, b, c, ...
                work = out_dir / "runs" / f"{spec['key']}-{name}-{rep}"
                ws = {**base, **spec, "way": way, "overrides": [*ov, *extra], "extra": extra, "output_dir": str(work)}
                r = _run_subprocess(ws, work, int(cfg.worker_timeout_s))
                runs[spec["key"]][name].append(r)
                peaks.append(r["peak"]["flops"])
                threads = r["threads"]
                done += 1
                print(f"[{done}/{total}] {spec['key']:<16} {name:<7} rep {rep}: {r['train']['img_per_s']:8.2f} img/s train"
                      + (f", {r['eval']['img_per_s']:8.2f} img/s eval" if "eval" in r else "")
                      + f", peak {r['peak']['flops'] / 1e9:.1f} GFLOP/s, load {r['loadavg_1m']}", file=sys.stderr, flush=True)
            for jw in job_ways:  # the job, as users run it and by hand, interleaved: d, e, f, d, e, f, ...
                work = out_dir / "runs" / f"{spec['key']}-job_{jw}-{rep}"
                js = {**base, **spec, "job_way": jw, "job": job, "overrides": jov, "output_dir": str(work)}
                r = _run_job(js, work, int(cfg.worker_timeout_s))
                job_runs[spec["key"]][jw].append(r)
                done += 1
                print(f"[{done}/{total}] {spec['key']:<16} job {jw:<7} rep {rep}: {r['img_per_s']:8.2f} img/s over the "
                      f"job, launch -> first step {r['launch_to_first_step_s'] or float('nan'):.2f}s, process "
                      f"{r['process_wall_s']:.1f}s, load {r['loadavg_1m']}", file=sys.stderr, flush=True)
            if job_ways:
                bare[spec["key"]].append(imports_done(BARE_IMPORTS, base["env"])[0])
    peak_flops = max(peaks) if peaks else float("nan")
    result = {
        "machine": info,
        "threads": threads,
        "peak": {**peak_cfg, "flops": peak_flops, "min": min(peaks) if peaks else None, "measurements": len(peaks)},
        "config": {k: base[k] for k in ("warmup_steps", "steps", "eval_warmup_steps", "eval_steps")}
        | {"repeats": int(cfg.repeats), "ways": ways, "variants": variants, "train_overrides": list(cfg.get("train_overrides") or []),
           "env": base["env"], "job": job},
        "models": {s["key"]: _model_entry(s, runs[s["key"]], job_runs[s["key"]], bare[s["key"]], peak_flops, job)
                   for s in specs},
        "gpu_plan": gpu_plan(cfg, device),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "raw": {k: {w: [{kk: vv for kk, vv in r.items() if kk != "peak"}
                        | {"peak_flops": r["peak"]["flops"], "peak_before": r["peak"]["before"],
                           "peak_after": r["peak"]["after"]}
                        for r in rs] for w, rs in v.items()} for k, v in runs.items()},
        "raw_job": job_runs,
    }
    return result


def write_outputs(result: dict[str, Any], out_dir: Path, name: str) -> Path:
    md = markdown(result)
    print(md)
    (out_dir / f"{name}.md").write_text(md + "\n")
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else str(o)))
    tmp.replace(path)
    return path


def main_cli() -> None:
    @hydra_app("bench")
    @task_wrapper
    def main(cfg: DictConfig) -> None:
        # SIGTERM -> SystemExit, so subprocess.run kills the running worker instead of orphaning it
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        result = run_bench(cfg)
        path = write_outputs(result, Path(cfg.output_dir), str(cfg.name))
        print(f"wrote {path}")

    main()

