"""vitlab.bench: is the framework free? vitlab's train path vs a plain PyTorch loop vs timm's own model.

    python -m vitlab.bench                                   # CPU: ViT-Ti/4 @32 and BiT-R50x1 @64; GPU: + ViT-S/16, B/16 @224
    python -m vitlab.bench 'train_overrides=["trainer.precision=bf16-mixed"]'   # any vitlab.train override, on all three ways
    python -m vitlab.bench bench_preset=tiny                       # seconds: the smoke test's settings

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
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vitlab.data.base import VisionDataModule
from vitlab.data.memory import TensorImageDataset
from vitlab.errors import BenchConfigError

WAYS = ("vitlab", "plain", "timm")
WAY_LABEL = {"vitlab": "(a) vitlab.train", "plain": "(b) plain PyTorch", "timm": "(c) timm defaults"}
DEVICES = ("auto", "cpu", "cuda")
#: trainer.precision -> the autocast dtype a plain loop uses (None: no autocast)
PLAIN_PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": "bfloat16", "16-mixed": "float16"}

log = logging.getLogger("vitlab.bench")


# ---------------------------------------------------------------------------------------------
# Machine facts and the hardware limit
# ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def machine_info(device: str) -> dict[str, Any]:
    import lightning
    import timm

    info: dict[str, Any] = {
        "device": device,
        "cpu": _cpu_model(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    cpu_flags = ""
    try:
        cpu_flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        pass
    info["cpu_bf16"] = "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_mem_gb=round(p.total_memory / 2**30, 1),
                    gpu_capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda, driver=_nvidia_driver())
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise BenchConfigError(f"device={device!r} is not one of {DEVICES}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchConfigError("device=cuda but torch.cuda.is_available() is False (CPU-only torch build or no GPU); "
                               "use device=cpu or device=auto")
    return device


def measure_peak(device: str, dtype: str, n: int, reps: int) -> dict[str, float]:
    """FLOP/s of an n x n x n matmul: the hardware limit that MFU divides by (median of ``reps``, after warm-up)."""
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    times = []
    for i in range(reps + 3):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    flops = 2.0 * n**3
    return {"flops": flops / statistics.median(times), "best": flops / min(times), "n": n, "dtype": dtype}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Memory: RSS high-water mark on CPU, max_memory_allocated on GPU
# ---------------------------------------------------------------------------------------------
def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# In-memory data: the DataModule every way reads from
# ---------------------------------------------------------------------------------------------
class BenchDataModule(VisionDataModule):
    """Seeded random uint8 images held in memory, read through vitlab's DataModule base (pipelines, loaders)."""

    name = "bench"
    default_train_pipeline = "none"

    def __init__(self, train_images: int = 1024, val_images: int = 1024, seed: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("eval_pipeline", "none")
        super().__init__(**kwargs)
        if int(train_images) < 1 or int(val_images) < 1:
            raise BenchConfigError(f"data.train_images={train_images} and data.val_images={val_images} must be >= 1")
        self.n_train, self.n_val, self.seed = int(train_images), int(val_images), int(seed)

    def build_splits(self):
        g = torch.Generator().manual_seed(self.seed)
        s = self.img_size

        def make(n: int) -> TensorImageDataset:
            x = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g)
            return TensorImageDataset(x, torch.randint(0, self.num_classes, (n,), generator=g).tolist())

        return make(self.n_train), make(self.n_val), make(self.eval_batch_size)


