"""Metric and result names: one constant each, used by the modules, callbacks, protocols, tasks and reports.

A name written twice drifts (a report that reads ``val/acc_bset`` shows an empty column and no error), so every
key that one module writes and another reads is spelled here once. ``tests/test_package_layout.py`` checks that
no other source file spells one as a literal.
"""

from __future__ import annotations

# ---- logged by the objectives (modules/) ---------------------------------------------------------------
TRAIN_LOSS = "train/loss"
TRAIN_LOSS_EPOCH = "train/loss_epoch"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_ACC_BEST = "val/acc_best"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_ACC5 = "test/acc5"
TEST_ACC_REAL = "test/acc_real"  # ImageNet ReaL (real.json), when the data provides it

# ---- logged by callbacks -----------------------------------------------------------------------------------
TRAIN_EXAFLOPS = "train/exaflops"  # cumulative training compute (paper Fig. 5 x-axis, Table 6)
TRAIN_IMAGES_SEEN = "train/images_seen"
TRAIN_SKIPPED_NONFINITE = "train/skipped_nonfinite"

# ---- a run's result file (metrics.json) and logger config: what the run was -----------------------------------
TIME_WALL_S = "time/wall_s"
TEST_CKPT = "test/ckpt"  # the checkpoint the test metrics come from
MODEL_NAME = "model/name"
MODEL_FAMILY = "model/family"
MODEL_VARIANT = "model/variant"
MODEL_PARAMS = "model/params"
MODEL_PARAMS_M = "model/params_m"
MODEL_IMG_SIZE = "model/img_size"
MODEL_PATCH_SIZE = "model/patch_size"
MODEL_GMACS = "model/gmacs"
MODEL_GFLOPS = "model/gflops"
MODEL_TRAIN_GFLOPS = "model/train_gflops"
DATA_NAME = "data/name"
DATA_TRAIN_SIZE = "data/train_size"
DATA_VAL_SIZE = "data/val_size"
DATA_TEST_SIZE = "data/test_size"
DATA_NUM_CLASSES = "data/num_classes"
DATA_IMG_SIZE = "data/img_size"
DATA_EVAL_IMG_SIZE = "data/eval_img_size"
DATA_ROOT = "data/root"
DATA_SOURCE = "data/source"
DATA_REAL_LABELS = "data/real_labels"
DATA_VTAB_TASK = "data/vtab_task"
DATA_VTAB_GROUP = "data/vtab_group"

# ---- protocols: few-shot linear evaluation and VTAB-1k ---------------------------------------------------------
FEWSHOT_PREFIX = "fewshot/"
FEWSHOT_SEEDS = "fewshot/seeds"
FEWSHOT_L2_SELECT = "fewshot/l2_select"
VTAB_TASK = "vtab/task"
VTAB_GROUP = "vtab/group"
VTAB_LR = "vtab/lr"
VTAB_VAL_BY_LR = "vtab/val_by_lr"
VTAB_STEPS = "vtab/steps"
# the fine-tuning protocol (vitlab.finetune): candidates scored on the dev split, the best trained on all of train
FINETUNE_RECIPE = "finetune/recipe"  # the chosen candidate's recipe: table4 (Table 4's lr sweep) or bit_hyperrule
FINETUNE_LR = "finetune/lr"  # the chosen candidate's lr
FINETUNE_DEV = "finetune/dev"  # candidate -> {recipe, lr, dev accuracy (optimized_metric)}, in the order run
FINETUNE_DEV_TRAIN_SIZE = "finetune/dev_train_size"  # training images of a dev run (train minus the dev split)
FINETUNE_DEV_VAL_SIZE = "finetune/dev_val_size"  # images of the dev split


def fewshot_key(data: str, shots: int) -> str:
    """``fewshot/<data>_<k>shot``: the mean test accuracy of k-shot linear evaluation on ``data``
    (``..._std`` and ``..._l2`` are its spread over seeds and its penalty)."""
    return f"{FEWSHOT_PREFIX}{data}_{int(shots)}shot"

# the paper's number beside a run (vitlab.report.paper_points): its accuracy as a fraction, its table/row, and the
# paper's pretraining compute for that row (Table 6 only)
PAPER_ACC = "paper/acc"
PAPER_SOURCE = "paper/source"
PAPER_EXAFLOPS = "paper/exaflops"
# how a run was trained, from its config (vitlab.report.collect.protocol): scratch / fine-tune / few-shot / eval
PROTOCOL = "protocol"
