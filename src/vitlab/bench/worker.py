"""One benchmark worker: train (and evaluate) one model one way, in its own process, and time it (``vitlab.bench``).

The three ways share the data, batch, optimiser and precision: ``vitlab`` is the run the assembly layer builds
for ``vitlab.train`` (:func:`vitlab.runs.assemble.assemble`), timed by a callback inside ``Trainer.fit``;
``plain`` and ``timm`` are a hand-written PyTorch loop on vitlab's network and on ``timm.create_model``.
Here too: the machine facts, the matmul peak MFU divides by, and the peak memory.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, CheckpointSaver, accuracy, dispatch_clip_grad, update_summary

from vitlab.callbacks.timing import LAUNCH_ENV, WindowTimer
from vitlab.config import compose_job
from vitlab.errors import BenchConfigError
from vitlab.inspection.flops import count_flops
from vitlab.models import build_model, registry
from vitlab.modules.classification import classification_loss, compile_net
from vitlab.optim import build_optimizer, build_scheduler
from vitlab.runs.assemble import assemble, build_datamodule
from vitlab.utils.plain import to_plain
from vitlab.wandb_io import finish_wandb

WAYS = ("vitlab", "plain", "timm")
WAY_LABEL = {"vitlab": "(a) vitlab.train", "plain": "(b) plain PyTorch", "timm": "(c) timm defaults"}
#: the job section: the same multi-epoch job (validation + a checkpoint every epoch) run three ways
JOB_WAYS = ("default", "plain", "timm")
JOB_LABEL = {"default": "(d) python -m vitlab.train, defaults", "plain": "(e) plain loop, same job",
             "timm": "(f) timm train.py's step, same job"}
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
    info: dict[str, Any] = {
        "device": device,
        "cpu": _cpu_model(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "lightning": L.__version__,
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

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    return compose_job("train", overrides, output_dir)


def _timm_model(spec: dict[str, Any], model_cfg: dict[str, Any]):
    t = spec.get("timm") or {}
    if not t.get("name"):
        raise BenchConfigError(f"models.{spec['key']}.timm.name is missing: the timm model to compare with (way c)")
    kwargs = dict(t.get("kwargs") or {})
    kwargs.setdefault("num_classes", int(model_cfg["num_classes"]))

    if registry.get(model_cfg.get("family")).timm_takes_img_size:
        kwargs.setdefault("img_size", int(model_cfg["img_size"]))
    return timm.create_model(t["name"], pretrained=False, **kwargs)


def _plain_loop(net, cfg, dm, device: str, win: Windows, compile_model) -> None:
    """What a user writes by hand: same optimiser, LR schedule, clipping, autocast and accumulation as vitlab's."""
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
        x = dm.on_after_batch_transfer((x,), 0)[0]  # data.normalize_on_device: uint8 -> normalised float, here
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


def _model_flops(net: torch.nn.Module, model_cfg: dict[str, Any]):
    """Model FLOPs per image (vitlab.inspection.flops); activation checkpointing's recompute is not model work."""
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

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    win = Windows(device, spec["warmup_steps"], spec["steps"], spec["eval_warmup_steps"], spec["eval_steps"])
    model_cfg = to_plain(cfg.model)
    info: dict[str, Any] = {"way": way, "precision": str(cfg.trainer.precision), "overrides_extra": spec.get("extra", [])}

    if way == "vitlab":  # exactly what vitlab.train builds (the run-assembly layer), plus the timer

        try:
            objs = assemble(cfg, extra_callbacks=[WindowTimer(win)])  # each object checks its own arguments
            dm, module, trainer = objs["datamodule"], objs["module"], objs["trainer"]
            flops = _model_flops(module.net, model_cfg)
            info["callbacks"] = [type(c).__name__ for c in objs["callbacks"]]
            info["loggers"] = [type(lg).__name__ for lg in objs["loggers"]]
            reset_peak_memory(device)
            trainer.fit(module, datamodule=dm)
        finally:
            finish_wandb()
    else:
        dm = build_datamodule(cfg.data)
        net = build_model(**model_cfg) if way == "plain" else _timm_model(spec, model_cfg)
        if way == "timm":
            info["timm_model"] = spec["timm"]["name"]
        flops = _model_flops(net, model_cfg)
        dm.setup("fit")
        compile_opt = model_cfg.get("compile", False)
        reset_peak_memory(device)
        _plain_loop(net, cfg, dm, device, win, lambda m: compile_net(m, compile_opt))

    res = win.results(dm.batch_size, dm.eval_batch_size)
    after = measure_peak(device, **spec["peak"])  # the run's own peak: the better of before and after its windows
    peak = {**max(peak, after, key=lambda p: p["flops"]), "before": peak["flops"], "after": after["flops"]}
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
# The job section: one multi-epoch job (train, validate, save a checkpoint, every epoch), by hand
# ---------------------------------------------------------------------------------------------
def job_rate(train_t: list[float], end_t: float, warmup: int, batch: int) -> dict[str, Any]:
    """Images per second of a whole job after its warm-up batches: every later batch, validation pass and
    checkpoint write counts, up to the end of the last epoch's work."""
    if len(train_t) <= warmup or warmup < 1:
        raise RuntimeError(f"{len(train_t)} batches ran; a job needs more than warmup={warmup} (>= 1)")
    n = len(train_t) - warmup
    window = end_t - train_t[warmup - 1]
    return {"img_per_s": n * batch / window, "window_s": window, "steps": n}