# ---------------------------------------------------------------------------------------------
# Worker: one (model, way, repeat) in its own process
# ---------------------------------------------------------------------------------------------
class Windows:
    """Timestamps at the end of each train / eval batch; the timed window starts after the warm-up batches."""

    def __init__(self, device: str, warmup: int, steps: int, eval_warmup: int, eval_steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.eval_warmup, self.eval_steps = eval_warmup, eval_steps
        self.train_t: list[float] = []
        self.eval_t: list[float] = []
        self.train_peak_mb: float | None = None

    def _mark(self, times: list[float], warm: int, total: int) -> None:
        k = len(times) + 1  # 1-based index of the batch that just ended
        if k in (warm, total):  # sync only at the window's edges: per-step syncs would hide async GPU work
            _sync(self.device)
        times.append(time.perf_counter())

    def train_batch_end(self) -> None:
        self._mark(self.train_t, self.warmup, self.warmup + self.steps)
        if len(self.train_t) == self.warmup + self.steps:
            self.train_peak_mb = peak_memory_mb(self.device)

    def eval_batch_end(self) -> None:
        self._mark(self.eval_t, self.eval_warmup, self.eval_warmup + self.eval_steps)

    @staticmethod
    def _rate(times: list[float], warm: int, steps: int, batch: int) -> dict[str, Any]:
        if len(times) < warm + steps:
            raise RuntimeError(f"only {len(times)} batches ran, {warm} warm-up + {steps} timed were asked for")
        window = times[warm + steps - 1] - (times[warm - 1] if warm else times[0])
        n = steps if warm else steps - 1
        per_step = [times[i] - times[i - 1] for i in range(max(warm, 1), warm + steps)]
        return {"img_per_s": n * batch / window, "window_s": window, "steps": n, "step_s": per_step}

    def results(self, batch: int, eval_batch: int) -> dict[str, Any]:
        out = {"train": self._rate(self.train_t, self.warmup, self.steps, batch)}
        if self.eval_steps:
            out["eval"] = self._rate(self.eval_t, self.eval_warmup, self.eval_steps, eval_batch)
        return out


def compose_train_cfg(overrides: list[str], output_dir: Path):
    """``conf/train.yaml`` composed exactly as ``python -m vitlab.train <overrides>`` would, output in ``output_dir``."""
    from vitlab.config import compose_job

    return compose_job("train", overrides, output_dir)


def _timm_model(spec: dict[str, Any], model_cfg: dict[str, Any]):
    import timm

    t = spec.get("timm") or {}
    if not t.get("name"):
        raise BenchConfigError(f"models.{spec['key']}.timm.name is missing: the timm model to compare with (way c)")
    kwargs = dict(t.get("kwargs") or {})
    kwargs.setdefault("num_classes", int(model_cfg["num_classes"]))
    if model_cfg.get("family") != "bit":
        kwargs.setdefault("img_size", int(model_cfg["img_size"]))
    return timm.create_model(t["name"], pretrained=False, **kwargs)


def _plain_loop(net, cfg, dm, device: str, win: Windows, compile_model) -> None:
    """What a user writes by hand: same optimiser, LR schedule, clipping, autocast and accumulation as vitlab's."""
    import torch.nn.functional as F

    from vitlab.modules.classification import classification_loss
    from vitlab.optim import build_optimizer, build_scheduler

    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PLAIN_PRECISIONS:
        raise BenchConfigError(f"trainer.precision={precision!r}: the plain loop supports {sorted(PLAIN_PRECISIONS)}")
    amp = PLAIN_PRECISIONS[precision]
    amp_dtype = getattr(torch, amp) if amp else None
    scaler = torch.amp.GradScaler(device) if amp == "float16" else None
    accum = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    clip = cfg.trainer.get("gradient_clip_val")
    loss_kind = str(cfg.module.get("loss", "softmax"))
    smoothing = float(cfg.module.get("label_smoothing", 0.0))
    channels_last = bool(cfg.model.get("channels_last", False))

    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    optim_cfg = dict(cfg.optim)
    opt = build_optimizer(net, optim_cfg)
    batches = win.warmup + win.steps
    sched = build_scheduler(opt, optim_cfg, max(1, batches // accum))
    fwd = compile_model(net)

    def to_dev(x, y):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)

    net.train()
    it = iter(dm.train_dataloader())
    for i in range(batches):
        x, y = to_dev(*next(it))
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = classification_loss(fwd(x), y, loss_kind, smoothing) / accum
        (scaler.scale(loss) if scaler else loss).backward()
        if (i + 1) % accum == 0:
            if scaler:
                scaler.unscale_(opt)
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(clip))
            scaler.step(opt) if scaler else opt.step()
            if scaler:
                scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
        win.train_batch_end()

    if not win.eval_steps:
        return
    net.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    total_loss = torch.zeros((), device=device)
    it = iter(dm.val_dataloader())
    with torch.inference_mode():
        for _ in range(win.eval_warmup + win.eval_steps):
            x, y = to_dev(*next(it))
            with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = fwd(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
            win.eval_batch_end()


class WindowTimer(L.Callback):
    """Feeds :class:`Windows` from inside ``Trainer.fit`` (train batches, then the fit's validation batches)."""

    def __init__(self, win: Windows) -> None:
        self.win = win

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.win.train_batch_end()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.win.eval_batch_end()


def _model_flops(net: torch.nn.Module, model_cfg: dict[str, Any]):
    """Model FLOPs per image (vitlab.inspection.flops); activation checkpointing's recompute is not model work."""
    from vitlab.inspection.flops import count_flops

    ckpt = bool(model_cfg.get("grad_checkpointing")) and hasattr(net, "set_grad_checkpointing")
    if ckpt:
        net.set_grad_checkpointing(False)
    try:
        return count_flops(net, int(model_cfg["img_size"]), int(model_cfg.get("in_chans") or 3))
    finally:
        if ckpt:
            net.set_grad_checkpointing(True)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (and evaluate) one model one way; return throughput, FLOPs, peak memory and the matmul peak."""
    threads = spec.get("threads") or "auto"
    torch.set_num_threads(available_cores() if threads == "auto" else int(threads))
    device = spec["device"]
    out_dir = Path(spec["output_dir"])
    way = spec["way"]
    if way not in WAYS:
        raise BenchConfigError(f"way={way!r} is not one of {WAYS}")

    peak = measure_peak(device, **spec["peak"])
    cfg = compose_train_cfg(spec["overrides"], out_dir)
    from hydra.utils import instantiate

    from vitlab.config import to_plain, validate_train_cfg

    validate_train_cfg(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    win = Windows(device, spec["warmup_steps"], spec["steps"], spec["eval_warmup_steps"], spec["eval_steps"])
    dm = instantiate(cfg.data, _convert_="all")
    model_cfg = to_plain(cfg.model)
    info: dict[str, Any] = {"way": way, "precision": str(cfg.trainer.precision), "overrides_extra": spec.get("extra", [])}

    if way == "vitlab":
        from vitlab.train import build_module, run_stats
        from vitlab.utils.instantiate import build_callbacks, build_loggers

        module = build_module(cfg)
        flops = _model_flops(module.net, model_cfg)
        stats = run_stats(module, dm, cfg)
        loggers = build_loggers(cfg.get("logger"))
        callbacks = build_callbacks(cfg.get("callbacks"), cfg.trainer, has_logger=bool(loggers))
        trainer = instantiate(cfg.trainer, callbacks=[*callbacks, WindowTimer(win)], logger=loggers or False,
                              default_root_dir=str(out_dir))
        for lg in loggers:
            lg.log_hyperparams({**stats, "cfg": to_plain(cfg)})
        info["callbacks"] = [type(c).__name__ for c in callbacks]
        info["loggers"] = [type(lg).__name__ for lg in loggers]
        reset_peak_memory(device)
        try:
            trainer.fit(module, datamodule=dm)
        finally:
            from vitlab.utils.instantiate import finish_wandb

            finish_wandb()
    else:
        from vitlab.models import build_model
        from vitlab.modules.classification import compile_net

        net = build_model(**model_cfg) if way == "plain" else _timm_model(spec, model_cfg)
        if way == "timm":
            info["timm_model"] = spec["timm"]["name"]
        flops = _model_flops(net, model_cfg)
        dm.setup("fit")
        compile_opt = model_cfg.get("compile", False)
        reset_peak_memory(device)
        _plain_loop(net, cfg, dm, device, win, lambda m: compile_net(m, compile_opt))

    res = win.results(dm.batch_size, dm.eval_batch_size)
    train_flops = float(flops.train_flops)
    res.update(info)
    res.update(
        train_flops_per_img=train_flops,
        eval_flops_per_img=float(flops.forward_flops),
        peak=peak,
        peak_mem_mb=win.train_peak_mb if win.train_peak_mb is not None else peak_memory_mb(device),
        loadavg_1m=round(os.getloadavg()[0], 2),
        threads=torch.get_num_threads(),
    )
    return res


# ---------------------------------------------------------------------------------------------
# Orchestrator: interleave workers, aggregate, print, write JSON
# ---------------------------------------------------------------------------------------------
def model_specs(cfg, device: str) -> list[dict[str, Any]]:
    """The model entries of ``conf/bench.yaml`` that run on ``device``, with device-specific settings applied."""
    from vitlab.config import to_plain

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
        "_target_": "vitlab.bench.BenchDataModule", "name": "bench", "num_classes": int(spec.get("num_classes", 10)),
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
    from vitlab.config import to_plain

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


def _main_cli() -> None:
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


def _worker_cli(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    res = run_worker(spec)
    out = Path(spec["result"])
    out.write_text(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_cli(sys.argv[2])
    else:
        _main_cli()
