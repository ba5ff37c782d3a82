"""No secret leaves the process (issue 11, item 5), for every task.

- A literal secret typed on the command line is refused by every task, and appears nowhere: not in what Hydra
  saved (``.hydra/``), not in the console, Hydra's own "Error executing job with overrides" line included.
- A W&B key that reaches the W&B run's name, group or tags through an interpolation (``${oc.env:WANDB_API_KEY}``)
  is masked after interpolation: not in the run directory, the W&B offline run file, or the console.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from reliability_utils import env, fork_train
from vitlab.wandb_io.offline import find_offline_runs, read_offline_run

KEY = "wandbkey-" + "0123456789abcdef" * 2 + "ffff"  # 40 characters, like a real W&B key
LITERAL = "literal-secret-value-4242"
HF_TOKEN = "hf_secret_token_4242"
FROM_ENV = "${oc.env:WANDB_API_KEY}"
#: every W&B field a user may name after something: each one interpolates the key
WANDB_NAMES = [f"logger.wandb.name={FROM_ENV}", f"group={FROM_ENV}", f"tags=[vitlab,{FROM_ENV}]"]


def _env(**extra: str) -> dict[str, str]:
    return env(WANDB_API_KEY=KEY, WANDB_MODE="offline", **extra)


def leaks(secret: str, out, *dirs: Path) -> list[str]:
    """Where ``secret`` shows up: files under ``dirs`` (any byte of any file), and the console."""
    found = [str(p) for d in dirs if d.exists() for p in d.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    if secret in out.stdout + out.stderr:
        found.append("console")
    return found


def _wandb_runs(run_dir: Path) -> list:
    runs = [read_offline_run(d) for d in find_offline_runs(run_dir)]
    assert runs, f"no W&B offline run under {run_dir}"
    return runs


# ---- a literal secret: refused by every task, masked everywhere -------------------------------------------
#: the least each task needs on its command line to start (it is refused before it does anything)
TASKS = {
    "train": [],
    "evaluate": ["ckpt_path=missing.ckpt"],
    "fewshot": ["ckpt_path=missing.ckpt"],
    "analyze": ["ckpt_path=missing.ckpt"],
    "vtab": ["ckpt_path=missing.npz", "data.task=dtd"],  # a multirun: Hydra's launcher lists each job's overrides
    "bench": [],
    "report": ["sweep_dir=missing"],
    "pack": ["out=missing"],
}


def command(task: str):
    """The function ``python -m vitlab.<task>`` runs once Hydra has composed the config (``hydra.main`` hands a
    composed config straight to it); bench's is built inside ``main_cli``: its job, wrapped as every task's is."""
    import importlib

    from vitlab.tasks import hydra_app, task_wrapper

    if task == "bench":
        return hydra_app("bench")(task_wrapper(lambda c: pytest.fail("vitlab.bench ran with a literal secret")))
    module = {"train": "vitlab.train", "report": "vitlab.report.task"}.get(task, f"vitlab.{task}")
    mod = importlib.import_module(module)
    return mod._hydra_main if task == "train" else mod.main


@pytest.mark.parametrize("task", sorted(TASKS))
def test_literal_secret_is_refused_before_the_task_runs_and_masked(task, tmp_path):
    """Every task's command line is ``hydra_app``: RunGuard masks what Hydra saves and echoes, then the task's
    ``task_wrapper`` refuses before the task runs: the same two steps, in-process, on each task's own config and
    through its own command function."""
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_cfg
    from vitlab.errors import UserError
    from vitlab.utils.secrets import mask_hydra_config

    try:
        cfg = compose_cfg(task, [*TASKS[task], f"+hub.hf_token={LITERAL}"], tmp_path / "out")
        mask_hydra_config(cfg)  # RunGuard.on_run_start's first step: what Hydra saves (.hydra/) and echoes, masked
        with pytest.raises(UserError) as err:
            command(task)(cfg)
    finally:
        GlobalHydra.instance().clear()
    msg = str(err.value)
    assert msg.startswith("Error: ") and "hub.hf_token holds a literal secret" in msg and LITERAL not in msg
    assert "+hub.hf_token=***" in list(cfg.hydra.overrides.task)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and LITERAL.encode() in p.read_bytes()]


def test_literal_secret_on_the_command_line_is_refused_and_never_echoed(tmp_path, main_cli):
    """End to end, one task (its command line in-process): exit code 1, the message, Hydra's own echo and
    .hydra/overrides.yaml masked."""
    from vitlab.train import main

    out_dir = tmp_path / "out"
    code, out, err = main_cli(main, f"+hub.hf_token={LITERAL}", f"hydra.run.dir={out_dir}",
                              env={"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"})
    assert code == 1, out[-2000:] + err[-2000:]
    assert "hub.hf_token holds a literal secret" in err, err[-2000:]
    assert "hub.hf_token=***" in out + err  # Hydra's own echo of the overrides, masked
    assert not leaks(LITERAL, SimpleNamespace(stdout=out, stderr=err), tmp_path)
    saved = next(out_dir.rglob("overrides.yaml")).read_text()
    assert "hub.hf_token=***" in saved


# ---- the key through an interpolation: masked in the W&B run of every task that makes one ------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the command line, logging to W&B (offline) with the key in its name, group
    and tags, and an HF token read from the environment into the config."""
    root = tmp_path_factory.mktemp("secrets")
    run_dir = root / "train"
    res = fork_train(run_dir, "logger=default", "trainer.max_epochs=1", *WANDB_NAMES,
                     "+hub.hf_token=${oc.env:HF_TOKEN}", cwd=root, environ=_env(HF_TOKEN=HF_TOKEN), merge=False).result()
    assert res.returncode == 0, res.stderr[-3000:]
    return root, run_dir, res


