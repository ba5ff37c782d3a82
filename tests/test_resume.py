"""Resume: a run killed with SIGKILL mid-epoch continues to the same weights and metrics as an uninterrupted one."""

from __future__ import annotations

import signal

import pytest
import torch

from reliability_utils import (
    STEPS_PER_EPOCH,
    assert_same_weights,
    ckpt_step,
    fork_train,
    gate,
    kill_at_checkpoint,
    metrics,
    one_thread,
    run,
    start,
    train_args,
    train_cmd,
    wait_for,
)
from vitlab.callbacks.resume import RESUME_KEY

COMPARED = ("val/acc", "val/loss", "val/acc_best", "train/loss_epoch", "train/acc", "train/images_seen")


@pytest.mark.slow_process
def test_sigkill_mid_epoch_then_auto_resume_is_bitwise_equal(tmp_path, main_cli):
    """The killed run is this test's one process, held at a gate after its step-2 checkpoint (so the kill always
    falls mid-training); the uninterrupted reference (while that process starts) and the resume run in this
    process through vitlab.train's main, on one thread as the subprocess."""
    from vitlab.train import main

    ref, killed, held, opened = tmp_path / "ref", tmp_path / "killed", tmp_path / "held", tmp_path / "opened"
    held.mkdir()
    opened.mkdir()
    (opened / "open").write_text("")
    p_kill = fork_train(killed, *gate(held), cwd=tmp_path)
    with one_thread():
        code, out, err = main_cli(main, *train_args(ref, *gate(opened)))
    assert code == 0, (out + err)[-3000:]
    wait_for(lambda: (held / "reached").exists(), p_kill, what="the killed run at step 3")
    p_kill.send_signal(signal.SIGKILL)
    p_kill.wait(timeout=120)
    assert p_kill.returncode == -signal.SIGKILL
    step = ckpt_step(killed / "checkpoints" / "last.ckpt")
    total = 3 * STEPS_PER_EPOCH
    assert 0 < step < total, f"the kill must fall mid-training (checkpoint at step {step} of {total})"
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "train_sampler" in ckpt["DigitsDataModule"] and ckpt[RESUME_KEY]["rng"]["torch"].dtype == torch.uint8

    # Same command, same directory: resumes by itself (resume=auto) and says so.
    (held / "open").write_text("")
    with one_thread():
        code, out, err = main_cli(main, *train_args(killed, *gate(held)))
    assert code == 0, err[-3000:]
    assert "resuming from" in err + out

    assert_same_weights(ref / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")
    m_ref, m_res = metrics(ref), metrics(killed)
    for k in COMPARED:
        assert m_res[k] == m_ref[k], (k, m_res[k], m_ref[k])


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(tmp_path, main_cli):
    from vitlab.train import main

    code, _, err = main_cli(main, *train_args(tmp_path / "new", "ckpt_path=last"))
    assert code != 0
    assert "ckpt_path=last but there is no" in err and "hydra.run.dir=" in err
    assert not (tmp_path / "new" / "checkpoints").exists()


@pytest.mark.slow
def test_resume_at_epoch_boundary_matches(tmp_path):
    """Kill right after an end-of-epoch checkpoint (step 6 = epoch 1 done) and resume."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = ("callbacks.model_checkpoint.last_every_n_train_steps=null",)
    p_ref = start(train_cmd(ref, *args), tmp_path)
    p_kill = start(train_cmd(killed, *args), tmp_path)
    step = kill_at_checkpoint(p_kill, killed / "checkpoints" / "last.ckpt", min_step=STEPS_PER_EPOCH)
    assert step % STEPS_PER_EPOCH == 0 and step < 3 * STEPS_PER_EPOCH
    again = run(train_cmd(killed, *args, "ckpt_path=last"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    p_ref.communicate(timeout=600)
    assert_same_weights(ref / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")
    assert metrics(killed)["val/acc_best"] == metrics(ref)["val/acc_best"]


# ---- paths a resumed checkpoint stores are data: only this run's own checkpoint files are used ----------------
def _restored(dirpath, **paths):
    """An AtomicModelCheckpoint on ``dirpath`` after Lightning restored ``paths`` from a checkpoint's callback state
    (as on resume: the test step then loads ``best_model_path``)."""
    from vitlab.callbacks.checkpoint import AtomicModelCheckpoint

    cb = AtomicModelCheckpoint(dirpath=str(dirpath), monitor="val/acc", mode="max", save_last=True)
    best = str(paths.get("best", ""))
    cb.load_state_dict({"monitor": "val/acc", "best_model_score": torch.tensor(0.9), "best_model_path": best,
                        "current_score": torch.tensor(0.9), "dirpath": str(paths.get("stored_dirpath", dirpath)),
                        "best_k_models": {best: torch.tensor(0.9)} if best else {}, "kth_best_model_path": best,
                        "kth_value": torch.tensor(0.9), "last_model_path": str(paths.get("last", "")),
                        "last_saved_step": 4})
    return cb


def test_resume_keeps_a_stored_best_model_path_only_when_it_is_this_runs_own_file(tmp_path):
    import os

    ckpts, elsewhere = tmp_path / "run" / "checkpoints", tmp_path / "other"
    ckpts.mkdir(parents=True)
    elsewhere.mkdir()
    own = ckpts / "epoch001-val_acc0.9000.ckpt"
    own.write_bytes(b"x")
    cb = _restored(ckpts, best=own, last=ckpts / "last.ckpt")
    assert cb.best_model_path == str(own) and list(cb.best_k_models) == [str(own)]

    fifo = ckpts / "best.ckpt"
    os.mkfifo(fifo)  # opening it would block the test step forever
    other = elsewhere / "other.ckpt"  # another run's checkpoint would provide the test metrics
    other.write_bytes(b"x")
    link = ckpts / "link.ckpt"
    link.symlink_to(other)
    for bad in (fifo, other, link, ckpts / "missing.ckpt", "/etc/passwd"):
        cb = _restored(ckpts, best=bad, last=other)
        assert cb.best_model_path == "" and cb.best_model_score is None, bad
        assert cb.best_k_models == {} and cb.kth_best_model_path == "" and cb.last_model_path == ""
    # the run moved (another dirpath stored): Lightning restores only best_model_path; still checked
    assert _restored(ckpts, best=other, stored_dirpath=elsewhere).best_model_path == ""


def _fit_boring(tmp_path, epochs: int = 2, ckpt_path=None):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from vitlab.callbacks.checkpoint import AtomicModelCheckpoint

    cb = AtomicModelCheckpoint(dirpath=tmp_path / "ckpts", filename="best-{step}", monitor="step", mode="max",
                               save_top_k=1, save_last=True)  # the step always improves: a best at every epoch end
    L.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[cb], default_root_dir=tmp_path).fit(BoringModel(),
                                                                                         ckpt_path=ckpt_path)
    return cb, tmp_path / "ckpts"


def _stored_last_model_path(ckpt) -> str:
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]
    return next(v for k, v in stored.items() if k.startswith("AtomicModelCheckpoint"))["last_model_path"]


def test_every_last_ckpt_names_itself_so_a_resume_rewrites_it_not_a_last_v1(tmp_path):
    """last.ckpt is a link to the epoch's best from the first epoch on, and every best stores last.ckpt's path (a
    best naming none, linked as last.ckpt, would make a resume keep last.ckpt stale and write ``last-v1.ckpt``)."""
    for epochs in (1, 2):
        _, ckpts = _fit_boring(tmp_path / str(epochs), epochs)
        last = ckpts / "last.ckpt"
        assert _stored_last_model_path(last) == str(last)
        assert last.stat().st_nlink == 2  # a link to the epoch's best: one write per epoch
    _, ckpts = _fit_boring(tmp_path / "1", 3, ckpt_path=tmp_path / "1" / "ckpts" / "last.ckpt")
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-step=6.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


def test_last_ckpt_is_a_hard_link_to_the_best_written_at_the_same_step(tmp_path):
    cb, ckpts = _fit_boring(tmp_path)
    last, best = ckpts / "last.ckpt", ckpts / "best-step=4.ckpt"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-step=4.ckpt", "last.ckpt"]  # epoch 1's best is gone
    assert last.samefile(best) and last.stat().st_nlink == 2 and not last.is_symlink()  # one write, two names
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    best.unlink()  # top-k deleting the best leaves last.ckpt whole
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_last_ckpt_is_written_in_full_where_hard_links_are_refused(tmp_path, monkeypatch):
    import os

    def no_links(*_):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    cb, ckpts = _fit_boring(tmp_path)
    last, best = ckpts / "last.ckpt", ckpts / "best-step=4.ckpt"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-step=4.ckpt", "last.ckpt"]  # no .tmp left behind
    assert not last.samefile(best) and last.stat().st_nlink == 1
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_a_checkpoint_written_by_the_callback_holds_what_trainer_save_checkpoint_writes(tmp_path):
    """The callback's own ``torch.save`` into the temporary file (stock strategy and CheckpointIO) stores the same
    entries, weights and optimizer state as Lightning's ``trainer.save_checkpoint``."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from vitlab.callbacks.checkpoint import AtomicModelCheckpoint, atomic_save

    cb = AtomicModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    ours, theirs = atomic_save(trainer, tmp_path / "ours.ckpt"), tmp_path / "theirs.ckpt"
    trainer.save_checkpoint(theirs)
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (ours, theirs))
    assert sorted(a) == sorted(b) and a["global_step"] == b["global_step"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["optimizer_states"] == b["optimizer_states"] and a["callbacks"] == b["callbacks"]
