"""k-NN on frozen features (vitlab.protocols.knn): the weighted vote on a hand-made set, the task and the callback."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FAST, compose_cfg
from vitlab import protocols
from vitlab.errors import ConfigError
from vitlab.protocols.knn import knn_accuracy, knn_predict


def test_weighted_vote_on_hand_made_features():
    """One very similar neighbour of class 1 outvotes two less similar ones of class 0 at T = 0.07 (the weights
    exp(s / T) of Wu et al. 2018 / DINO), not under a flat vote; only the direction of a feature counts."""
    bank = torch.tensor([[10.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])  # cosine to q: 1, 0.6, 0.6, -1
    bank_y = torch.tensor([1, 0, 0, 2])
    q = torch.tensor([[3.0, 0.0]])
    scores = knn_predict(bank, bank_y, q, 3, k=3, temperature=0.07)
    expected = torch.tensor([[2 * math.exp(0.6 / 0.07), math.exp(1 / 0.07), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0.0)
    assert scores.argmax(1).item() == 1
    assert knn_predict(bank, bank_y, q, 3, k=3, temperature=1e4).argmax(1).item() == 0  # ~flat: majority wins
    assert knn_predict(bank, bank_y, q, 3, k=1, temperature=0.07).argmax(1).item() == 1  # nearest neighbour
    assert knn_predict(bank, bank_y, q, 3, k=50, temperature=0.07)[0, 2] > 0  # k > bank: every entry votes
    acc = knn_accuracy(bank, bank_y, torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0]), 3, 3, 0.07)
    assert acc == {"top1": 1.0}  # top5 only with at least 5 classes


def test_a_protocol_is_found_by_name_and_a_wrong_name_or_option_is_named():
    from vitlab.callbacks.protocols import ProtocolCallback
    from vitlab.data.digits import DigitsDataModule

    assert {"fewshot", "knn"} <= set(protocols.available())
    assert "vtab" not in protocols.available()  # a multirun summary, not a frozen-network protocol
    with pytest.raises(ConfigError, match=r"protocol name='nope' is not an evaluation protocol; choose from \["):
        ProtocolCallback(name="nope")
    with pytest.raises(ConfigError, match="knn k=0 must be >= 1"):
        protocols.build("knn", DigitsDataModule(), k=0, temperature=0.07, max_train=None, max_eval=None,
                        batch_size=8)
    with pytest.raises(ConfigError, match="protocol knn: .*'shots'.*conf/protocol/knn.yaml"):
        protocols.build("knn", DigitsDataModule(), shots=[1])


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory):
    """A tiny vit_micro trained on digits with the k-NN callback (`+protocol@callbacks.knn=knn`): its results
    and checkpoint."""
    from vitlab.train import train

    out = tmp_path_factory.mktemp("knn") / "run"
    cfg = compose_cfg("train", [*FAST, "trainer.max_epochs=1", "data.batch_size=32", "test=false",
                                "+protocol@callbacks.knn=knn", "callbacks.knn.max_eval=300"], out)
    return train(cfg), out / "checkpoints" / "last.ckpt"


def test_knn_as_a_training_callback(knn_run):
    results, _ = knn_run
    # 10 classes: chance is 10%; one epoch (40 steps) gives ~39% k-NN top-1 while the head's val/acc is ~24%
    assert results["knn/digits_top1"] > 0.25
    assert results["knn/digits_top5"] >= results["knn/digits_top1"]


def test_knn_as_a_task_on_a_trained_checkpoint(knn_run, tmp_path, capsys):
    """`python -m vitlab.probe protocol=knn ckpt_path=... data=digits`, composed as the CLI does."""
    from vitlab.runs.probe import probe

    _, ckpt = knn_run
    cfg = compose_cfg("probe", ["protocol=knn", f"ckpt_path={ckpt}", "data=digits"], tmp_path / "knn")
    assert (cfg.protocol.k, cfg.protocol.temperature) == (20, 0.07)  # the field's convention (DINO eval_knn.py)
    res = probe(cfg)
    assert res["knn/digits_top1"] > 0.25 and res["protocol/score"] == res["knn/digits_top1"]  # chance: 10%
    assert "| digits | 20 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert saved["knn/digits_top1"] == res["knn/digits_top1"] and saved["knn/k"] == 20
