"""Metric names: one constant each, used by the modules, callbacks, tasks and reports."""

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

#: the metric checkpoints and sweeps select on, and its direction
MONITOR = VAL_ACC
MONITOR_MODE = "max"