@pytest.mark.slow_process
def test_train_masks_the_key_in_wandb_name_group_tags(trained):
    root, run_dir, res = trained
    assert not leaks(KEY, res, run_dir)
    assert not leaks(HF_TOKEN, res, run_dir)  # a secret from the environment: no file, no console line
    assert (run_dir / "config.yaml").read_text().count("hf_token: '***'") == 1
    (wb,) = _wandb_runs(run_dir)
    assert (wb.name, wb.group, wb.tags) == ("***", "***", ["vitlab", "***"])


@pytest.mark.parametrize("task", [
    pytest.param("evaluate", marks=pytest.mark.slow),  # W&B through build_loggers, as train: slow suite only
    pytest.param("fewshot", marks=pytest.mark.slow),
    "analyze",  # its own wandb.init
])
def test_eval_tasks_mask_the_key_in_their_wandb_run(task, trained, tmp_path, main_cli):
    """Each task's command line, in-process (its own ``main``): the console is captured at the file descriptors."""
    _, run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out_dir = tmp_path / task
    args = {
        "evaluate": ["logger=default", *WANDB_NAMES],
        "fewshot": ["logger=default", *WANDB_NAMES, "protocol.shots=[2]", "protocol.seeds=1", "protocol.max_eval=64"],
        "analyze": ["wandb=true", f"group={FROM_ENV}", "num_images=8", "rollout_images=2"],
    }[task]
    main = importlib.import_module(f"vitlab.{task}").main
    code, out, err = main_cli(main, f"ckpt_path={ckpt}", f"hydra.run.dir={out_dir}", *args,
                              env={"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"})
    assert code == 0, err[-3000:]
    assert not leaks(KEY, SimpleNamespace(stdout=out, stderr=err), out_dir)
    (wb,) = _wandb_runs(out_dir)
    assert wb.group == "***"


def test_every_redacted_message_hides_a_urls_password():
    """`redact` (every `Error:` line, every saved config) hides `user:password@` of any URL, not only the packed
    reader's endpoint messages."""
    from vitlab.utils.secrets import redact

    msg = "cannot reach http://AKIA:s3cr3t@minio.local:9000/bucket (timeout) nor s3://b/k"
    assert redact(msg) == "cannot reach http://***@minio.local:9000/bucket (timeout) nor s3://b/k"
