"""vitlab.predict: label your own images with a trained checkpoint (timm's ``inference.py`` for vitlab).

    python -m vitlab.predict ckpt_path=<run>/checkpoints/last.ckpt input=photos/ topk=5 out=preds.csv
    python -m vitlab.predict ckpt_path=<ckpt> input='shots/*.jpg' out=preds.json multilabel=true

The images go through the checkpoint's own eval pipeline (``data.eval_pipeline``, ``eval_img_size``,
``normalization``, ``crop_pct`` as stored), in batches on the GPU when there is one. Class names come from
the class table stored in the checkpoint (``vitlab_classes``; the dataset's class folders / names), with
fallbacks for the embedded datasets. Unreadable images are named, skipped and counted; the others are kept.

Safety: the checkpoint is read with ``torch.load(weights_only=True)`` and only its plain model config is used
(``build_model`` by family); nothing named in the checkpoint (``_target_`` of its data config, ...) is
instantiated or imported.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vitlab.data.tree import walk_files
from vitlab.errors import ConfigError
from vitlab.tasks import hydra_app, task_wrapper

log = logging.getLogger("vitlab.predict")

#: class names of the embedded datasets (checkpoints made before vitlab stored ``vitlab_classes``)
EMBEDDED_CLASSES = {
    "digits": [str(i) for i in range(10)],
    "shapes": ["disk", "square", "triangle", "ring", "plus", "hstripes", "vstripes", "checker", "dstripes", "dots"],
}


def find_images(spec: str) -> list[Path]:
    """``spec`` = an image file, a folder (searched recursively) or a glob; sorted, with a clear error if empty.

    Folders and globs are walked by ``vitlab.data.tree.walk_files``, each folder once: a symlink loop (``d/up -> ..``)
    is named and skipped instead of walking for ever (``glob.glob`` follows it until the path is too long, and
    two such loops make that exponential); ``**`` in a glob matches any number of folders, as in ``glob``."""
    from vitlab.data.files import IMG_EXTENSIONS  # lazy: a refusal answers before torch loads

    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = walk_files(p, IMG_EXTENSIONS, p)
    else:
        base, pattern = _glob_base(p)
        found = walk_files(base, ("",), base) if base.is_dir() and pattern else []
        files = [f for f in found if _glob_match(Path(os.path.relpath(f, base)).parts, pattern)]
    if not files:
        raise FileNotFoundError(
            f"input={spec}: no image found (give an image file, a folder of images, or a quoted glob like "
            f"'photos/*.jpg'; extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return sorted(Path(f) for f in files)


def _glob_base(p: Path) -> tuple[Path, tuple[str, ...]]:
    """(the folder before the first wildcard, the pattern's parts after it): ``d/**/*.png`` -> (d, (**, *.png))."""
    parts = p.parts
    i = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:i]) if i else Path("."), parts[i:]


