"""Bad input, numerical faults and hostile files: a clear message naming the culprit, exit code != 0, nothing lost."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import sys
import warnings

import pytest
import torch
from PIL import Image

from reliability_utils import TINY, env, fork_train, run, train_cmd
from vitlab.errors import ConfigError, NonFiniteLossError
from vitlab.train import train

NAN = ["+callbacks.inject._target_=reliability_utils.InjectNaN", "+callbacks.inject.at_step=3"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- numerical faults ------------------------------------------------------------------------------
def test_nan_loss_stops_naming_step_batch_and_last_good_checkpoint(compose_train, tmp_path):
    cfg = compose_train(*TINY, *NAN)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    msg = str(err.value)
    assert "global step 3" in msg and "batch index 3" in msg and "callbacks.nonfinite.skip=true" in msg
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in msg
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # the good one, from before the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_exactly_that_step(compose_train, tmp_path):
    res = train(compose_train(*TINY, *NAN, "callbacks.nonfinite.skip=true"))
    assert res["train/skipped_nonfinite"] == 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # The optimizer took every step but the poisoned one: Adam's per-parameter step count is one short.
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {ckpt["global_step"] - 1}


def test_inf_gradient_after_a_finite_loss_is_caught_as_gradients(compose_train):
    """Loss and gradient checks share one host sync per step; a bad gradient alone still stops the run."""
    inf_grad = ["+callbacks.inject._target_=reliability_utils.InjectInfGrad", "+callbacks.inject.at_step=3"]
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at global step 3"):
        train(compose_train(*TINY, *inf_grad))


# ---- config typos, wrong types, out-of-range values ---------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=1", "Key 'max_epoch' is not in struct"),  # typo in a key
        ("optim.lr=-0.001", "optim.lr=-0.001 must be > 0"),
    ],
)
def test_bad_config_stops_with_a_clear_message(compose_train, tmp_path, override, expected):
    """In-process: a typo stops Hydra's composition, a wrong value the run (the command line's two failures)."""
    from hydra.errors import ConfigCompositionException

    from vitlab.errors import UserError
    from vitlab.tasks import run_task

    with pytest.raises((ConfigCompositionException, UserError)) as err:
        run_task(train, compose_train(override, "logger=none"))
    assert expected in str(err.value) + str(err.value.__cause__)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.batch_size=abc"], "data.batch_size='abc' must be a number, got str"),
        (["trainer.max_epochs=ten"], "trainer.max_epochs='ten' must be a number"),
        (["data.batch_size=0"], "data.batch_size=0 must be > 0"),
        (["optim.lr=-1e-3"], "optim.lr=-0.001 must be > 0"),
        (["data.img_size=30"], "model.patch_size=8 does not divide model.img_size=30"),  # the family's own check
        (["trainer.precision=17"], "trainer.precision=17 is not one of"),
    ],
)
def test_validation_names_the_key(refuse, overrides, expected):
    assert expected in refuse(*overrides)


def test_option_typo_lists_the_choices(compose_train):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Could not find 'model/vit_b61'") as err:
        compose_train("model=vit_b61")
    assert "vit_b16" in str(err.value)  # Hydra lists the available options


def test_resume_never_refuses_to_overwrite_checkpoints(compose_train, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="vitlab does not overwrite them"):
        train(compose_train("resume=never"))
    assert (ckpts / "last.ckpt").read_bytes() == b"precious"


# ---- data: missing roots, corrupt images -------------------------------------------------------------
def test_missing_data_root_names_the_key_and_path(compose_train, tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(Exception) as err:  # noqa: PT011 - the message is what matters
        train(compose_train("data=folder", f"data.root={missing}", "data.num_classes=2"))
    assert str(missing) in str(err.value) and "data.root" in str(err.value)


def _image_folder(root, corrupt: str | None = None):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * i, 100 if c == "cat" else 200, 0)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "dog" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_corrupt_image_names_the_file(compose_train, tmp_path):
    root = tmp_path / "imgs"
    _image_folder(root, corrupt="broken.png")
    cfg = compose_train("data=folder", f"data.root={root}", "data.img_size=16", "data.num_workers=0",
                        "data.batch_size=4", "data.val_fraction=0.25", "trainer.max_epochs=1", "test=false")
    with pytest.raises(Exception, match="broken.png"):
        train(cfg)


# ---- a disk too full for the checkpoint ------------------------------------------------------------
def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow_process
def test_disk_full_during_checkpoint_keeps_the_previous_one(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    train(compose_train(*TINY, "trainer.max_epochs=1", out=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before, size = _sha(last), last.stat().st_size
    # The same job, resumed for one more epoch, on a "disk" where no file may exceed half a checkpoint.
    out = fork_train(run_dir, "trainer.max_epochs=2", cwd=tmp_path, preexec=_limit_file_size(size // 2),
                     merge=False).result()
    assert out.returncode != 0
    assert "could not write checkpoint" in out.stderr and str(run_dir / "checkpoints") in out.stderr
    assert "the disk or quota is full" in out.stderr  # the write's errno survives torch's writer
    assert _sha(last) == before  # the previous checkpoint is intact...
    assert not list(last.parent.glob("*.tmp"))  # ...and no partial file is left behind
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


# ---- W&B unavailable ---------------------------------------------------------------------------------
def test_wandb_not_installed_falls_back_to_csv_with_a_warning(compose_train, monkeypatch):
    from vitlab.runs.assemble import build_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = compose_train("logger=default")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = build_loggers(cfg.logger)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert any("logger 'wandb'" in str(w.message) and "training goes on" in str(w.message) for w in caught)


@pytest.mark.slow
def test_wandb_failing_to_start_does_not_stop_training(tmp_path):
    """Online W&B without an API key (and no network): a warning, and the run finishes with CSV logs."""
    e = env(WANDB_MODE="online", HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / ".config"))
    e.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "job"
    out = run(train_cmd(run_dir, "logger=default", "trainer.max_epochs=1"), tmp_path, env=e, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "logger 'wandb'" in out.stderr and "training goes on without it" in out.stderr
    assert (run_dir / "csv" / "metrics.csv").is_file() and (run_dir / "metrics.json").is_file()


# ---- security ----------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_checkpoint_is_refused_everywhere(compose_train, tmp_path, main_cli):
    from vitlab.errors import ResumeError
    from vitlab.models.pretrained import load_pretrained
    from vitlab.runs.read import load_checkpoint
    from vitlab.runs.resume import peek_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "payload": _Evil(str(marker))}, evil)
    # Through the command line (resume from it; vitlab.train's main in-process): refused before anything is built.
    from vitlab.train import main

    code, _, err = main_cli(main, f"ckpt_path={evil}", "logger=none", f"hydra.run.dir={tmp_path / 'job'}")
    assert code != 0 and "weights_only=True" in err, err[-2000:]
    # Every other loader: evaluate, the resume peek, fine-tuning from it.
    with pytest.raises(ValueError, match="not a readable vitlab checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(ResumeError, match="would run code when loaded is refused"):
        peek_checkpoint(evil)
    from vitlab.models import build_model

    net = build_model("vit", "micro", num_classes=10, img_size=16, patch_size=8)
    with pytest.raises(Exception, match="weights_only|Unsupported global|refused"):  # noqa: PT011
        load_pretrained(net, str(evil))
    assert not marker.exists(), "a checkpoint executed code"
