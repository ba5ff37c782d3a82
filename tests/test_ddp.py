"""Distributed training on CPU through the CLI: DDP with 2 gloo processes, a 2-node torchrun on localhost, FSDP config."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

from reliability_utils import TINY, Forked, env, one_thread, start
from vitlab.wandb_io.offline import find_offline_runs, read_offline_run

#: 3 global batches of 64 per epoch, 2 epochs; one val batch of all 180 val images
BASE = [a for a in TINY if not a.startswith(("data.batch_size", "trainer.max_epochs", "callbacks.model_checkpoint"))]
BASE += ["trainer.max_epochs=2", "trainer.log_every_n_steps=1"]


def _only_run_dir(root):
    runs = [p for p in (root / "logs" / "train" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected exactly one output directory, got {runs}"
    return runs[0]


def _metrics(run_dir):
    import json

    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow_process
def test_ddp_cpu_two_processes_matches_single_process(tmp_path, main_cli, monkeypatch):
    """The DDP job is 2 gloo processes: rank 0 forked from this one (``vitlab.train``'s main with the command
    line's argv), rank 1 a fresh ``python -m vitlab.train`` started by Lightning from rank 0's argv, as on a cluster.
    The single-process reference runs meanwhile in this process, through vitlab.train's main on one thread."""
    from vitlab.train import main

    ddp_root, single_root = tmp_path / "ddp", tmp_path / "single"
    ddp_root.mkdir()
    single_root.mkdir()
    # Same global batch: 2 processes x 32 vs 1 process x 64. Both runs share the 2 cores.
    p_ddp = Forked(main, [*BASE, "trainer=ddp_cpu", "data.batch_size=32", "logger=default"], ddp_root, env())
    monkeypatch.chdir(single_root)  # the command line's default run dir: ./logs/train/runs/<time>
    with one_thread():
        code, out, err = main_cli(main, *BASE, "data.batch_size=64", "logger=none")
    out_ddp, _ = p_ddp.communicate(timeout=600)
    assert p_ddp.returncode == 0, out_ddp[-4000:]
    assert code == 0, (out + err)[-3000:]

    run_dir = _only_run_dir(ddp_root)
    (wb,) = find_offline_runs(run_dir / "wandb")  # exactly one W&B run, made by rank 0
    assert read_offline_run(wb).exit_code == 0
    assert len(list(run_dir.glob("checkpoints/*.ckpt"))) == 2  # best + last, written once
    m_ddp, m_one = _metrics(run_dir), _metrics(_only_run_dir(single_root))
    assert m_ddp["train/images_seen"] == m_one["train/images_seen"] == 2 * 192
    assert m_ddp["val/acc"] == pytest.approx(m_one["val/acc"], abs=1 / 180 + 1e-9)
    assert m_ddp["val/loss"] == pytest.approx(m_one["val/loss"], rel=1e-4)
    w_ddp = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    w_one = torch.load(_only_run_dir(single_root) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_on_localhost_trains_and_checkpoints_once(tmp_path):
    port, run_dir = _free_port(), tmp_path / "shared_run"
    nodes = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "vitlab.train", *BASE, "trainer=ddp_cpu",
               "trainer.devices=1", "trainer.num_nodes=2", "data.batch_size=32", f"hydra.run.dir={run_dir}"]
        nodes.append(start(cmd, tmp_path, env=env(OMP_NUM_THREADS="1")))
    outs = [p.communicate(timeout=900)[0] for p in nodes]
    for p, out in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))[-1] == "last.ckpt"
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # 2 epochs x 3 global batches of 2 x 32
    assert _metrics(run_dir)["train/images_seen"] == 2 * 192


def test_fsdp_trainer_config_builds_the_strategy_and_refuses_cpu(compose_train):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block

    cfg = compose_train("trainer=fsdp", "model=vit_micro")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
    with pytest.raises(Exception, match="requires a GPU accelerator"):
        instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False)
