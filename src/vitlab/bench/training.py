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
bf16 on GPU), measured in every worker; the best of those is the peak. Results go to a Markdown table
and a JSON file whose path is the last line printed: ``wrote <path>.json``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vitlab.bench.worker import (  # the worker: one (model, way, repeat) in its own process
    WAY_LABEL,
    WAYS,
    machine_info,
    resolve_device,
)
from vitlab.errors import BenchConfigError

__all__ = ["aggregate", "markdown", "model_specs", "run_bench", "worker_overrides", "write_outputs"]


# ---------------------------------------------------------------------------------------------
# Orchestrator: interleave workers, aggregate, print, write JSON
# ---------------------------------------------------------------------------------------------
def model_specs(cfg, device: str) -> list[dict[str, Any]]:
    """The model entries of ``conf/bench.yaml`` that run on ``device``, with device-specific settings applied."""
    from vitlab.utils.plain import to_plain

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
            "mfu": statistics.median(tr) * fl / peak_flops,
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
        f"- peak: {pk['flops'] / 1e9:.1f} GFLOP/s ({pk['dtype']} {pk['n']}x{pk['n']} matmul, best of "
        f"{pk['measurements']} workers' medians; spread {pk['min'] / 1e9:.1f}-{pk['flops'] / 1e9:.1f})",
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
                f"| {_fmt_rate(w['eval_img_per_s'])} | {w['peak_mem_mb']:.0f} | {ratio} |"
            )
    return "\n".join(lines)


def run_bench(cfg) -> dict[str, Any]:
    from vitlab.utils.plain import to_plain

    device = resolve_device(str(cfg.device))
    ways = list(cfg.ways)
    bad = [w for w in ways if w not in WAYS]
    if bad or not ways:
        raise BenchConfigError(f"ways={ways} must be a non-empty list drawn from {list(WAYS)}")
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
    total = len(specs) * int(cfg.repeats) * len(slots)
    done = 0
    t_start = time.perf_counter()
    for spec in specs:
        ov = worker_overrides(cfg, spec, device)
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
    peak_flops = max(peaks)
    result = {
        "machine": info,
        "threads": threads,
        "peak": {**peak_cfg, "flops": peak_flops, "min": min(peaks), "measurements": len(peaks)},
        "config": {k: base[k] for k in ("warmup_steps", "steps", "eval_warmup_steps", "eval_steps")}
        | {"repeats": int(cfg.repeats), "ways": ways, "variants": variants, "train_overrides": list(cfg.get("train_overrides") or []),
           "env": base["env"]},
        "models": {s["key"]: aggregate(s, runs[s["key"]], peak_flops) for s in specs},
        "loadavg_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "raw": {k: {w: [{kk: vv for kk, vv in r.items() if kk != "peak"} | {"peak_flops": r["peak"]["flops"]}
                        for r in rs] for w, rs in v.items()} for k, v in runs.items()},
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
    from omegaconf import DictConfig

    from vitlab.tasks import hydra_app

    @hydra_app("bench")
    def main(cfg: DictConfig) -> None:
        import signal

        # SIGTERM -> SystemExit, so subprocess.run kills the running worker instead of orphaning it
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        result = run_bench(cfg)
        path = write_outputs(result, Path(cfg.output_dir), str(cfg.name))
        print(f"wrote {path}")

    main()

