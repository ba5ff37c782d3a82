"""Pretrained weights: official ViT / R50+ViT / BiT .npz, safetensors, vitlab checkpoints (paper §3.2).

Each checkpoint is written by the test itself in the real format: the official .npz files with the key
names and array layouts of google-research/vision_transformer and big_transfer (the inverse of the
mapping timm applies to the real files), safetensors with ``safetensors.torch.save_file``.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitlab.errors import PretrainedError, PretrainedMismatchError
from vitlab.models import build_model
from vitlab.models.checkpoints import resize_pos_embed
from vitlab.models.pretrained import detect_format, load_pretrained

# ---------------------------------------------------------------------------------------------------
# Writers for the official formats (torch layout -> JAX/Flax layout)
# ---------------------------------------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _conv(w: torch.Tensor) -> np.ndarray:
    """torch OIHW -> flax HWIO."""
    return _np(w.permute(2, 3, 1, 0))


def vit_npz_arrays(model: nn.Module, representation: bool = False) -> dict[str, np.ndarray]:
    """A timm VisionTransformer's weights under google-research/vision_transformer's ``.npz`` key names."""
    d = model.embed_dim
    out: dict[str, np.ndarray] = {
        "embedding/kernel": _conv(model.patch_embed.proj.weight),
        "embedding/bias": _np(model.patch_embed.proj.bias),
        "Transformer/posembed_input/pos_embedding": _np(model.pos_embed),
        "Transformer/encoder_norm/scale": _np(model.norm.weight),
        "Transformer/encoder_norm/bias": _np(model.norm.bias),
    }
    if model.cls_token is not None:
        out["cls"] = _np(model.cls_token)
    for i, blk in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        h = blk.attn.num_heads
        hd = d // h
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = _np(blk.norm1.weight), _np(blk.norm1.bias)
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = _np(blk.norm2.weight), _np(blk.norm2.bias)
        qkv_w, qkv_b = blk.attn.qkv.weight, blk.attn.qkv.bias
        for j, n in enumerate(("query", "key", "value")):
            out[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = _np(qkv_w[j * d:(j + 1) * d].T.reshape(d, h, hd))
            out[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = _np(qkv_b[j * d:(j + 1) * d].reshape(h, hd))
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = _np(blk.attn.proj.weight.reshape(d, h, hd).permute(1, 2, 0))
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = _np(blk.attn.proj.bias)
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = _np(fc.weight.T)
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = _np(fc.bias)
    head = model.head
    if isinstance(head, nn.Sequential):  # representation layer + linear head
        out["pre_logits/kernel"], out["pre_logits/bias"] = _np(head.pre_logits[0].weight.T), _np(head.pre_logits[0].bias)
        head = head.head
    out["head/kernel"], out["head/bias"] = _np(head.weight.T), _np(head.bias)
    pe = model.patch_embed
    if hasattr(pe, "backbone"):  # R50+ViT: the ResNet's own names
        bb = pe.backbone
        out["conv_root/kernel"] = _conv(bb.stem.conv.weight)
        out["gn_root/scale"], out["gn_root/bias"] = _np(bb.stem.norm.weight), _np(bb.stem.norm.bias)
        for i, stage in enumerate(bb.stages):
            for j, blk in enumerate(stage.blocks):
                p = f"block{i + 1}/unit{j + 1}/"
                for r in range(1, 4):
                    out[p + f"conv{r}/kernel"] = _conv(getattr(blk, f"conv{r}").weight)
                    out[p + f"gn{r}/scale"] = _np(getattr(blk, f"norm{r}").weight)
                    out[p + f"gn{r}/bias"] = _np(getattr(blk, f"norm{r}").bias)
                if blk.downsample is not None:
                    out[p + "conv_proj/kernel"] = _conv(blk.downsample.conv.weight)
                    out[p + "gn_proj/scale"] = _np(blk.downsample.norm.weight)
                    out[p + "gn_proj/bias"] = _np(blk.downsample.norm.bias)
    return out


def bit_npz_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """A timm ResNetV2's weights under google-research/big_transfer's ``.npz`` key names."""
    p = "resnet/"
    out = {
        f"{p}root_block/standardized_conv2d/kernel": _conv(model.stem.conv.weight),
        f"{p}group_norm/gamma": _np(model.norm.weight),
        f"{p}group_norm/beta": _np(model.norm.bias),
        f"{p}head/conv2d/kernel": _conv(model.head.fc.weight),
        f"{p}head/conv2d/bias": _np(model.head.fc.bias),
    }
    for i, stage in enumerate(model.stages):
        for j, blk in enumerate(stage.blocks):
            bp = f"{p}block{i + 1}/unit{j + 1:02d}/"
            for r, u in enumerate("abc"):
                out[f"{bp}{u}/standardized_conv2d/kernel"] = _conv(getattr(blk, f"conv{r + 1}").weight)
                out[f"{bp}{u}/group_norm/gamma"] = _np(getattr(blk, f"norm{r + 1}").weight)
                out[f"{bp}{u}/group_norm/beta"] = _np(getattr(blk, f"norm{r + 1}").bias)
            if blk.downsample is not None:
                out[f"{bp}a/proj/standardized_conv2d/kernel"] = _conv(blk.downsample.conv.weight)
    return out


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every tensor (norm scales, tokens, heads too) a distinct random value, so no mapping error hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.05
            p.copy_(1.0 + noise if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight") else noise)
    return model.eval()


def vit(img: int = 32, k: int = 10, **kw) -> nn.Module:
    return build_model("vit", kw.pop("variant", "micro"), k, img_size=img, patch_size=kw.pop("patch", 8), **kw)


X32 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------
# Official ViT .npz
# ---------------------------------------------------------------------------------------------------


def test_official_vit_npz_logits_match_source(tmp_path):
    src = randomise(vit())
    path = tmp_path / "ViT-micro_8.npz"
    np.savez(path, **vit_npz_arrays(src))
    assert detect_format(path) == "vit_npz"
    dst = vit().eval()
    report = load_pretrained(dst, path, keep_head=True)
    assert report.new == [] and report.dropped == []
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32), atol=1e-5, rtol=1e-5)


def test_finetune_drops_head_zero_inits_new_one_and_logs(tmp_path, caplog):
    src = randomise(vit(k=7))
    path = tmp_path / "ViT.npz"
    np.savez(path, **vit_npz_arrays(src))
    dst = vit(k=10).eval()
    with caplog.at_level(logging.INFO, logger="vitlab.pretrained"):
        report = load_pretrained(dst, path)
    assert report.new == ["head.bias", "head.weight"]
    assert report.dropped == ["head.bias", "head.weight"]
    assert "head.weight" in caplog.text and "loaded" in caplog.text
    assert torch.count_nonzero(dst.head.weight) == 0 and torch.count_nonzero(dst.head.bias) == 0
    with torch.no_grad():  # the backbone is the source's, exactly
        torch.testing.assert_close(dst.forward_head(dst.forward_features(X32), pre_logits=True),
                                   src.forward_head(src.forward_features(X32), pre_logits=True), atol=1e-5, rtol=1e-5)


def test_representation_layer_is_dropped_when_finetuning(tmp_path):
    src = randomise(vit(k=5, representation_size=32))
    path = tmp_path / "ViT-21k.npz"
    np.savez(path, **vit_npz_arrays(src))
    report = load_pretrained(vit(), path)
    assert "pre_logits/kernel" in report.dropped and "head/kernel" in report.dropped
    keep = vit(k=5, representation_size=32).eval()
    load_pretrained(keep, path, keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(keep(X32), src(X32), atol=1e-5, rtol=1e-5)


def test_higher_resolution_resizes_position_embeddings(tmp_path):
    src = randomise(vit(img=32))  # 4x4 grid
    path = tmp_path / "ViT.npz"
    np.savez(path, **vit_npz_arrays(src))
    dst = vit(img=48)  # 6x6 grid, same patch size
    report = load_pretrained(dst, path)
    assert report.resized and "4x4 -> 1+6x6" in report.resized[0]
    assert dst.pos_embed.shape == (1, 37, 128)
    torch.testing.assert_close(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # the [class] position is kept
    expected = resize_pos_embed(src.pos_embed.detach(), (6, 6), 1)
    torch.testing.assert_close(dst.pos_embed.detach(), expected, atol=1e-5, rtol=1e-5)
    assert dst(torch.zeros(1, 3, 48, 48)).shape == (1, 10)


def test_resize_pos_embed_same_size_is_identity_and_interpolates_smoothly():
    pe = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resize_pos_embed(pe, (4, 4), 1), pe)
    # a field linear in the column index stays monotone in the column index after 4x4 -> 8x8
    col = torch.arange(4.0).repeat(4).reshape(1, 16, 1).expand(1, 16, 8)
    up = resize_pos_embed(torch.cat([torch.zeros(1, 1, 8), col], 1), (8, 8), 1)[0, 1:, 0].reshape(8, 8)
    assert torch.all(up[:, 1:] >= up[:, :-1]) and torch.allclose(up[0], up[7])
    # 224 -> 384 at patch 16: 14x14 -> 24x24
    assert resize_pos_embed(torch.randn(1, 197, 4), (24, 24), 1).shape == (1, 577, 4)


def test_hybrid_npz_logits_match_source(tmp_path):
    kw = dict(img_size=32, patch_size=1, hybrid="micro")
    src = randomise(build_model("hybrid", "micro", 10, **kw))
    path = tmp_path / "R-micro+ViT.npz"
    np.savez(path, **vit_npz_arrays(src))
    dst = build_model("hybrid", "micro", 10, **kw).eval()
    load_pretrained(dst, path, keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32), atol=1e-5, rtol=1e-5)


def test_bit_npz_logits_match_source(tmp_path):
    src = randomise(build_model("bit", "micro", 10))
    path = tmp_path / "BiT-micro.npz"
    np.savez(path, **bit_npz_arrays(src))
    assert detect_format(path) == "bit_npz"
    dst = build_model("bit", "micro", 10).eval()
    load_pretrained(dst, path, keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32), atol=1e-5, rtol=1e-5)
    fresh = build_model("bit", "micro", 3)
    report = load_pretrained(fresh, path)
    assert report.new == ["head.fc.bias", "head.fc.weight"] and torch.count_nonzero(fresh.head.fc.weight) == 0


# ---------------------------------------------------------------------------------------------------
# safetensors / torch / vitlab checkpoints
# ---------------------------------------------------------------------------------------------------


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    src = randomise(vit())
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = vit().eval()
    load_pretrained(dst, path, keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32))


def test_vitlab_checkpoint_loads_net_weights(tmp_path):
    src = randomise(vit())
    ckpt = {"state_dict": {**{f"net.{k}": v for k, v in src.state_dict().items()}, "mask_token": torch.zeros(1, 1, 128)},
            "pytorch-lightning_version": "2.6.0", "vitlab_config": {"model": {"name": "vit_micro"}}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    dst = vit(img=48)
    report = load_pretrained(dst, path)
    assert report.format == "vitlab" and "mask_token" in report.dropped and report.resized


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_wrong_architecture_names_width_and_depth(tmp_path):
    path = tmp_path / "ViT-micro.npz"
    np.savez(path, **vit_npz_arrays(vit()))
    with pytest.raises(PretrainedMismatchError) as e:
        load_pretrained(build_model("vit", "Ti", 10, img_size=32, patch_size=8), path)
    msg = str(e.value)
    assert "width: checkpoint 128 vs model 192" in msg and "depth: checkpoint 6 vs model 12" in msg and str(path) in msg
    with pytest.raises(PretrainedMismatchError, match="patch: checkpoint 8 vs model 4"):
        load_pretrained(vit(patch=4), path)
    with pytest.raises(PretrainedMismatchError, match="family"):
        load_pretrained(build_model("bit", "micro", 10), path)


def test_wrong_architecture_state_dict_lists_shapes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "ti.safetensors"
    save_file(build_model("vit", "Ti", 10, img_size=32, patch_size=8).state_dict(), str(path))
    with pytest.raises(PretrainedMismatchError) as e:
        load_pretrained(vit(), path)
    msg = str(e.value)
    assert "shape mismatch" in msg and "blocks.0.attn.qkv.weight checkpoint (576, 192) vs model (384, 128)" in msg
    assert "not in the model: blocks.10" in msg and "'depth': 12" in msg and "'depth': 6" in msg


def test_missing_and_corrupt_files_name_themselves(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pretrained(vit(), tmp_path / "nope.npz")
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not an archive")
    with pytest.raises(PretrainedError, match="broken.npz"):
        load_pretrained(vit(), bad)
    good = tmp_path / "good.npz"
    np.savez(good, **vit_npz_arrays(vit()))
    trunc = tmp_path / "truncated.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PretrainedError, match="truncated.npz"):
        load_pretrained(vit(), trunc)
    ck = tmp_path / "corrupt.ckpt"
    ck.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(PretrainedError, match="corrupt.ckpt"):
        load_pretrained(vit(), ck)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / ".pwned",))


def test_loading_never_executes_code(tmp_path):
    marker = Path(__file__).parent / ".pwned"
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        torch.save({"state_dict": {"x": _Exploit()}}, f, pickle_module=pickle)
    with pytest.raises(PretrainedError, match="evil.ckpt"):
        load_pretrained(vit(), path)
    assert not marker.exists()


def test_hybrid_checkpoint_fine_tunes_at_a_higher_resolution(tmp_path, compose_train):
    """model=r_vit_micro: an R+ViT .npz written at 32 px (4x4 tokens) loads at 48 px (6x6) through train's builder."""
    from vitlab.runs.assemble import build_module

    src = randomise(build_model("hybrid", "micro", 10, img_size=32, patch_size=1, hybrid="micro"))
    path = tmp_path / "R-micro+ViT.npz"
    np.savez(path, **vit_npz_arrays(src))
    module = build_module(compose_train("model=r_vit_micro", f"model.pretrained={path}", "data.img_size=48"))
    net = module.net
    assert net.pos_embed.shape == (1, 37, 128) and torch.count_nonzero(net.head.weight) == 0
    torch.testing.assert_close(net.patch_embed.backbone.stem.conv.weight, src.patch_embed.backbone.stem.conv.weight)
    assert net(torch.zeros(2, 3, 48, 48)).shape == (2, 10)


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_resnetv2_checkpoint_is_refused_by_a_convnext_naming_both_families(tmp_path, fmt):
    """Both are CNNs with ``stages`` and a ``stem``: the family is the registry's answer, not a guess from attributes."""
    from safetensors.torch import save_file

    bit = build_model("bit", "micro", 10)
    path = tmp_path / f"BiT-micro.{fmt}"
    if fmt == "npz":
        np.savez(path, **bit_npz_arrays(bit))
    else:
        save_file(bit.state_dict(), str(path))
    convnext = build_model("convnext", "micro", 10)
    before = {k: v.clone() for k, v in convnext.state_dict().items()}
    with pytest.raises(PretrainedMismatchError, match=r"family: checkpoint 'bit' vs model 'convnext'") as e:
        load_pretrained(convnext, path)
    assert str(path) in str(e.value)
    assert all(torch.equal(v, convnext.state_dict()[k]) for k, v in before.items())  # nothing was loaded


