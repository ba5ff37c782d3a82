"""vitlab.bench (issue 7): the benchmark runs end to end and writes the JSON users read; the speed switches work.

No timing is asserted anywhere: the machine is shared and timings are noise here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from vitlab import CONF_DIR
from vitlab.bench.training import aggregate_job, job_overrides, model_specs, worker_overrides
from vitlab.bench.worker import Windows, job_rate
from vitlab.errors import BenchConfigError
from vitlab.models import build_model
from vitlab.modules.classification import ClassificationModule, compile_net


def _bench_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="bench", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow  # end to end through the CLI; kept out of the default suite's 20-minute budget (make test-slow)
def test_bench_tiny_writes_json_with_the_promised_schema(cli, tmp_path):
    out = tmp_path / "bench_out"
    r = cli("vitlab.bench", "experiment=bench/tiny", f"hydra.run.dir={out}", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("wrote ") and lines[-1].endswith(".json"), lines[-3:]
    path = Path(lines[-1].removeprefix("wrote ").strip())
    assert path.is_file() and path.parent == out
    res = json.loads(path.read_text())

    assert res["machine"]["device"] == "cpu" and res["machine"]["cores"] >= 1 and res["machine"]["torch"]
    assert res["peak"]["flops"] > 0 and res["peak"]["dtype"] == "float32"
    entry = res["models"]["vit_micro"]
    for key in ("ratio_vitlab_vs_plain", "mfu", "img_per_s", "peak_mem_mb", "eval_img_per_s"):
        assert isinstance(entry[key], float) and math.isfinite(entry[key]) and entry[key] > 0, (key, entry[key])
    assert set(entry["ways"]) == {"vitlab", "plain", "timm"}
    for run in res["raw"]["vit_micro"]["vitlab"]:  # each worker's peak: the better of before and after its windows
        assert run["peak_flops"] == max(run["peak_before"], run["peak_after"]) > 0
    for way in entry["ways"].values():
        s = way["img_per_s"]
        assert s["min"] <= s["median"] <= s["max"] and s["n"] == 1
        assert way["train_gflops_per_img"] > way["eval_gflops_per_img"] > 0
    # (a) really is the configured vitlab.train path, (c) really is timm's model
    assert "ModelCheckpoint" in "".join(entry["ways"]["vitlab"]["callbacks"])
    assert entry["ways"]["vitlab"]["loggers"] == ["CSVLogger"]
    assert entry["ways"]["timm"]["timm_model"] == "vit_tiny_patch16_224"
    # the job as users run it: python -m vitlab.train with the default callbacks vs the same job by hand
    job = entry["job"]
    assert set(job["ways"]) == {"default", "plain", "timm"}
    assert math.isfinite(entry["ratio_default_vs_plain"]) and entry["ratio_default_vs_plain"] > 0
    assert job["ways"]["default"]["launch_to_first_step_s"]["median"] > 0 and job["bare_import_s"]["median"] > 0
    assert {"AtomicModelCheckpoint", "RichProgressBar", "ComputeTracker", "logger CSVLogger"} <= set(job["callback_costs"])
    assert "per step ms" in r.stdout and "launch -> first" in r.stdout and "no GPU here" in r.stdout
    # the Markdown table printed before the last line, also saved next to the JSON
    assert "| model | way | batch | train img/s | MFU |" in r.stdout
    assert "(a) vitlab.train" in path.with_suffix(".md").read_text()


def test_bench_config_errors_name_the_key():
    cfg = _bench_cfg("only=[vit_nope]")
    with pytest.raises(BenchConfigError, match=r"only=\['vit_nope'\].*vit_ti16_p4"):
        model_specs(cfg, "cpu")
    # GPU-only models are skipped on CPU; device-specific sizes apply on CUDA
    cpu = {s["key"]: s for s in model_specs(_bench_cfg(), "cpu")}
    cuda = {s["key"]: s for s in model_specs(_bench_cfg(), "cuda")}
    assert set(cpu) == {"vit_ti16_p4", "bit_r50x1"} and {"vit_s16", "vit_b16"} <= set(cuda)
    assert cpu["bit_r50x1"]["img_size"] == 64 and cuda["bit_r50x1"]["img_size"] == 224
    ov = worker_overrides(_bench_cfg(), cuda["vit_b16"], "cuda")
    assert "trainer=gpu" in ov and "++data.img_size=224" in ov and "test=false" in ov


def test_windows_exclude_warmup():
    w = Windows("cpu", warmup=2, steps=3, eval_warmup=0, eval_steps=0)
    w.train_t = [0.0, 10.0, 11.0, 12.0, 13.0]  # batch ends; the first two are warm-up
    r = w.results(batch=8, eval_batch=8)["train"]
    assert r["steps"] == 3 and r["window_s"] == 3.0 and r["img_per_s"] == 8.0 and r["step_s"] == [1.0, 1.0, 1.0]
    with pytest.raises(RuntimeError, match="only 5 batches ran"):
        Windows._rate(w.train_t, 2, 4, 8)


def test_job_rate_counts_every_batch_validation_and_checkpoint_after_warmup():
    # batch ends at 1, 2, 3 s; validation + checkpoint until 5 s: 2 timed batches of 8 over 4 s
    assert job_rate([1.0, 2.0, 3.0], 5.0, warmup=1, batch=8) == {"img_per_s": 4.0, "window_s": 4.0, "steps": 2}
    with pytest.raises(RuntimeError, match="more than warmup=3"):
        job_rate([1.0, 2.0, 3.0], 5.0, warmup=3, batch=8)


def test_job_section_pairs_repeats_times_start_up_and_tables_callbacks():
    def run(rate: float, first: float, ckpt_s: float = 0.3) -> dict:
        return {"img_per_s": rate, "window_s": 4.0, "steps": 4, "epochs": 2, "process_wall_s": 9.0,
                "launch_to_first_step_s": first,
                "callbacks": {"AtomicModelCheckpoint": {"step_s": 0.004, "epoch_s": ckpt_s, "setup_s": 0.0}}}

    runs = {"default": [run(9.0, 6.0), run(4.0, 7.0)], "plain": [run(10.0, 5.0), run(4.0, 5.5)],
            "timm": [run(9.0, 5.0), run(5.0, 5.0)]}
    j = aggregate_job(runs, bare=[5.0, 5.5], warmup=1)
    assert j["ratio_default_vs_plain"] == pytest.approx(0.95) and j["ratio_default_vs_plain_spread"] == [0.9, 1.0]
    assert j["ratio_default_vs_timm"] == pytest.approx(0.9)
    assert j["startup_gap_s"] == pytest.approx(6.5 - 5.25)
    assert j["callback_costs"]["AtomicModelCheckpoint"] == pytest.approx(
        {"per_step_ms": 1.0, "per_epoch_ms": 150.0, "setup_ms": 0.0})
    ov = job_overrides(_bench_cfg(), model_specs(_bench_cfg(), "cpu")[0], "cpu")
    assert {"trainer.max_epochs=3", "test=false", "logger=csv"} <= set(ov)  # default callbacks: none dropped
    assert not [o for o in ov if o.startswith(("callbacks", "~callbacks", "trainer.enable_progress_bar"))]


def _vit(**kw):
    torch.manual_seed(0)
    return build_model("vit", "micro", num_classes=3, img_size=16, patch_size=8, **kw)


def test_grad_checkpointing_same_result_as_plain_backward():
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for ckpt in (False, True):
        m = _vit(grad_checkpointing=ckpt)
        assert m.grad_checkpointing is ckpt
        m(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    bit = build_model("bit", "micro", num_classes=3, grad_checkpointing=True)
    assert all(stage.grad_checkpointing for stage in bit.stages)


def test_compile_switch_validates_and_keeps_checkpoint_keys():
    with pytest.raises(ValueError, match="model.compile='fastest'"):
        compile_net(_vit(), "fastest")
    m = _vit()
    keys = set(m.state_dict())
    assert compile_net(m, False) is m and m._compiled_call_impl is None
    compile_net(m, True)  # lazy: nothing compiles until the first call
    assert m._compiled_call_impl is not None and set(m.state_dict()) == keys


def test_channels_last_module_matches_default_layout():
    cfg = dict(family="bit", variant="micro", num_classes=3, img_size=16, in_chans=3)
    optim = {"name": "adamw", "lr": 1e-3}
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    a = ClassificationModule(model=cfg, optim=optim).eval()
    torch.manual_seed(0)
    b = ClassificationModule(model={**cfg, "channels_last": True}, optim=optim).eval()
    assert b.net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def _run(img_per_s: float, eval_img_per_s: float = 100.0, mem: float = 500.0, peak: float = 40e9) -> dict:
    return {"train": {"img_per_s": img_per_s}, "eval": {"img_per_s": eval_img_per_s}, "train_flops_per_img": 2e9,
            "eval_flops_per_img": 7e8, "peak_mem_mb": mem, "precision": "32-true", "peak": {"flops": peak}}


def test_aggregate_pairs_repeats_and_reports_lever_speedups():
    from vitlab.bench.training import aggregate, markdown

    spec = {"img_size": 32, "batch_size": 8, "overrides": ["model=vit_ti16"]}
    runs = {
        "vitlab": [_run(10.0), _run(5.0, peak=20e9), _run(9.0, mem=700.0, peak=36e9)],  # repeat 2: a slow minute
        "plain": [_run(10.0), _run(4.0), _run(10.0)],  # repeat 2 ran under load for both ways
        "vitlab+bf16": [_run(15.0), _run(10.0), _run(18.0)],
    }
    e = aggregate(spec, runs, peak_flops=40e9)
    # ratios are taken pairwise (same load), then the median: 1.0, 1.25, 0.9 -> 1.0
    assert e["ratio_vitlab_vs_plain"] == 1.0 and e["ratio_spread"] == [0.9, 1.25]
    assert e["img_per_s"] == 9.0 and e["peak_mem_mb"] == 700.0
    # MFU pairs each run with the peak its own worker measured (0.5, 0.5, 0.5), not the best peak of any worker
    assert e["mfu"] == 0.5 and e["ways"]["vitlab"]["mfu_vs_best_peak"] == 9.0 * 2e9 / 40e9
    assert e["ways"]["vitlab+bf16"]["speedup_vs_vitlab"] == 2.0
    md = markdown({"machine": {"device": "cpu", "cpu": "X", "cores": 2, "torch": "t", "lightning": "l", "timm": "m",
                               "python": "p", "loadavg_1m": 1.0}, "threads": 2,
                   "peak": {"flops": 40e9, "min": 30e9, "dtype": "float32", "n": 2048, "measurements": 9},
                   "config": {"warmup_steps": 2, "steps": 5, "eval_warmup_steps": 1, "eval_steps": 3, "repeats": 3},
                   "loadavg_end": 1.0, "models": {"vit_ti16_p4": e}})
    assert "| vit_ti16_p4 | (a) + bf16 (x2.00 vs a) |" in md and "1.000 (0.900-1.250)" in md
    assert "| 50.0% (45.0%) |" in md  # the paired MFU, then the median rate over the best peak




def test_timm_script_gives_timm_the_same_network_as_vitlab(tmp_path):
    """timm's train.py and validate.py build, from the arguments the bench derives from vitlab's default config,
    the network vitlab trains (823,434 parameters for vit_micro on digits), on the same split and normalisation."""
    import ast

    import timm

    from vitlab.bench.timm_script import timm_args
    from vitlab.config import compose_job
    from vitlab.utils.plain import to_plain

    cfg = compose_job("train", ["logger=csv"], tmp_path / "run")
    train, validate, warmup_epochs = timm_args(cfg, tmp_path / "digits", epochs=30)
    assert warmup_epochs == 3  # optim.warmup=0.1 of 30 epochs
    i = train.index("--model-kwargs")
    kwargs = {}
    for arg in train[i + 1:]:
        if arg.startswith("--"):
            break
        k, v = arg.split("=")
        kwargs[k] = ast.literal_eval(v)
    net = timm.create_model(train[train.index("--model") + 1], num_classes=10, **kwargs)
    vitlab_net = build_model(**to_plain(cfg.model))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in vitlab_net.parameters()) == 823_434
    x = torch.randn(2, 3, 32, 32)
    net.load_state_dict(vitlab_net.state_dict())
    torch.testing.assert_close(net.eval()(x), vitlab_net.eval()(x))
    for args in (train, validate):
        assert args[args.index("--mean") + 1:args.index("--mean") + 4] == ["0.5"] * 3  # the paper's [-1, 1]
    assert train[train.index("--lr") + 1] == "0.001" and train[train.index("--clip-grad") + 1] == "1.0"
    assert validate[validate.index("--split") + 1] == "test"


def test_timm_script_reads_train_py_rates_and_validate_top1():
    from vitlab.bench.timm_script import parse_timm_top1, parse_timm_train

    log = ("Model vit_tiny_patch16_224 created, param count:823434\n"
           "Train: 0 [   0/19 (  5%)]  Loss: 2.31 (2.31)  Time: 0.500s,  128.00/s  (0.500s,  128.00/s)  LR: 0.000e+00\n"
           "Train: 0 [  18/19 (100%)]  Loss: 1.90 (2.10)  Time: 0.100s,  640.00/s  (0.125s,  512.00/s)  LR: 1.000e-03\n"
           "Train: 1 [  18/19 (100%)]  Loss: 1.20 (1.50)  Time: 0.100s,  640.00/s  (0.100s,  640.00/s)  LR: 5.000e-04\n")
    assert parse_timm_train(log) == {"epoch_img_per_s": [512.0, 640.0], "params": 823434}
    assert parse_timm_top1("Test: [   1/2] ...\n * Acc@1 97.222 (2.778) Acc@5 100.000 (0.000)\n") == pytest.approx(0.97222)


def test_export_split_writes_the_exact_images_as_an_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from vitlab.bench.timm_script import export_split
    from vitlab.data.memory import TensorImageDataset

    g = torch.Generator().manual_seed(0)
    splits = [TensorImageDataset(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g), [1, 0, 1][:n])
              for n in (3, 2, 1)]

    class DM:
        def build_splits(self):
            return splits

    assert export_split(DM(), tmp_path) == {"train": 3, "val": 2, "test": 1}
    img = np.asarray(Image.open(tmp_path / "train" / "001" / "00002.png"))
    assert np.array_equal(img, splits[0].images[2].permute(1, 2, 0).numpy())


def test_startup_phases_add_up_to_launch_to_first_step():
    from vitlab.bench.startup import summarise

    wall = {"bare_import_s": 3.0, "launch_to_main_s": 3.4, "launch_to_fit_setup_s": 4.0, "launch_to_first_batch_s": 4.3,
            "launch_to_first_step_s": 4.6, "gap_s": 1.6}
    run = {**wall, **{k[:-2] + "_cpu_s": v / 2 for k, v in wall.items()}, "process_wall_s": 6.0, "loadavg_1m": 0.5}
    s = summarise([run, {**run, "bare_import_s": 2.8, "gap_s": 1.8}])
    assert s["gap_s"]["median"] == pytest.approx(1.7) and s["gap_cpu_s"]["median"] == pytest.approx(0.8)
    one = summarise([run])
    assert [round(p["median"], 6) for p in one["phases"].values()] == [3.0, 0.4, 0.6, 0.3, 0.3]  # they sum to 4.6 s
    assert [round(p["median"], 6) for p in one["phases_cpu"].values()] == [1.5, 0.2, 0.3, 0.15, 0.15]


def test_run_in_terminal_keeps_output_exit_code_and_cpu(tmp_path):
    import os
    import sys

    from vitlab.bench.training import run_in_terminal

    log = tmp_path / "out.log"
    r = run_in_terminal([sys.executable, "-c", "import sys; print(sys.stdout.isatty()); sys.exit(3)"], dict(os.environ),
                        log, timeout=60)
    assert r["rc"] == 3 and "True" in log.read_text()  # a terminal, as from a user's shell
    assert r["wall_s"] > 0 and r["cpu_s"] >= 0 and r["max_rss_mb"] > 0


def test_hook_profiler_reports_the_end_of_the_imports_marked_by_the_command(tmp_path, monkeypatch):
    from vitlab.callbacks.timing import LAUNCH_ENV, HookProfiler
    from vitlab.utils import clock

    monkeypatch.setenv(LAUNCH_ENV, "100.0")
    monkeypatch.setattr(clock, "main_started", (109.5, 9.25))  # as hydra_app's main marks it, imports done
    prof = HookProfiler(str(tmp_path / "probe.json"))
    prof.first_step_unix, prof.cpu["first_step"] = 111.0, 10.5
    prof.on_fit_end(None, None)
    p = json.loads((tmp_path / "probe.json").read_text())
    assert p["launch_to_main_s"] == pytest.approx(9.5) and p["cpu_s"]["main"] == 9.25
    assert p["launch_to_first_step_s"] == pytest.approx(11.0) and p["cpu_s"]["first_step"] == 10.5