def _job_loop(net, cfg, dm, device: str, job: dict[str, Any], out_dir: Path, timm_step: bool) -> dict[str, Any]:
    """The job as a plain loop (vitlab's optimiser and schedule, no per-step host sync, one ``torch.save`` of the
    last state per epoch) or as timm ``train.py``'s step (timm's optimiser and scheduler factories, per-step
    ``loss.item()`` into an ``AverageMeter``, ``accuracy`` per validation batch, ``CheckpointSaver`` and
    ``update_summary`` every epoch)."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    amp = PLAIN_PRECISIONS.get(precision)
    if precision not in PLAIN_PRECISIONS or amp == "float16":
        raise BenchConfigError(f"trainer.precision={precision!r}: the job's loops run 32-true or bf16-mixed")
    amp_dtype = getattr(torch, amp) if amp else None
    clip = cfg.trainer.get("gradient_clip_val")
    loss_kind, smoothing = str(cfg.module.get("loss", "softmax")), float(cfg.module.get("label_smoothing", 0.0))
    epochs, per_epoch, val_steps = int(job["epochs"]), int(job["steps_per_epoch"]), int(job["val_steps"])
    optim_cfg = dict(cfg.optim)
    net.to(device)
    if timm_step:
        opt = create_optimizer_v2(net, opt=str(optim_cfg.get("name", "adamw")), lr=float(optim_cfg["lr"]),
                                  weight_decay=float(optim_cfg.get("weight_decay", 0.0)))
        sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=epochs, warmup_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=per_epoch)
        loss_fn = LabelSmoothingCrossEntropy(smoothing) if smoothing else torch.nn.CrossEntropyLoss()
        saver = CheckpointSaver(net, opt, checkpoint_dir=str(out_dir), recovery_dir=str(out_dir), max_history=1)
    else:
        opt = build_optimizer(net, optim_cfg)
        sched = build_scheduler(opt, optim_cfg, epochs * per_epoch)

    def to_dev(x, y):
        x = dm.on_after_batch_transfer((x.to(device, non_blocking=True),), 0)[0]
        return x, y.to(device, non_blocking=True)

    train_t: list[float] = []
    first_step_unix = None
    updates = 0
    for epoch in range(epochs):
        net.train()
        losses = AverageMeter() if timm_step else None
        it = iter(dm.train_dataloader())
        for i in range(per_epoch):
            x, y = to_dev(*next(it))
            with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(x)
                loss = loss_fn(out, y) if timm_step else classification_loss(out, y, loss_kind, smoothing)
            loss.backward()
            if clip:
                if timm_step:
                    dispatch_clip_grad(net.parameters(), value=float(clip), mode="norm")
                else:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), float(clip))
            opt.step()
            opt.zero_grad(set_to_none=True)
            updates += 1
            if timm_step:
                losses.update(loss.item(), x.size(0))  # train.py: every step (not distributed)
                sched.step_update(num_updates=updates, metric=losses.avg)
                if i == per_epoch - 1 or i % 50 == 0:  # train.py's log_interval
                    log.info("Train: %d [%d/%d] loss %.3f lr %.3e", epoch, i, per_epoch, losses.avg,
                             opt.param_groups[0]["lr"])
            else:
                sched.step()
            _sync(device)
            train_t.append(time.perf_counter())
            if first_step_unix is None:
                first_step_unix = time.time()
        net.eval()
        correct = torch.zeros((), device=device, dtype=torch.long)
        total_loss = torch.zeros((), device=device)
        top1 = AverageMeter() if timm_step else None
        it = iter(dm.val_dataloader())
        with torch.inference_mode():
            for _ in range(val_steps):
                x, y = to_dev(*next(it))
                with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = net(x)
                if timm_step:
                    acc1, _ = accuracy(logits, y, topk=(1, min(5, logits.shape[-1])))
                    top1.update(acc1.item(), x.size(0))
                else:
                    total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
                    correct += (logits.argmax(-1) == y).sum()
        if timm_step:
            saver.save_checkpoint(epoch, metric=top1.avg)
            update_summary(epoch, {"loss": losses.avg}, {"top1": top1.avg}, str(out_dir / "summary.csv"),
                           lr=opt.param_groups[0]["lr"], write_header=epoch == 0)
        else:
            acc = correct.item() / max(1, val_steps * dm.eval_batch_size)  # one host sync per epoch
            tmp = out_dir / "last.pt.tmp"
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch, "val_acc": acc}, tmp)
            os.replace(tmp, out_dir / "last.pt")
    _sync(device)
    return {"train_t": train_t, "end_t": time.perf_counter(), "epochs": epochs,
            "launch_to_first_step_s": _since_launch(first_step_unix)}


def _since_launch(t_unix: float | None) -> float | None:
    launch = os.environ.get(LAUNCH_ENV)
    return t_unix - float(launch) if launch and t_unix else None


def run_job_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The job section's ``plain`` or ``timm`` way: the job ``python -m vitlab.train`` runs, by hand."""
    threads = spec.get("threads") or "auto"
    torch.set_num_threads(available_cores() if threads == "auto" else int(threads))
    out_dir = Path(spec["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_train_cfg(spec["overrides"], out_dir)

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    net = build_model(**to_plain(cfg.model))
    r = _job_loop(net, cfg, dm, spec["device"], spec["job"], out_dir, spec["job_way"] == "timm")
    return {**r, "batch_size": dm.batch_size}


def worker_cli(spec_path: str) -> None:
    """``python -m vitlab.bench --worker <spec.json>``: run one worker, write its result where the spec says."""
    spec = json.loads(Path(spec_path).read_text())
    res = run_job_worker(spec) if spec.get("job_way") else run_worker(spec)
    Path(spec["result"]).write_text(json.dumps(res))
