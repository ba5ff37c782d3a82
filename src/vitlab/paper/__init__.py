"""The paper's tables, machine-readable: every number of Dosovitskiy et al. (ICLR 2021) that vitlab runs or
compares against, written once, each row with its source.

The configs read these numbers through one resolver, ``${vitlab.paper:<table>,<key>...,<field>}``
(e.g. ``${vitlab.paper:table3,${paper.row},imagenet21k,lr}``), so a recipe never spells a paper number
itself; ``tests/test_paper.py`` composes every recipe and compares it with these tables, and
``docs/protocols.md``'s "paper vs vitlab" tables are checked against them too.

Sources: arXiv 2010.11929v2 (App. B.1, Tables 2-6); google-research/vision_transformer ``vit_jax/``
(``configs/common.py``, ``input_pipeline.py``) and its issue #2; google-research/big_transfer
``bit_hyperrule.py``.  Model keys are vitlab's model config names (``conf/model/<name>.yaml``), data keys
vitlab's data config names (``jft300m`` has no loader: JFT-300M is not public).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from omegaconf import ListConfig

from vitlab.errors import PaperKeyError

# ---- Table 3: pretraining ------------------------------------------------------------------------
#: App. B.1 / Table 3 caption: what every pretraining row shares.
PRETRAIN = {
    "optimizer": "adam_decoupled",  # Adam b1 0.9 b2 0.999, weight decay decoupled (flax.optim.Adam), kernels only
    "betas": [0.9, 0.999],
    "global_batch_size": 4096,
    "warmup_steps": 10_000,
    "img_size": 224,
    "crop_scale": [0.05, 1.0],  # inception crop area (vit_jax input_pipeline.py)
    "linear_end": 1e-5,  # the lr a linear decay ends at
    "source": "Table 3 caption and App. B.1 (batch 4096, 10k warmup, 224 px, Adam 0.9/0.999); "
              "crop area: vit_jax/input_pipeline.py; linear decay to 1e-5: vision_transformer issue #2 and "
              "vit_jax/utils.py create_learning_rate_schedule(linear_end=1e-5)",
}

#: Table 3 rows as printed: (models, pretraining data, epochs (first = vitlab's default), base lr, decay,
#: weight decay, dropout).  Gradient clipping at global norm 1 is used for ImageNet only (App. B.1 text).
_TABLE3_PRINTED: list[tuple[tuple[str, ...], str, tuple[int, ...], float, str, float, float]] = [
    (("vit_b16", "vit_b32"), "jft300m", (7,), 8e-4, "linear", 0.1, 0.0),
    (("vit_l32",), "jft300m", (7,), 6e-4, "linear", 0.1, 0.0),
    (("vit_l16",), "jft300m", (7, 14), 4e-4, "linear", 0.1, 0.0),
    (("vit_h14",), "jft300m", (14,), 3e-4, "linear", 0.1, 0.0),
    (("bit_r50x1", "bit_r50x2"), "jft300m", (7,), 1e-3, "linear", 0.1, 0.0),
    (("bit_r101x1",), "jft300m", (7,), 8e-4, "linear", 0.1, 0.0),
    (("bit_r152x1", "bit_r152x2"), "jft300m", (7,), 6e-4, "linear", 0.1, 0.0),
    (("r50_vit_b16", "r50_vit_b32"), "jft300m", (7,), 8e-4, "linear", 0.1, 0.0),
    (("r50_vit_l32",), "jft300m", (7,), 2e-4, "linear", 0.1, 0.0),
    (("r50_vit_l16",), "jft300m", (7, 14), 4e-4, "linear", 0.1, 0.0),
    (("vit_b16", "vit_b32"), "imagenet21k", (90,), 1e-3, "linear", 0.03, 0.1),
    (("vit_l16", "vit_l32"), "imagenet21k", (30, 90), 1e-3, "linear", 0.03, 0.1),
    (("vit_b16", "vit_b32", "vit_l16", "vit_l32"), "imagenet", (300,), 3e-3, "cosine", 0.3, 0.1),
]
# Table 3's last row reads "ViT-*"; Table 5 reports no ViT-H/14 pretrained on ImageNet alone (every cell "-"), so
# vitlab has no such run: model=vit_h14 paper.row=vit_l16 runs that row's numbers on H/14 as vitlab's extra.

#: Runs Tables 5 and 6 show the paper made that Table 3 has no row (or epochs) for: (model, data, epochs, Table 3
#: row whose numbers they take, why).  Which row's lr a run used is vitlab's reading: the paper does not say.
_BEYOND_TABLE3: list[tuple[str, str, tuple[int, ...], int, str]] = [
    ("bit_r152x2", "jft300m", (7, 14), 7, "14 epochs: Table 6 row 12"),
    ("bit_r200x3", "jft300m", (14,), 7, "not in Table 3: Table 6 row 13 (14 epochs); lr, weight decay of Table 3's "
                                        "largest-ResNet row (vitlab's reading)"),
    ("vit_h14", "imagenet21k", (30, 90), 12, "not in Table 3: Table 5's ImageNet-21k ViT-H/14 column; lr, weight "
                                            "decay, dropout, epochs of Table 3's ViT-L row (vitlab's reading)"),
]
_PRINTED_MODELS = {"vit_b16": "ViT-B/{16,32}", "vit_l32": "ViT-L/32", "vit_l16": "ViT-L/16", "vit_h14": "ViT-H/14"}

#: Loss of the ImageNet-21k release: sigmoid cross-entropy, head bias -10, pre-logits of the model's width.  These are
#: the authors' statements in the official repository's issues, not the paper's: the paper states no loss for any row.
#: Sigmoid: vision_transformer issue #34 ("We use sigmoid cross entropy", asked about ImageNet-21k and JFT-300M); head
#: bias -10 and the pre-logits: issue #2 (the ImageNet-21k ViT-B/16 release).  vitlab sets them in the ImageNet-21k
#: recipe only and keeps softmax for the JFT and ImageNet rows (module.loss=sigmoid follows issue #34 for JFT too).
#: Label smoothing stays off (module default 0): the paper gives no value, and §4.3 tuned it, with weight decay and
#: dropout, for the ImageNet runs ("we optimize three basic regularization parameters").
I21K_HEAD = {"loss": "sigmoid", "head_bias_init": -10.0, "label_smoothing": 0.0,
             "source": "the authors in google-research/vision_transformer issues #34 (sigmoid loss) and #2 (head bias "
                       "-10), not the paper; label smoothing off: paper §4.3 (tuned for the ImageNet runs only)"}


def _expand_table3() -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for i, (models, data, epochs, lr, decay, wd, dropout) in enumerate(_TABLE3_PRINTED, 1):
        for m in models:
            rows[(m, data)] = {
                "epochs": epochs[0], "epochs_options": list(epochs), "epochs_longest": max(epochs), "lr": lr,
                "decay": decay,
                "weight_decay": wd, "dropout": dropout, "grad_clip": 1.0 if data == "imagenet" else None,
                "source": f"Table 3 row {i} ({', '.join(models)} on {data}); grad clip: App. B.1 text",
            }
    for model, data, epochs, i, why in _BEYOND_TABLE3:
        base = rows[(_TABLE3_PRINTED[i - 1][0][0], data)]
        rows[(model, data)] = {**base, "epochs": epochs[0], "epochs_options": list(epochs), "epochs_longest": max(epochs),
                               "source": f"{why}; {base['source']}"}
    return rows


#: (model, pretraining data) -> the Table 3 numbers
TABLE3: dict[tuple[str, str], dict[str, Any]] = _expand_table3()
PRETRAIN_DATA = ("imagenet", "imagenet21k", "jft300m")

# ---- Table 4: fine-tuning ------------------------------------------------------------------------
#: App. B.1.1 / Table 4 caption and vit_jax/configs/common.py: what every fine-tuning run shares.
FINETUNE = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "global_batch_size": 512,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "decay": "cosine",
    "img_size": 384,
    "warmup_steps": 500,
    "base_lr": 0.03,
    "lr_grid": [0.001, 0.003, 0.01, 0.03],  # Table 4's grid for every dataset but ImageNet
    "eval_resize": "square",  # eval: resize the whole image to img_size x img_size, no centre crop
    "crop_scale": [0.05, 1.0],  # train: inception crop of this area (ratio 3/4-4/3) to img_size + flip
    "drop_remainder": True,  # train: the last partial batch is dropped
    "source": "Table 4 caption / App. B.1.1 (SGD 0.9, batch 512, no wd, clip 1, cosine, 384 px; lr grid of its "
              "CIFAR, Pets and Flowers rows); warmup 500, base lr 0.03: vit_jax/configs/common.py; square eval resize, inception crop area "
              "0.05-1 + flip, drop_remainder=True: vit_jax/input_pipeline.py",
}
_GRID = FINETUNE["lr_grid"]
#: fine-tuning data -> Table 4 (steps, lr grid) and App. B.1.1 (dev split held out of train)
TABLE4: dict[str, dict[str, Any]] = {
    "imagenet": {"steps": 20_000, "lr_grid": [0.003, 0.01, 0.03, 0.06], "dev_split": 0.01,
                 "source": "Table 4 row ImageNet; dev split 1%: App. B.1.1, vit_jax train[:99%]"},
    "cifar10": {"steps": 10_000, "lr_grid": _GRID, "dev_split": 0.02,
                "source": "Table 4 row CIFAR-10; dev split 2%: App. B.1.1, vit_jax train[:98%]"},
    "cifar100": {"steps": 10_000, "lr_grid": _GRID, "dev_split": 0.02,
                 "source": "Table 4 row CIFAR-100; dev split 2%: App. B.1.1, vit_jax train[:98%]"},
    "pets": {"steps": 500, "lr_grid": _GRID, "dev_split": 0.1, "warmup_steps": 100,
             "source": "Table 4 row Oxford-IIIT Pets; dev split 10%: App. B.1.1; warmup 100 of 500 steps: "
                       "big_transfer bit_hyperrule.py (datasets < 20k images)"},
    "flowers102": {"steps": 500, "lr_grid": _GRID, "dev_split": 0.1, "warmup_steps": 100,
                   "source": "Table 4 row Oxford Flowers-102; dev split 10%: App. B.1.1; warmup 100 of 500 steps: "
                             "big_transfer bit_hyperrule.py (datasets < 20k images)"},
}

# ---- BiT-HyperRule: the ResNets' second fine-tuning recipe (App. B.1.1) ------------------------------------
#: App. B.1.1: for ResNets the paper also runs "the setup of Kolesnikov et al." (BiT-HyperRule) and keeps the better
#: of it and Table 4's sweep.  The rule as google-research/big_transfer states it (commit 140de6e): bit_hyperrule.py
#: (schedule by training-split size, resolution by image area, MixUp by size), bit_pytorch/train.py and
#: bit_common.py (SGD momentum 0.9, no weight decay, no clipping, lr 0.003, batch 512, zero head, lr / 10 at each
#: inner support, train: resize to precrop x precrop, random crop, flip; eval: resize to crop x crop).  The BiT paper
#: (§3.3; big_transfer issue #23) says 448 -> 384 for large images, the released bit_hyperrule.py 512 -> 480:
#: vitlab follows the code.
BIT_HYPERRULE = {
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0, "grad_clip": None, "base_lr": 0.003,
    "global_batch_size": 512,
    # get_schedule: (training images below, [warmup end, decay, decay, decay, last step]); None = any size
    "schedules": [(20_000, [100, 200, 300, 400, 500]), (500_000, [500, 3000, 6000, 9000, 10_000]),
                  (None, [500, 6000, 12_000, 18_000, 20_000])],
    "decay_factor": 0.1,  # get_lr: "Staircase decays by factor of 10"
    "mixup_alpha": 0.1, "mixup_min_size": 20_000,  # get_mixup: 0.0 if dataset_size < 20_000 else 0.1
    "small_area": 96 * 96, "resolution_small": [160, 128], "resolution_large": [512, 480],  # get_resolution
    # known_dataset_sizes, by vitlab data name: the (H, W) get_resolution reads per dataset
    "image_hw": {"cifar10": [32, 32], "cifar100": [32, 32], "pets": [224, 224], "flowers102": [224, 224],
                 "imagenet": [224, 224]},
    "source": "google-research/big_transfer bit_hyperrule.py (get_schedule, get_lr, get_mixup, get_resolution, "
              "known_dataset_sizes) and bit_pytorch/train.py, bit_common.py (SGD 0.9, lr 0.003, batch 512)",
}


def bit_hyperrule(train_size: int, image_hw: Iterable[int]) -> dict[str, Any]:
    """BiT-HyperRule's settings for a training split of ``train_size`` images of ``image_hw`` (H, W) pixels:
    ``steps``, ``warmup_steps``, ``decay_at`` (the inner supports as fractions of ``steps``), ``precrop``,
    ``crop``, ``mixup_alpha``, ``lr`` (:data:`BIT_HYPERRULE`)."""
    r = BIT_HYPERRULE
    supports = next(s for limit, s in r["schedules"] if limit is None or train_size < limit)
    h, w = image_hw
    precrop, crop = r["resolution_small"] if h * w < r["small_area"] else r["resolution_large"]
    return {"steps": supports[-1], "warmup_steps": supports[0], "decay_at": [s / supports[-1] for s in supports[1:-1]],
            "precrop": precrop, "crop": crop, "lr": r["base_lr"],
            "mixup_alpha": 0.0 if train_size < r["mixup_min_size"] else r["mixup_alpha"]}


# ---- App. B.1.1 VTAB-1k and B.1.2 masked patch prediction ----------------------------------------
VTAB = {"lr": 0.01, "steps": 2_500, "global_batch_size": 512, "img_size": 384, "warmup_steps": 500,
        "lr_grid": _GRID,
        "source": "App. B.1.1 (lr 0.01, 2,500 steps, 384 px for every task; batch 512 as all fine-tuning); "
                  "warmup 500: vit_jax/configs/common.py; lr_grid = Table 4's grid (vitlab's optional sweep)"}
MPP = {"steps": 1_000_000, "global_batch_size": 4096, "lr": 2e-4, "warmup_steps": 10_000, "decay": "cosine",
       "betas": [0.9, 0.999], "img_size": 224,
       "source": "App. B.1.2 (1M steps, batch 4096, Adam lr 2e-4, 10k warmup, cosine); 224 px: Table 3 caption"}

# ---- results: Table 6, Table 5, Table 2 -----------------------------------------------------------
TRANSFER_DATA = ("imagenet", "imagenet_real", "cifar10", "cifar100", "pets", "flowers102")
_T6 = [  # model, epochs, ImageNet, ReaL, CIFAR-10, CIFAR-100, Pets, Flowers, exaFLOPs
    ("vit_b32", 7, 80.73, 86.27, 98.61, 90.49, 93.40, 99.27, 55),
    ("vit_b16", 7, 84.15, 88.85, 99.00, 91.87, 95.80, 99.56, 224),
    ("vit_l32", 7, 84.37, 88.28, 99.19, 92.52, 95.83, 99.45, 196),
    ("vit_l16", 7, 86.30, 89.43, 99.38, 93.46, 96.81, 99.66, 783),
    ("vit_l16", 14, 87.12, 89.99, 99.38, 94.04, 97.11, 99.56, 1567),
    ("vit_h14", 14, 88.08, 90.36, 99.50, 94.71, 97.11, 99.71, 4262),
    ("bit_r50x1", 7, 77.54, 84.56, 97.67, 86.07, 91.11, 94.26, 50),
    ("bit_r50x2", 7, 82.12, 87.94, 98.29, 89.20, 93.43, 97.02, 199),
    ("bit_r101x1", 7, 80.67, 87.07, 98.48, 89.17, 94.08, 95.95, 96),
    ("bit_r152x1", 7, 81.88, 87.96, 98.82, 90.22, 94.17, 96.94, 141),
    ("bit_r152x2", 7, 84.97, 89.69, 99.06, 92.05, 95.37, 98.62, 563),
    ("bit_r152x2", 14, 85.56, 89.89, 99.24, 91.92, 95.75, 98.75, 1126),
    ("bit_r200x3", 14, 87.22, 90.15, 99.34, 93.53, 96.32, 99.04, 3306),
    ("r50_vit_b32", 7, 84.90, 89.15, 99.01, 92.24, 95.75, 99.46, 106),
    ("r50_vit_b16", 7, 85.58, 89.65, 99.14, 92.63, 96.65, 99.40, 274),
    ("r50_vit_l32", 7, 85.68, 89.04, 99.24, 92.93, 96.97, 99.43, 246),
    ("r50_vit_l16", 7, 86.60, 89.72, 99.18, 93.64, 97.03, 99.40, 859),
    ("r50_vit_l16", 14, 87.12, 89.76, 99.31, 93.89, 97.36, 99.11, 1668),
]
#: images in one epoch of JFT-300M (§4.1: "JFT-300M ... with 18k classes and 303M high-resolution images"):
#: Table 6's exaFLOPs = training FLOPs per image x JFT_IMAGES x epochs (tests/test_flops.py)
JFT_IMAGES = 303_000_000
#: Table 6 (JFT-300M pretraining, fine-tuned at 384 px): (model, epochs) -> accuracies (%) and exaFLOPs
TABLE6: dict[tuple[str, int], dict[str, Any]] = {
    (m, ep): {"pretrain_data": "jft300m", **dict(zip(TRANSFER_DATA, accs, strict=True)), "exaflops": ef,
              "source": f"Table 6 row {i}"}
    for i, (m, ep, *accs, ef) in enumerate(_T6, 1)
}

#: Table 6's runs as sweep lists (``sweep=model_scaling`` / ``sweep=model_scaling_longer``): every model once, in the
#: table's order, and the models it also trained for longer (L/16, R152x2, R50+L/16: 7 and 14 epochs)
TABLE6_RUNS: dict[str, tuple[str, ...]] = {
    "models": tuple(dict.fromkeys(m for m, _ in TABLE6)),
    "longer": tuple(dict.fromkeys(m for m, ep in TABLE6 if ep > min(e for mm, e in TABLE6 if mm == m))),
}

#: Table 5 (App. C): ViT fine-tuned at 384 px (no Polyak averaging), by pretraining data, exactly as printed:
#: (pretraining data, fine-tuning dataset, ViT-B/16, ViT-B/32, ViT-L/16, ViT-L/32, ViT-H/14); None is the paper's
#: own empty cell ("–": the paper reports no ViT-H/14 pretrained on ImageNet alone).
TABLE5_MODELS = ("vit_b16", "vit_b32", "vit_l16", "vit_l32", "vit_h14")
_T5 = [
    ("imagenet", "cifar10", 98.13, 97.77, 97.86, 97.94, None),
    ("imagenet", "cifar100", 87.13, 86.31, 86.35, 87.07, None),
    ("imagenet", "imagenet", 77.91, 73.38, 76.53, 71.16, None),
    ("imagenet", "imagenet_real", 83.57, 79.56, 82.19, 77.83, None),
    ("imagenet", "flowers102", 89.49, 85.43, 89.66, 86.36, None),
    ("imagenet", "pets", 93.81, 92.04, 93.64, 91.35, None),
    ("imagenet21k", "cifar10", 98.95, 98.79, 99.16, 99.13, 99.27),
    ("imagenet21k", "cifar100", 91.67, 91.97, 93.44, 93.04, 93.82),
    ("imagenet21k", "imagenet", 83.97, 81.28, 85.15, 80.99, 85.13),
    ("imagenet21k", "imagenet_real", 88.35, 86.63, 88.40, 85.65, 88.70),
    ("imagenet21k", "flowers102", 99.38, 99.11, 99.61, 99.19, 99.51),
    ("imagenet21k", "pets", 94.43, 93.02, 94.73, 93.09, 94.82),
    ("jft300m", "cifar10", 99.00, 98.61, 99.38, 99.19, 99.50),
    ("jft300m", "cifar100", 91.87, 90.49, 94.04, 92.52, 94.55),
    ("jft300m", "imagenet", 84.15, 80.73, 87.12, 84.37, 88.04),
    ("jft300m", "imagenet_real", 88.85, 86.27, 89.99, 88.28, 90.33),
    ("jft300m", "flowers102", 99.56, 99.27, 99.56, 99.45, 99.68),
    ("jft300m", "pets", 95.80, 93.40, 97.11, 95.83, 97.56),
]
_DATA_LABELS = {"imagenet": "ImageNet", "imagenet21k": "ImageNet-21k", "jft300m": "JFT-300M",
                "imagenet_real": "ImageNet ReaL", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                "pets": "Oxford-IIIT Pets", "flowers102": "Oxford Flowers-102", "vtab": "VTAB (19 tasks)"}
_MODEL_LABELS = {"vit_b16": "ViT-B/16", "vit_b32": "ViT-B/32", "vit_l16": "ViT-L/16", "vit_l32": "ViT-L/32",
                 "vit_h14": "ViT-H/14", "bit_r50x1": "ResNet50x1", "bit_r50x2": "ResNet50x2",
                 "bit_r101x1": "ResNet101x1", "bit_r152x1": "ResNet152x1", "bit_r152x2": "ResNet152x2",
                 "bit_r200x3": "ResNet200x3", "bit_r152x4": "BiT-L R152x4", "r50_vit_b32": "R50x1+ViT-B/32",
                 "r50_vit_b16": "R50x1+ViT-B/16", "r50_vit_l32": "R50x1+ViT-L/32", "r50_vit_l16": "R50x1+ViT-L/16"}
#: Table 5's JFT ViT-H/14 column is not Table 6's H/14 row (ImageNet 88.04 vs 88.08, ReaL 90.33 vs 90.36, CIFAR-100
#: 94.55 vs 94.71, Pets 97.56 vs 97.11, Flowers 99.68 vs 99.71): every number says which table it is from.
_T5_VS_T6 = {("vit_h14", "jft300m"): "not Table 6: its 14-epoch H/14 row differs in 5 of 6 cells"}


def _table5() -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for data, dataset, *cells in _T5:
        for model, acc in zip(TABLE5_MODELS, cells, strict=True):
            if acc is not None:
                rows.setdefault((model, data), {
                    "source": f"Table 5, {_MODEL_LABELS[model]}, {_DATA_LABELS[data]} rows"
                              + (f" ({_T5_VS_T6[(model, data)]})" if (model, data) in _T5_VS_T6 else "")})[dataset] = acc
    return rows


#: Table 5: (model, pretraining data) -> accuracy (%) per fine-tuning dataset; JFT runs are the longest ones
#: (its L/16 column is Table 6's 14-epoch row).  84 cells; no (vit_h14, imagenet) entry: the paper has none.
TABLE5: dict[tuple[str, str], dict[str, Any]] = _table5()

#: Table 2 (state of the art; ImageNet fine-tuned at 512/518 px with Polyak averaging): (model, pretraining
#: data) -> accuracy (%), and TPUv3-core-days.  Noisy Student is not a vitlab model and is left out.
_T2 = [  # model, pretraining data, ImageNet, ReaL, CIFAR-10, CIFAR-100, Pets, Flowers, VTAB, TPUv3-core-days, column
    ("vit_h14", "jft300m", 88.55, 90.72, 99.50, 94.55, 97.56, 99.68, 77.63, 2500, "ViT-H/14 (JFT)"),
    ("vit_l16", "jft300m", 87.76, 90.54, 99.42, 93.90, 97.32, 99.74, 76.28, 680, "ViT-L/16 (JFT)"),
    ("vit_l16", "imagenet21k", 85.30, 88.62, 99.15, 93.25, 94.67, 99.61, 72.72, 230, "ViT-L/16 (I21k)"),
    ("bit_r152x4", "jft300m", 87.54, 90.54, 99.37, 93.51, 96.62, 99.63, 76.29, 9900, "BiT-L (ResNet152x4)"),
]
TABLE2: dict[tuple[str, str], dict[str, Any]] = {
    (m, data): {**dict(zip((*TRANSFER_DATA, "vtab"), accs, strict=True)), "tpu_core_days": days,
                "source": f"Table 2, column {column}"}
    for m, data, *accs, days, column in _T2
}


# ---- Appendix D: the ablations ------------------------------------------------------------------------
#: Table 7 (App. D.1): ResNets pretrained 7 epochs on JFT-300M with Adam vs SGD, then fine-tuned (%), keyed by the
#: runs' (paper.row, optim.name): Adam is vitlab's ``adam_decoupled`` (the pretraining optimiser of Table 3)
TABLE7: dict[tuple[str, str], dict[str, Any]] = {
    (m, opt): {**dict(zip(("imagenet", "cifar10", "cifar100", "pets", "flowers102", "average"), accs, strict=True)),
               "source": f"Table 7, column {label}"}
    for m, opt, label, *accs in [
        ("bit_r50x1", "adam_decoupled", "R50 Adam", 77.54, 97.67, 86.07, 91.11, 94.26, 89.33),
        ("bit_r50x1", "sgd", "R50 SGD", 78.24, 97.46, 85.17, 91.00, 92.06, 88.79),
        ("bit_r152x2", "adam_decoupled", "R152x2 Adam", 84.97, 99.06, 92.05, 95.37, 98.62, 94.01),
        ("bit_r152x2", "sgd", "R152x2 SGD", 84.37, 99.07, 91.06, 94.79, 99.32, 93.72),
    ]
}
#: Table 8 (App. D.4): ViT-B/16 ImageNet 5-shot linear accuracy by (model.pos_embed, model.pos_embed_at);
#: the paper's "N/A" cells are absent
TABLE8: dict[tuple[str, str], dict[str, Any]] = {
    (pe, at): {"fewshot_5": acc, "source": f"Table 8, row {pe}, column {at}"}
    for pe, at, acc in [
        ("none", "stem", 0.61382), ("1d", "stem", 0.64206), ("1d", "every_layer", 0.63964),
        ("1d", "every_layer_shared", 0.64292), ("2d", "stem", 0.64001), ("2d", "every_layer", 0.64046),
        ("2d", "every_layer_shared", 0.64022), ("relative", "stem", 0.64032),
    ]
}
#: Table 8's cells as one sweep value each, ``paper.cell=<pos_embed>-<pos_embed_at>`` (experiment=paper/ablate_pos_embed)
TABLE8_CELLS = {f"{pe}-{at}": {"pos_embed": pe, "pos_embed_at": at} for pe, at in TABLE8}


#: Figure 9 (App. D.3): [class] token vs global average pooling, ViT-B/16, ImageNet 5-shot linear accuracy over
#: pretraining epochs: the learning rates of its legend ("CLS-Token, lr=8e-4", "GAP, lr=8e-4", "GAP, lr=3e-4") and
#: what its curves show (a figure, no table: no accuracies). GAP needs the lower lr; then both work equally well.
FIGURE9 = {"runs": {("token", 8e-4): "the reference curve",
                    ("gap", 8e-4): "clearly below the token curve (GAP at the token's lr)",
                    ("gap", 3e-4): "about equal to the token curve"},
           "lrs": [8e-4, 3e-4],
           "source": "Figure 9 legend and curves (App. D.3)"}

#: what each Appendix D result measures, and the experiment that sweeps it (``vitlab.protocols.ablation``)
APPENDIX_D = {
    "table7": {"title": "App. D.1 / Table 7: ResNet pretraining with Adam vs SGD",
               "metric": "fine-tuned top-1 %, average of 5 datasets", "keys": ("paper.row", "optim.name"),
               "models": ("bit_r50x1", "bit_r152x2"), "experiment": "paper/ablate_resnet_optimizer"},
    "figure9": {"title": "App. D.3 / Figure 9: [class] token vs global average pooling",
                "metric": "ImageNet 5-shot linear accuracy (a curve; no number printed)",
                "keys": ("model.classifier", "optim.lr"), "models": ("vit_b16",), "experiment": "paper/ablate_classifier"},
    "table8": {"title": "App. D.4 / Table 8: position embeddings", "metric": "ImageNet 5-shot linear accuracy",
               "keys": ("model.pos_embed", "model.pos_embed_at"), "models": ("vit_b16",),
               "experiment": "paper/ablate_pos_embed"},
}


def _appendix_d_rows(table: str) -> dict[tuple[Any, ...], tuple[str, str]]:
    """(key) -> (the paper's number or finding, its source) for one Appendix D result."""
    if table == "table7":
        return {k: (f"{r['average']:.2f}", r["source"]) for k, r in TABLE7.items()}
    if table == "table8":
        return {k: (f"{r['fewshot_5']:.5f}", r["source"]) for k, r in TABLE8.items()}
    if table == "figure9":
        return {k: (what, FIGURE9["source"]) for k, what in FIGURE9["runs"].items()}
    raise PaperKeyError(f"no Appendix D result {table!r}; they are {list(APPENDIX_D)}")


def table_d_markdown(table: str, runs: dict[tuple[Any, ...], float] | None = None,
                     measured: str = "vitlab") -> str:
    """Table 7, Table 8 or Figure 9's runs as markdown, one row per run of the paper, with vitlab's own number
    (``runs``, keyed as the table's rows, see :data:`APPENDIX_D` ``keys``) beside it under the header ``measured``.
    A run vitlab measured that the paper did not make is added as a row marked "not in the paper"."""
    about = APPENDIX_D.get(table) or {}
    rows = _appendix_d_rows(table)
    runs = dict(runs or {})
    keys = list(rows) + [k for k in runs if k not in rows]
    out = [f"| {' / '.join(f'`{k}`' for k in about['keys'])} | paper: {about['metric']} | {measured} | source |",
           "|---|---|---|---|"]
    for key in keys:
        paper_cell, source = rows.get(key, ("–", "not in the paper (vitlab's extra run)"))
        mine = runs.get(key)
        out.append(f"| {' / '.join(_fmt(k) for k in key)} | {paper_cell} | {'–' if mine is None else f'{mine:.4f}'} "
                   f"| {source} |")
    return "\n".join([about["title"], "", *out]) + "\n"


# ---- lookups ------------------------------------------------------------------------------------
def pretrain_row(model: str, data: str) -> dict[str, Any]:
    """Table 3's row for ``model`` pretrained on ``data``; a pair the paper never trained lists the rows."""
    if data not in PRETRAIN_DATA:
        raise PaperKeyError(f"pretraining data {data!r} is not in Table 3; it has {list(PRETRAIN_DATA)}")
    if (model, data) not in TABLE3:
        rows = [m for (m, d) in TABLE3 if d == data]
        raise PaperKeyError(
            f"the paper did not pretrain {model!r} on {data} (Table 3 has, for {data}: {', '.join(rows)}). "
            f"Pick one of those with model=<name>, or keep your model and run one row's numbers on it with "
            f"paper.row=<name> (e.g. paper.row={rows[0]})"
        )
    return {**TABLE3[(model, data)]}


def finetune_row(data: str) -> dict[str, Any]:
    """Table 4's row for fine-tuning on ``data``, with the shared fine-tuning settings filled in."""
    if data not in TABLE4:
        raise PaperKeyError(f"Table 4 has no fine-tuning row for {data!r}; it has {list(TABLE4)}")
    return {**FINETUNE, **TABLE4[data], "source": TABLE4[data]["source"]}


def paper_results(model: str, pretrain_data: str, epochs: int | None = None) -> dict[str, Any] | None:
    """The paper's fine-tuned accuracies (384 px, no Polyak averaging) for a (model, pretraining data[, epochs])
    run, or None: Table 6's row for a JFT run with the given epochs; else Table 5 (whose JFT columns are the
    longest runs); else, for a JFT model Table 5 lacks (ResNets, hybrids), Table 6's shortest run."""
    jft_runs = sorted(ep for (m, ep) in TABLE6 if m == model) if pretrain_data == "jft300m" else []
    if epochs in jft_runs:
        return TABLE6[(model, epochs)]
    if (model, pretrain_data) in TABLE5:
        return TABLE5[(model, pretrain_data)]
    return TABLE6[(model, jft_runs[0])] if jft_runs else None


TABLES: dict[str, Any] = {
    "pretrain": PRETRAIN, "table3": TABLE3, "finetune": FINETUNE, "table4": TABLE4, "vtab": VTAB, "mpp": MPP,
    "table6": TABLE6, "table5": TABLE5, "table2": TABLE2, "i21k_head": I21K_HEAD, "figure9": FIGURE9,
    "table8": TABLE8_CELLS,
    "bit_hyperrule": BIT_HYPERRULE,
}


def lookup(table: str, *keys: Any) -> Any:
    """``lookup("table3", "vit_b16", "imagenet21k", "lr")`` -> 1e-3; the last key is the field.

    Table 3 and Table 4 go through :func:`pretrain_row` / :func:`finetune_row` (shared settings included,
    missing rows listed); errors name the table and what it has.
    """
    keys = tuple(str(k) for k in keys)
    if table == "table3":
        if len(keys) != 3:
            raise PaperKeyError(f"table3 lookups take (model, data, field), got {keys}")
        row = {**PRETRAIN, **pretrain_row(keys[0], keys[1])}
        field = keys[2]
    elif table == "table4":
        if len(keys) != 2:
            raise PaperKeyError(f"table4 lookups take (data, field), got {keys}")
        row, field = finetune_row(keys[0]), keys[1]
    elif table == "table6":  # the runs of Table 6 as sweep lists: models (each at its first run's epochs), and
        if len(keys) != 1 or keys[0] not in TABLE6_RUNS:   # the models it trained a second, longer time
            raise PaperKeyError(f"table6 lookups take one of {sorted(TABLE6_RUNS)}, got {keys}")
        return list(TABLE6_RUNS[keys[0]])
    elif table == "table8":  # Table 8's cells: ("cells",) -> the sweep list; (cell, pos_embed | pos_embed_at)
        if keys == ("cells",):
            return list(TABLE8_CELLS)
        if len(keys) != 2 or keys[0] not in TABLE8_CELLS:
            raise PaperKeyError(f"table8 lookups take (cell, field) with a cell of {list(TABLE8_CELLS)}, or (cells,); "
                                f"got {keys}")
        row, field = TABLE8_CELLS[keys[0]], keys[1]
    elif table in ("pretrain", "finetune", "vtab", "mpp", "i21k_head", "figure9", "bit_hyperrule"):
        if len(keys) != 1:
            raise PaperKeyError(f"{table} lookups take (field,), got {keys}")
        row, field = TABLES[table], keys[0]
    else:
        raise PaperKeyError(f"no paper table {table!r} for configs; they read {sorted(TABLES)}")
    if field not in row:
        raise PaperKeyError(f"{table} {'/'.join(keys[:-1]) or ''} has no field {field!r}; it has {sorted(row)}")
    value = row[field]
    return list(value) if isinstance(value, (list, tuple)) else value


def sweep_values(values: Iterable[Any]) -> str:
    """A Hydra sweep string (``0.003,0.01,0.03,0.06``) from a list of numbers."""
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def resolver(table: str, *keys: Any) -> Any:
    """``${vitlab.paper:table3,vit_b16,imagenet21k,lr}``: a paper number inside a config (a list comes back as a
    ListConfig, which ``OmegaConf.resolve`` and ``--cfg job`` can print)."""
    value = lookup(table, *keys)
    if isinstance(value, list):
        return ListConfig(value)
    return value


def sweep_resolver(table: str, *keys: Any) -> str:
    """``${vitlab.paper_sweep:table4,imagenet,lr_grid}``: a paper grid as a Hydra sweep string."""
    return sweep_values(lookup(table, *keys))


RESOLVERS = {"vitlab.paper": resolver, "vitlab.paper_sweep": sweep_resolver}


# ---- docs/protocols.md "paper vs vitlab" tables --------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(_fmt(x) for x in v) + "}"
    return str(v)


def markdown_tables() -> str:
    """The "paper vs vitlab" tables of docs/protocols.md, from these tables (``python -m vitlab.paper``);
    ``tests/test_paper.py`` checks the doc holds every line of them."""
    out = ["### Pretraining: `experiment=paper/pretrain_<data> model=<row>` (Table 3)", "",
           "| models (`model=`) | data | epochs (`trainer.max_epochs`) | base lr (`optim.lr`) | decay (`optim.decay`) "
           "| weight decay (`optim.weight_decay`) | dropout (`model.pos_drop_rate`, `model.proj_drop_rate`) "
           "| clip (`optim.grad_clip`) | source |",
           "|---|---|---|---|---|---|---|---|---|"]
    for i, (models, data, epochs, lr, decay, wd, dropout) in enumerate(_TABLE3_PRINTED, 1):
        clip = 1.0 if data == "imagenet" else None
        out.append(f"| {', '.join(models)} | {data} | {' or '.join(map(str, epochs))} | {_fmt(lr)} | {decay} | "
                   f"{_fmt(wd)} | {_fmt(dropout)} | {_fmt(clip)} | Table 3 row {i} |")
    for model, data, epochs, i, why in _BEYOND_TABLE3:  # runs Tables 5/6 show, beyond Table 3's rows
        r = TABLE3[(model, data)]
        out.append(f"| {model} | {data} | {' or '.join(map(str, epochs))} | {_fmt(r['lr'])} | {r['decay']} | "
                   f"{_fmt(r['weight_decay'])} | {_fmt(r['dropout'])} | {_fmt(r['grad_clip'])} | {why}; "
                   f"Table 3 row {i}'s numbers |")
    out += ["", "| shared by every row | paper | vitlab key | source |", "|---|---|---|---|"]
    keys = {"optimizer": "optim.name", "betas": "optim.betas", "global_batch_size": "data.global_batch_size",
            "warmup_steps": "optim.warmup", "img_size": "data.img_size", "crop_scale": "data.train_crop_scale",
            "linear_end": "optim.linear_end"}
    out += [f"| {k} | {_fmt(PRETRAIN[k])} | `{v}` | {PRETRAIN['source']} |" for k, v in keys.items()]
    out += ["", "### Fine-tuning: `experiment=paper/finetune_<data>` (Table 4)", "",
            "| data | steps (`trainer.max_steps`) | lr grid (`hydra.sweeper.params`) | dev split (`data.val_fraction`) "
            "| warmup (`optim.warmup`) | source |", "|---|---|---|---|---|---|"]
    for d in TABLE4:
        r = finetune_row(d)
        out.append(f"| {d} | {r['steps']} | {_fmt(r['lr_grid'])} | {_fmt(r['dev_split'])} | {r['warmup_steps']} | "
                   f"{r['source']} |")
    out += ["", "| shared by every dataset | paper | vitlab key | source |", "|---|---|---|---|"]
    keys = {"optimizer": "optim.name", "momentum": "optim.momentum", "global_batch_size": "data.global_batch_size",
            "weight_decay": "optim.weight_decay", "grad_clip": "optim.grad_clip", "decay": "optim.decay",
            "img_size": "data.img_size", "eval_resize": "data.eval_resize", "crop_scale": "data.train_crop_scale",
            "drop_remainder": "data.drop_last"}
    out += [f"| {k} | {_fmt(FINETUNE[k])} | `{v}` | {FINETUNE['source']} |" for k, v in keys.items()]
    out += ["", "### BiT-HyperRule for ResNets: `python -m vitlab.finetune` (App. B.1.1)", "",
            "| training images | steps (`trainer.max_steps`) | warmup (`optim.warmup`) | lr / 10 after steps "
            "(`optim.decay_at`) | MixUp (`module.mixup_alpha`) | source |", "|---|---|---|---|---|---|"]
    for limit, supports in BIT_HYPERRULE["schedules"]:
        rule = bit_hyperrule(limit - 1 if limit else 10**9, (224, 224))
        out.append(f"| {f'< {limit}' if limit else 'more'} | {rule['steps']} | {rule['warmup_steps']} | "
                   f"{', '.join(map(str, supports[1:-1]))} | {_fmt(rule['mixup_alpha'])} | {BIT_HYPERRULE['source']} |")
    out += ["", "| shared by every size | paper | vitlab key | source |", "|---|---|---|---|"]
    keys = {"optimizer": "optim.name", "momentum": "optim.momentum", "weight_decay": "optim.weight_decay",
            "grad_clip": "optim.grad_clip", "base_lr": "optim.lr", "global_batch_size": "data.global_batch_size",
            "decay_factor": "optim.decay_factor", "resolution_small": "[precrop, crop] below 96x96: data.crop_pct, "
            "data.img_size", "resolution_large": "[precrop, crop] otherwise: data.crop_pct, data.img_size"}
    out += [f"| {k} | {_fmt(BIT_HYPERRULE[k])} | `{v}` | {BIT_HYPERRULE['source']} |" for k, v in keys.items()]
    for title, table, keys in (
        ("### VTAB-1k: `experiment=paper/vtab`, `python -m vitlab.vtab` (App. B.1.1)", VTAB,
         {"lr": "optim.lr / vtab.lr", "steps": "trainer.max_steps / vtab.steps",
          "global_batch_size": "data.global_batch_size", "img_size": "data.img_size / vtab.resolution",
          "warmup_steps": "optim.warmup", "lr_grid": "vtab.lr_grid (optional sweep, default off)"}),
        ("### Masked patch prediction: `experiment=paper/mpp` (App. B.1.2)", MPP,
         {"steps": "trainer.max_steps", "global_batch_size": "data.global_batch_size", "lr": "optim.lr",
          "warmup_steps": "optim.warmup", "decay": "optim.decay", "betas": "optim.betas", "img_size": "data.img_size"}),
    ):
        out += ["", title, "", "| setting | paper | vitlab key | source |", "|---|---|---|---|"]
        out += [f"| {k} | {_fmt(table[k])} | `{v}` | {table['source']} |" for k, v in keys.items()]
    return "\n".join(out) + "\n"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def table5_markdown() -> str:
    """Table 5 as printed in App. C, from :data:`TABLE5` (``python -m vitlab.paper table5``)."""
    out = ["| pretrained on | dataset | " + " | ".join(_MODEL_LABELS[m] for m in TABLE5_MODELS) + " |",
           "|---|---|" + "---|" * len(TABLE5_MODELS)]
    for data, dataset, *_ in _T5:
        cells = [_pct(TABLE5.get((m, data), {}).get(dataset)) for m in TABLE5_MODELS]
        out.append(f"| {_DATA_LABELS[data]} | {_DATA_LABELS[dataset]} | " + " | ".join(cells) + " |")
    notes = [f"{_MODEL_LABELS[m]} pretrained on {_DATA_LABELS[d]}: {n}." for (m, d), n in _T5_VS_T6.items()]
    return "\n".join(["Table 5 (App. C): top-1 %, fine-tuned at 384 px", "", *out, "", *notes]) + "\n"


def table6_markdown() -> str:
    """Table 6 as printed in App. C, from :data:`TABLE6` (``python -m vitlab.paper table6``)."""
    out = ["| model | epochs | " + " | ".join(_DATA_LABELS[d] for d in TRANSFER_DATA) + " | exaFLOPs | source |",
           "|---|---|" + "---|" * (len(TRANSFER_DATA) + 2)]
    for (m, ep), r in TABLE6.items():
        out.append(f"| {_MODEL_LABELS[m]} | {ep} | " + " | ".join(_pct(r[d]) for d in TRANSFER_DATA)
                   + f" | {r['exaflops']} | {r['source']} |")
    return "\n".join(["Table 6 (App. C): JFT-300M pretraining, fine-tuned at 384 px, top-1 %", "", *out]) + "\n"


def table2_markdown() -> str:
    """Table 2 (without Noisy Student, not a vitlab model), from :data:`TABLE2` (``python -m vitlab.paper table2``)."""
    cols = list(TABLE2)
    out = ["| | " + " | ".join(TABLE2[c]["source"].removeprefix("Table 2, column ") for c in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for d in (*TRANSFER_DATA, "vtab"):
        out.append(f"| {_DATA_LABELS[d]} | " + " | ".join(_pct(TABLE2[c][d]) for c in cols) + " |")
    out.append("| TPUv3-core-days | " + " | ".join(f"{TABLE2[c]['tpu_core_days'] / 1000:g}k" for c in cols) + " |")
    title = "Table 2: fine-tuned top-1 % (ImageNet at 512 px for L/16, 518 px for H/14, Polyak averaging)"
    return "\n".join([title, "", *out]) + "\n"


PRINTABLE = {"table2": table2_markdown, "table5": table5_markdown, "table6": table6_markdown,
             "table7": lambda: table_d_markdown("table7"), "table8": lambda: table_d_markdown("table8"),
             "figure9": lambda: table_d_markdown("figure9"),
             "recipes": markdown_tables}


def main(argv: list[str] | None = None) -> int:
    """``python -m vitlab.paper [recipes|table2|table5|table6|table7|table8|figure9]``: a stored table as markdown
    (default: recipes, the "paper vs vitlab" tables of docs/protocols.md)."""
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "recipes"
    if len(args) > 1 or name not in PRINTABLE:
        print(f"Error: no printable paper table {' '.join(args)!r}; use one of {', '.join(PRINTABLE)} "
              "(python -m vitlab.paper table5)", file=sys.stderr)
        return 2
    print(PRINTABLE[name](), end="")
    return 0