def _glob_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether a relative path's parts match a glob's parts (``**`` = any number of folders, as ``glob``'s
    ``recursive=True``; a name starting with ``.`` only matches a pattern that does)."""
    ok = {(0, 0)}  # (parts matched, pattern parts used) reachable
    for j, pat in enumerate(pattern):
        nxt = set()
        for i, _ in ok:
            if pat == "**":
                nxt.update((k, j + 1) for k in range(i, len(parts) + 1)
                           if not any(q.startswith(".") for q in parts[i:k]))
            elif i < len(parts) and fnmatch.fnmatchcase(parts[i], pat) \
                    and (not parts[i].startswith(".") or pat.startswith(".")):
                nxt.add((i + 1, j + 1))
        ok = nxt
    return (len(parts), len(pattern)) in ok


def class_names(ckpt: dict[str, Any], data_cfg: dict[str, Any], k: int) -> list[str]:
    """The checkpoint's class table, else the embedded dataset's, else the class folders of ``data.root``
    (a directory listing, nothing is imported), else the indices."""
    stored = ckpt.get("vitlab_classes")
    if stored and len(stored) == k:
        return [str(c) for c in stored]
    name = data_cfg.get("name")
    if name in EMBEDDED_CLASSES and len(EMBEDDED_CLASSES[name]) == k:
        return list(EMBEDDED_CLASSES[name])
    root = data_cfg.get("root")
    if name == "folder" and root:
        base = Path(str(root)) / "train" if (Path(str(root)) / "train").is_dir() else Path(str(root))
        if base.is_dir():
            found = sorted(e.name for e in base.iterdir() if e.is_dir() and not e.name.startswith("."))
            if len(found) == k:
                return found
    return [str(i) for i in range(k)]


def load_predictor(ckpt_path: str | Path):
    """Checkpoint -> (net in eval mode, eval transform, class names, loss kind). Only plain data is read."""
    from vitlab.data.transforms import build_transform  # lazy: a refusal answers before torch loads
    from vitlab.runs import read_run  # lazy: a refusal answers before torch loads

    run = read_run(ckpt_path, with_data=False)  # checked as data (vitlab.runs.read); the data is the user's images
    ckpt, hp, model_cfg = run.checkpoint, run.checkpoint.get("hyper_parameters") or {}, run.model
    if "family" not in model_cfg:
        raise ConfigError(f"ckpt_path={ckpt_path} holds no vitlab model config (hyper_parameters.model.family)")
    net = run.build_net()
    data_cfg = run.config.get("data") or {}
    img_size = int(data_cfg.get("eval_img_size") or data_cfg.get("img_size") or model_cfg.get("img_size", 224))
    transform = build_transform(
        str(data_cfg.get("eval_pipeline", "eval")), img_size, data_cfg.get("normalization", "paper"),
        crop_pct=float(data_cfg.get("crop_pct", 0.875)),
    )
    k = int(model_cfg["num_classes"])
    return net, transform, class_names(ckpt, data_cfg, k), str(hp.get("loss", "softmax"))


class _Images:
    """Decoded, transformed images; an unreadable one yields ``None`` (named and counted by the caller)."""

    def __init__(self, paths: Sequence[Path], transform) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from vitlab.data.files import load_image  # lazy: a refusal answers before torch loads

        try:
            return i, self.transform(load_image(self.paths[i])), None
        except Exception as e:  # noqa: BLE001 - any undecodable file is skipped, named in the report
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    import torch  # lazy: see load_predictor

    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, x, err in items if x is None]
    idx = [i for i, _ in ok]
    return idx, (torch.stack([x for _, x in ok]) if ok else None), bad


def predict_paths(net, transform, paths: Sequence[Path], loss: str = "softmax", topk: int = 5,
                  batch_size: int = 64, num_workers: int = 0, device: str = "auto", progress: bool = True):
    """Probabilities for every readable image: returns ``(rows, skipped)``; each row = (path, probs tensor)."""
    import torch  # lazy: see load_predictor
    from rich.progress import track  # lazy: 0.3 s of a refusal's start-up
    from torch.utils.data import DataLoader  # lazy: see load_predictor

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    net = net.to(dev)
    loader = DataLoader(_Images(paths, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=dev.type == "cuda")
    rows, skipped = [], []
    batches = track(loader, description="predicting", total=len(loader), disable=not progress, transient=True)
    with torch.inference_mode():
        for idx, x, bad in batches:
            skipped += [(paths[i], err) for i, err in bad]
            if x is None:
                continue
            logits = net(x.to(dev, non_blocking=True)).float()
            probs = torch.sigmoid(logits) if loss == "sigmoid" else torch.softmax(logits, dim=-1)
            rows += [(paths[i], p) for i, p in zip(idx, probs.cpu(), strict=True)]
    return rows, skipped


def format_rows(rows, classes: Sequence[str], topk: int, multilabel: bool, threshold: float) -> list[dict[str, Any]]:
    """One record per image: top-1 label, the top-k, and (``multilabel``) every class at >= ``threshold``,
    i.e. a ReaL-style label set (Beyer et al. 2020: an image may show several classes)."""
    k = min(int(topk), len(classes))
    out = []
    for path, p in rows:
        vals, inds = p.topk(k)
        rec = {"path": str(path), "pred": classes[int(inds[0])], "pred_index": int(inds[0]),
               "prob": round(float(vals[0]), 6),
               "topk": [{"label": classes[int(i)], "index": int(i), "prob": round(float(v), 6)}
                        for v, i in zip(vals, inds, strict=True)]}
        if multilabel:
            chosen = (p >= threshold).nonzero().flatten().tolist()
            rec["labels"] = [classes[i] for i in sorted(chosen, key=lambda i: -float(p[i]))]
        out.append(rec)
    return out


def write_predictions(records: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> Path:
    """``.json``: ``{"meta": ..., "predictions": [...]}``; anything else: CSV with '|'-joined top-k columns.

    A file is written next to ``out`` and renamed over it once complete, so a failed write leaves the old ``out``
    as it was; a device or pipe (``/dev/stdout``) is written directly."""
    if out.suffix.lower() == ".json":
        text = json.dumps({"meta": meta, "predictions": records}, indent=2)
    else:
        buf = io.StringIO(newline="")
        multilabel = any("labels" in r for r in records)
        cols = ["path", "pred", "prob", "pred_index", "topk_labels", "topk_probs"] + (["labels"] if multilabel else [])
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in records:
            row = {c: r[c] for c in ("path", "pred", "prob", "pred_index")}
            row["topk_labels"] = "|".join(t["label"] for t in r["topk"])
            row["topk_probs"] = "|".join(f"{t['prob']:.6f}" for t in r["topk"])
            if multilabel:
                row["labels"] = "|".join(r["labels"])
            w.writerow(row)
        text = buf.getvalue()
    if out.exists() and not out.is_file():  # /dev/stdout, a pipe: nothing to rename over
        with out.open("w", newline="") as f:
            f.write(text)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_out(out: Path) -> None:
    """Refuse an ``out=`` that cannot be a predictions file before any image is read."""
    if out.is_dir():
        raise ConfigError(f"out={out} is a folder; give a file in it: out={out / 'preds.csv'} (or .json)")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        bad = next(p for p in out.parents if p.exists() and not p.is_dir())
        raise ConfigError(f"out={out}: {bad} is a file, not a folder; choose another path for the predictions")


def save_predictions(records: list[dict[str, Any]], out: Path, meta: dict[str, Any], run_dir: Path) -> Path:
    """:func:`write_predictions` to ``out``; if that fails (a full disk, ``/dev/full``, no permission) the
    predictions are saved in the run directory instead and the error names both paths: nothing is lost."""
    try:
        return write_predictions(records, out, meta)
    except OSError as e:
        kept = run_dir / f"preds{out.suffix.lower() if out.suffix.lower() == '.json' else '.csv'}"
        if kept.resolve() == out.resolve():
            raise ConfigError(f"out={out}: cannot write the predictions ({e.strerror or e})") from e
        write_predictions(records, kept, meta)
        raise ConfigError(f"out={out}: cannot write the predictions ({e.strerror or e}); they are saved in {kept} "
                          "instead. Choose a writable file (out=<file>.csv or .json)") from e


@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Label ``cfg.input`` with ``cfg.ckpt_path``; write ``cfg.out``; return a summary."""
    if int(cfg.topk) < 1:
        raise ConfigError(f"topk={cfg.topk} must be >= 1")
    if not 0.0 < float(cfg.threshold) < 1.0:
        raise ConfigError(f"threshold={cfg.threshold} must be in (0, 1)")
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(cfg.paths.output_dir) / "preds.csv"
    check_out(out)
    paths = find_images(str(cfg.input))
    net, transform, classes, loss = load_predictor(cfg.ckpt_path)
    rows, skipped = predict_paths(net, transform, paths, loss, int(cfg.topk), int(cfg.batch_size),
                                  int(cfg.num_workers), str(cfg.device), bool(cfg.progress))
    for path, err in skipped:
        log.warning("skipped unreadable image %s (%s)", path, err)
    records = format_rows(rows, classes, int(cfg.topk), bool(cfg.multilabel), float(cfg.threshold))
    meta = {"ckpt_path": str(cfg.ckpt_path), "input": str(cfg.input), "classes": classes, "loss": loss,
            "labelled": len(records), "skipped": [{"path": str(p), "error": e} for p, e in skipped]}
    save_predictions(records, out, meta, Path(cfg.paths.output_dir))
    print(f"labelled {len(records)} image(s), skipped {len(skipped)} unreadable"
          + (f" ({', '.join(str(p) for p, _ in skipped[:5])}{', ...' if len(skipped) > 5 else ''})" if skipped else "")
          + f"\npredictions: {out}")
    return {"labelled": len(records), "skipped": len(skipped), "out": str(out)}


main = hydra_app("predict")(predict)


if __name__ == "__main__":
    main()

