"""``python -m vitlab.bench startup``: launch -> first optimiser step of ``python -m vitlab.train``, beside a bare
``import torch, lightning, timm, hydra`` on the same machine, and where the time between goes.

    python -m vitlab.bench startup                          # vit_micro on digits, logger=csv, 3 repeats
    python -m vitlab.bench startup --repeats 5 -- model=bit_micro data=shapes   # vitlab.train overrides after --

Every repeat runs two processes back to back (so a drifting machine load hits them alike):

1. ``python -c 'import torch, lightning, timm, hydra'``: the floor of any start-up;
2. ``python -m vitlab.train trainer.max_steps=1 test=false <overrides>`` in a pseudo-terminal (the progress bar
   draws as in a shell), timed from inside: the end of its imports (``vitlab.utils.clock``, marked as the
   command's ``main`` starts), then :class:`vitlab.callbacks.timing.HookProfiler`: the fit's set-up -> the first
   batch starts -> the first optimiser step ends.

The gap = (2)'s launch -> first step minus (1); the target is <= 1.5 s. Each figure is given in wall seconds from
launch and in the process's CPU seconds by then (``time.process_time()``); on a machine shared with other jobs
the wall figures swing with their load, the CPU ones hold better. Its phases: (2)'s imports beyond (1)'s
(vitlab's own, and the two processes' noise); composing the config and building the objects (from (2)'s ``main``
to the fit's set-up, in one process); Lightning's fit set-up up to the first batch (model summary, data set-up,
the first batch loaded); the first step itself (forward, backward, optimiser step: compute every start-up pays).
Median (min-max) over repeats, with the load average; a JSON file with every number is named on the last line
(``wrote <path>.json``). On a machine shared with other jobs, pass ``--threads 1``: with more threads than free
cores, every OpenMP region waits for its slowest thread, and the first step (like every step) takes several
times its CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from vitlab.bench.training import BARE_IMPORTS, imports_done, run_in_terminal
from vitlab.callbacks.timing import LAUNCH_ENV

#: the job whose start-up is measured: one optimiser step of the default run (``vit_micro`` on ``digits``)
STARTUP_OVERRIDES = ("logger=csv", "trainer.max_steps=1", "trainer.limit_val_batches=0", "test=false")
#: the phases of (2), in order: (label, start key, end key) of the per-repeat record
PHASES = (
    ("bare imports (1)", None, "bare_import_s"),
    ("(2)'s imports - (1): vitlab's own, and noise", "bare_import_s", "launch_to_main_s"),
    ("compose + build objects, up to Trainer.fit's set-up", "launch_to_main_s", "launch_to_fit_setup_s"),
    ("Lightning fit set-up, to the first batch", "launch_to_fit_setup_s", "launch_to_first_batch_s"),
    ("the first step (forward, backward, optimiser)", "launch_to_first_batch_s", "launch_to_first_step_s"),
)


def startup_once(overrides: list[str], work: Path, env: dict[str, str], timeout: int) -> dict[str, Any]:
    """One repeat: bare imports, then ``python -m vitlab.train`` to its first step."""
    work.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    rec["bare_import_s"], rec["bare_import_cpu_s"] = imports_done(BARE_IMPORTS, env)
    probe = work / "probe.json"
    cmd = [sys.executable, "-m", "vitlab.train", *STARTUP_OVERRIDES, *overrides, f"hydra.run.dir={work / 'run'}",
           "+callbacks.bench_probe._target_=vitlab.callbacks.timing.HookProfiler", f"+callbacks.bench_probe.out={probe}"]
    ran = run_in_terminal(cmd, {**env, LAUNCH_ENV: repr(time.time())}, work / "train.log", timeout)
    if ran["rc"] != 0 or not probe.is_file():
        tail = "\n".join((work / "train.log").read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"python -m vitlab.train failed (exit {ran['rc']}); log {work / 'train.log'}:\n{tail}")
    p = json.loads(probe.read_text())
    for k in ("main", "fit_setup", "first_batch", "first_step"):
        rec[f"launch_to_{k}_s"] = p[f"launch_to_{k}_s"]
        rec[f"launch_to_{k}_cpu_s"] = p["cpu_s"][k]
    rec["process_wall_s"] = ran["wall_s"]
    rec["gap_s"] = rec["launch_to_first_step_s"] - rec["bare_import_s"]
    rec["gap_cpu_s"] = rec["launch_to_first_step_cpu_s"] - rec["bare_import_cpu_s"]
    return rec


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and min-max) of every figure and phase; ``gap_s`` is the pairwise median of (2) - (1)."""
    def stats(vals: list[float]) -> dict[str, float]:
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    keys = ("bare_import_s", "launch_to_main_s", "launch_to_fit_setup_s", "launch_to_first_batch_s",
            "launch_to_first_step_s", "gap_s")
    out: dict[str, Any] = {k: stats([r[k] for r in runs]) for k in (*keys, "process_wall_s")}
    out |= {_unit(k, "cpu_s"): stats([r[_unit(k, "cpu_s")] for r in runs]) for k in keys}
    for unit in ("s", "cpu_s"):
        key = "phases" if unit == "s" else "phases_cpu"
        out[key] = {label: stats([r[_unit(end, unit)] - (r[_unit(start, unit)] if start else 0.0) for r in runs])
                    for label, start, end in PHASES}
    return out


