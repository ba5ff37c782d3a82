"""Bad config values and unusable files are refused at start-up, with the culprit (key or file) and the fix named.

Issue #11, items 6 and 7: each case here used to run silently on a wrong reading (``train_size=1.5`` trained
on one image, ``eval_batch_size=0`` became ``batch_size``, int8 weights "loaded"), or failed late with an
error that named neither the key nor the file (after ``config.yaml`` was written, inside timm or numpy).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from reliability_utils import TINY
from test_pretrained import X32, randomise, vit, vit_npz_arrays  # the real .npz writer
from vitlab.data.digits import DigitsDataModule
from vitlab.errors import ConfigError, PretrainedError, ResumeError
from vitlab.models import build_model
from vitlab.models.pretrained import load_pretrained
from vitlab.runs.resume import peek_checkpoint
from vitlab.train import train

# ---- config values: refused before config.yaml (or anything else) is written ---------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.train_size=1.5", "data.train_size=1.5 as a fraction must be in (0, 1]"),
        ("data.train_size=2.0", "for a number of images give an int (e.g. data.train_size=2)"),
        ("data.train_size=0", "data.train_size=0 must be a number of images >= 1"),
        ("data.train_size=abc", "data.train_size='abc' must be an int"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0 must be > 0"),
        ("data.eval_img_size=0", "data.eval_img_size=0 must be > 0"),
        ("seed=-1", "seed=-1 must be an int from 0 to 4294967295"),
        ("seed=abc", "seed='abc' must be an int from 0 to 4294967295"),
        ("seed=4294967296", "seed=4294967296 must be an int"),
        ("model.img_size=64", "model.img_size=64 but data=digits delivers 32 px images (data.img_size=32)"),
        ("data.eval_img_size=48", "data.eval_img_size=48 but the model is built for model.img_size=32"),
    ],
)
def test_bad_value_is_refused_before_anything_is_written(compose_train, tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        train(compose_train(override))
    assert expected in str(err.value)
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resolution_mismatch_names_the_key_to_set(compose_train):
    with pytest.raises(ConfigError) as err:
        train(compose_train("model.img_size=64"))
    assert "Set data.img_size=64 instead" in str(err.value)


def test_valid_train_sizes_and_null_eval_batch_still_work():
    dm = DigitsDataModule(train_size=0.1, eval_batch_size=None, batch_size=16)
    dm.setup()
    assert len(dm.train_set) == round(0.1 * 1257) and dm.eval_batch_size == 16  # null = the training batch
    assert DigitsDataModule(train_size=1.0, eval_batch_size=8).eval_batch_size == 8


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"train_size": 1.5}, "data.train_size=1.5 as a fraction must be in (0, 1]"),
        ({"eval_batch_size": 0}, "data.eval_batch_size=0 must be > 0"),
        ({"batch_size": 0}, "data.batch_size=0 must be > 0"),  # the same check, in the same words, as the config's
    ],
)
def test_datamodule_refuses_the_same_values_in_the_same_words(kwargs, expected):
    """evaluate / fewshot build a DataModule too: the DataModule runs the one check, in the same words."""
    with pytest.raises(ConfigError, match=None) as err:
        DigitsDataModule(**kwargs)
    assert expected in str(err.value)


def test_resolution_mismatch_stops_at_start_up_as_one_error_line(refuse, tmp_path):
    msg = refuse("model.img_size=64", *TINY)
    assert "Error: model.img_size=64 but data=digits delivers 16 px images (data.img_size=16)" in msg
    assert "Input height" not in msg  # not timm's patch embedding, mid-training
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("checkpoints"))


# ---- model.pretrained: dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 2e-3), (torch.float64, 1e-6), (torch.bfloat16, 2e-2)])
def test_float_safetensors_of_another_precision_is_cast_and_reported(tmp_path, dtype, atol):
    src = randomise(vit())
    path = tmp_path / f"vit_{str(dtype)[6:]}.safetensors"
    save_file({k: v.to(dtype).contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = vit().eval()
    report = load_pretrained(dst, path, keep_head=True)
    n = len(src.state_dict())
    assert report.cast == [f"{n} tensors {str(dtype)[6:]} -> float32"]
    assert f"cast: {n} tensors {str(dtype)[6:]} -> float32" in report.summary()
    assert all(p.dtype == torch.float32 for p in dst.parameters())
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32), atol=atol, rtol=0)


def test_int8_safetensors_is_refused_naming_file_tensor_and_dtype(tmp_path):
    net = vit()
    path = tmp_path / "vit_int8.safetensors"
    save_file({k: (v * 100).to(torch.int8).contiguous() for k, v in net.state_dict().items()}, str(path))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedError) as err:
        load_pretrained(net, path)
    msg = str(err.value)
    assert f"model.pretrained={path}" in msg and "is int8 where the model holds float32" in msg
    assert "tensor 'blocks." in msg and "quantised" in msg
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing was loaded


def test_npz_of_another_float_precision_is_cast_and_int8_refused(tmp_path):
    src = randomise(vit())
    arrays = vit_npz_arrays(src)
    half = tmp_path / "ViT_fp16.npz"
    np.savez(half, **{k: v.astype(np.float16) for k, v in arrays.items()})
    dst = vit().eval()
    report = load_pretrained(dst, half, keep_head=True)
    assert report.cast == [f"{len(arrays)} tensors float16 -> float32"]
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32), atol=2e-3, rtol=0)
    q = tmp_path / "ViT_int8.npz"
    np.savez(q, **{k: v.astype(np.int8) for k, v in arrays.items()})
    with pytest.raises(PretrainedError, match=r"ViT_int8.npz: tensor '.+' is int8 where the model holds float32"):
        load_pretrained(vit(), q)


def test_torch_checkpoint_dtypes_are_checked_too(tmp_path):
    src = randomise(vit())
    path = tmp_path / "vit_bf16.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, path)
    assert load_pretrained(vit(), path).cast == [f"{len(src.state_dict()) - 2} tensors bfloat16 -> float32"]  # head dropped
    sd = src.state_dict()
    sd["blocks.2.mlp.fc1.weight"] = sd["blocks.2.mlp.fc1.weight"].to(torch.uint8)
    torch.save(sd, path)
    with pytest.raises(PretrainedError, match=r"tensor 'blocks.2.mlp.fc1.weight' is uint8 where the model holds float32"):
        load_pretrained(vit(), path)


# ---- model.pretrained: unusable .npz files and paths -----------------------------------------------------


def test_npz_with_an_object_array_names_the_array(tmp_path):
    arrays = vit_npz_arrays(vit())
    arrays["Transformer/encoderblock_1/LayerNorm_0/scale"] = np.array([{"not": "weights"}] * 128, dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **arrays)  # allow_pickle is numpy's default when writing
    with pytest.raises(PretrainedError) as err:
        load_pretrained(vit(), path)
    msg = str(err.value)
    assert f"model.pretrained={path}" in msg and "'Transformer/encoderblock_1/LayerNorm_0/scale'" in msg
    assert "object array" in msg and "plain float arrays" in msg


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel", (128,),
         "has shape (128,), but the official files store it as (width, heads, head width)"),
        ("embedding/kernel", (8, 8, 128), "has shape (8, 8, 128), but the official files store it as (patch, patch"),
        ("Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel", (128,),
         "has shape (128,) but 'Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel' has (256, 128)"),
    ],
)
def test_npz_with_a_wrong_shaped_array_names_the_array(tmp_path, key, shape, expected):
    arrays = vit_npz_arrays(vit())
    arrays[key] = np.zeros(shape, np.float32)
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    with pytest.raises(PretrainedError) as err:
        load_pretrained(vit(), path)
    msg = str(err.value)
    assert f"model.pretrained={path}" in msg and f"'{key}'" in msg and expected in msg


def test_directory_as_pretrained_is_named_a_directory_with_the_files_in_it(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(PretrainedError) as err:
        load_pretrained(vit(), run_dir)
    msg = str(err.value)
    assert f"model.pretrained={run_dir} is a directory, not a checkpoint file" in msg and "no such file" not in msg
    assert f"model.pretrained={run_dir / 'checkpoints' / 'last.ckpt'}" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedError, match="is a directory.*none was found in it"):
        load_pretrained(vit(), empty)


# ---- resume: an empty last.ckpt, and the whole reason a checkpoint is refused -------------------------------


def test_empty_last_ckpt_says_empty_not_mmap_and_is_kept(compose_train, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"")
    with pytest.raises(ResumeError) as err:
        train(compose_train(*TINY))
    msg = str(err.value)
    assert f"{ckpts / 'last.ckpt'} is empty (0 bytes)" in msg and "mmap" not in msg
    assert "move it away" in msg and "ckpt_path=" in msg
    assert (ckpts / "last.ckpt").exists()  # nothing the user has is deleted
    assert not (tmp_path / "run" / "config.yaml").exists()


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def test_refused_checkpoint_keeps_torchs_whole_reason(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _System()}, evil)
    with pytest.raises(ResumeError) as err:
        peek_checkpoint(evil)
    msg = str(err.value)
    assert "posix.system" in msg and "blocked" in msg  # the real reason, from torch's weights_only unpickler
    assert "weights_only` set to `False` will likely succeed" not in msg  # not torch's advice to run it anyway
    assert str(evil) in msg and "would run code when loaded is refused" in msg


def test_bit_npz_is_checked_for_dtypes(tmp_path):
    from test_pretrained import bit_npz_arrays

    arrays = bit_npz_arrays(randomise(build_model("bit", "micro", 10)))
    path = tmp_path / "BiT-micro-fp64.npz"
    np.savez(path, **{k: v.astype(np.float64) for k, v in arrays.items()})
    assert load_pretrained(build_model("bit", "micro", 10), path).cast == [f"{len(arrays)} tensors float64 -> float32"]