def test_convnext_fine_tunes_from_a_timm_state_dict(tmp_path):
    """A family with no official layout still loads timm .pth / .safetensors files: new zero head, resolution free."""
    src = randomise(build_model("convnext", "micro", 7))
    path = tmp_path / "convnext_micro.pth"
    torch.save(src.state_dict(), path)
    dst = build_model("convnext", "micro", 10)
    report = load_pretrained(dst, path)
    assert report.format == "torch" and "head.fc.weight" in report.dropped
    torch.testing.assert_close(dst.stages[2].blocks[1].conv_dw.weight, src.stages[2].blocks[1].conv_dw.weight)
    assert torch.count_nonzero(dst.head.fc.weight) == 0 and dst(torch.zeros(2, 3, 48, 48)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------
# Memory bombs: a few-KB file that declares gigabytes is refused from its headers, before anything is read
# ---------------------------------------------------------------------------------------------------


def _lying_npy(shape: tuple[int, ...]) -> bytes:
    """An ``.npy`` entry whose header declares ``shape`` (float32) but whose data is 4 KB of zeros."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(4096)


def _npz_with(path: Path, arrays: dict[str, np.ndarray], lying: dict[str, tuple[int, ...]]) -> Path:
    np.savez(path, **{k: v for k, v in arrays.items() if k not in lying})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        for key, shape in lying.items():
            z.writestr(f"{key}.npy", _lying_npy(shape))
    return path


@pytest.fixture
def no_array_read(monkeypatch):
    """Reading any array's data fails the test: a refusal must come from the headers alone."""
    def refuse(*a, **k):
        raise AssertionError("an array was read before the size check")

    monkeypatch.setattr(np.lib.format, "read_array", refuse)


@pytest.mark.parametrize(("key", "shape"), [
    ("pre_logits/kernel", (1 << 15, 1 << 14)),                              # 2 GiB of an unknown layer
    ("Transformer/posembed_input/pos_embedding", (1, 1 + 1024**2, 128)),    # 1+1024² tokens: 512 MiB
    ("head/kernel", (128, 3_000_000)),                                      # 3e6 classes: 1.4 GiB
    ("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", (128, 1 << 22)),
])
def test_npz_declaring_gigabytes_is_refused_from_its_headers(tmp_path, key, shape, no_array_read):
    path = _npz_with(tmp_path / "bomb.npz", vit_npz_arrays(vit()), {key: shape})
    assert path.stat().st_size < 5_000_000  # a few MB that declare gigabytes
    with pytest.raises(PretrainedError) as e:
        load_pretrained(vit(), path)
    msg = str(e.value)
    assert str(path) in msg and f"'{key}' declares shape {shape}" in msg and "refused before reading it" in msg
    assert "can hold at most" in msg


def _rezip_with_declared_size(src: Path, dst: Path, record: str, declared: int) -> Path:
    """``src`` re-zipped with deflate, ``record``'s uncompressed size in the zip directory set to ``declared``:
    what a checkpoint of gigabytes of zeros re-zipped with deflate declares, in a file of a few KB."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
        names = [i.filename for i in z.infolist()]
    with zipfile.ZipFile(dst) as z:
        start = z.start_dir
    raw = bytearray(dst.read_bytes())
    i = raw.find(b"PK\x01\x02", start)
    while i != -1:  # central directory entries: uncompressed size at +24, name length at +28, name at +46
        n = int.from_bytes(raw[i + 28:i + 30], "little")
        if bytes(raw[i + 46:i + 46 + n]).decode().endswith(record):
            raw[i + 24:i + 28] = declared.to_bytes(4, "little")
        i = raw.find(b"PK\x01\x02", i + 4)
    dst.write_bytes(raw)
    with zipfile.ZipFile(dst) as z:
        assert max(i.file_size for i in z.infolist()) == declared and len(names) == len(z.infolist())
    return dst


def test_rezipped_torch_checkpoint_declaring_gigabytes_is_refused_before_loading(tmp_path, monkeypatch):
    """A deflated record declaring 2 GiB: refused by model.pretrained, evaluate's reader and the resume peek,
    from the zip directory alone (torch.load is never called)."""
    from vitlab.errors import ConfigError, ResumeError
    from vitlab.runs import load_checkpoint
    from vitlab.runs.resume import peek_checkpoint

    src = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in vit().state_dict().items()}}, src)
    bomb = _rezip_with_declared_size(src, tmp_path / "bomb.ckpt", "data/0", 2 << 30)
    assert bomb.stat().st_size < 5_000_000

    def no_load(*a, **k):
        raise AssertionError("torch.load ran before the zip records were checked")

    monkeypatch.setattr(torch, "load", no_load)
    for load, err in ((lambda p: load_pretrained(vit(), p), PretrainedError), (load_checkpoint, ConfigError),
                      (peek_checkpoint, ResumeError)):
        with pytest.raises(err) as e:
            load(bomb)
        msg = str(e.value)
        assert str(bomb) in msg and "2,147,483,648 bytes" in msg and "data/0" in msg and "refused before" in msg


def test_a_rezipped_checkpoint_of_plausible_size_still_loads(tmp_path):
    """Only what expands beyond what the model can need is refused: a small deflated copy loads."""
    src = randomise(vit())
    plain = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, plain)
    small = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(plain) as z, zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
    dst = vit()
    load_pretrained(dst, small, keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(dst(X32), src(X32))