def _unit(key: str, unit: str) -> str:
    """``bare_import_s`` -> ``bare_import_cpu_s`` for unit ``cpu_s``."""
    return key if unit == "s" else key[: -len("_s")] + "_cpu_s"


def table(summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    def f(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    def row(label: str, key: str) -> str:
        return f"| {label} | {f(summary[key])} | {f(summary[_unit(key, 'cpu_s')])} |"

    loads = [r["loadavg_1m"] for r in runs]
    return "\n".join([
        f"## Start-up: launch -> first optimiser step ({len(runs)} repeats, load average {min(loads)}-{max(loads)})",
        "",
        "| | wall s, median (min-max) | CPU s (user + sys) |",
        "|---|---|---|",
        row(f"`python -c '{BARE_IMPORTS}'` (1)", "bare_import_s"),
        row("`python -m vitlab.train` launch -> end of its imports (2)", "launch_to_main_s"),
        row("`python -m vitlab.train` launch -> first optimiser step (2)", "launch_to_first_step_s"),
        row("**gap (2) - (1)** (target <= 1.5)", "gap_s"),
        "",
        "Where (2) goes (on a machine shared with other jobs, read the CPU column):",
        "",
        "| phase | wall s | CPU s |",
        "|---|---|---|",
        *[f"| {label} | {f(s)} | {f(summary['phases_cpu'][label])} |" for label, s in summary["phases"].items()],
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m vitlab.bench startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process (default: unset)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per vitlab.train process")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for the JSON file and the runs")
    p.add_argument("overrides", nargs="*", help="vitlab.train overrides (after --)")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats={a.repeats} must be >= 1")
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    env.setdefault("TERM", "xterm-256color")
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    work = a.out / f"startup_{stamp}"
    runs = []
    for rep in range(a.repeats):
        r = startup_once(list(a.overrides), work / f"rep{rep}", env, a.timeout)
        runs.append(r)
        print(f"[{rep + 1}/{a.repeats}] bare imports {r['bare_import_s']:.2f}s, vitlab.train's imports "
              f"{r['launch_to_main_s']:.2f}s, launch -> first step {r['launch_to_first_step_s']:.2f}s "
              f"(gap {r['gap_s']:.2f}s wall, {r['gap_cpu_s']:.2f}s CPU), load {r['loadavg_1m']}", file=sys.stderr, flush=True)
    summary = summarise(runs)
    print(table(summary, runs))
    path = a.out / f"bench_startup_{stamp}.json"
    path.write_text(json.dumps({"overrides": [*STARTUP_OVERRIDES, *a.overrides], "threads": a.threads,
                                "summary": summary, "runs": runs}, indent=2))
    print(f"wrote {path}")
    return summary
