"""VTAB-1k (paper §4.1, Table 2): 19 tasks of 1,000 training images each, in three groups.

The layout used by PyTorch fine-tuning work (the released ``vtab-1k`` folder):

    <root>/<task>/train800.txt, val200.txt, train800val200.txt, test.txt   lines: <relative path> <label>
    <root>/<task>/<the images those lines name>

``data.task`` picks the task; its class count comes from the one table, :data:`VTAB_TASKS`. The
paper's protocol: choose the lr training on ``train800`` and validating on ``val200``, then train on
``train800val200`` (``data.train_split``) and report ``test``.
"""

from __future__ import annotations

from vitlab import metrics as M
from vitlab.data.catalog import VTAB_GROUPS, VTAB_TASKS, vtab_num_classes
from vitlab.data.files import FileDataModule, list_class_dirs, read_list_file
from vitlab.errors import DataConfigError, DatasetNotFoundError

__all__ = ["VTAB_GROUPS", "VTAB_TASKS", "VTABDataModule"]
LIST_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")


class VTABDataModule(FileDataModule):
    name = "vtab"
    default_train_pipeline = "finetune"

    def __init__(self, task: str = "cifar", train_split: str = "train800val200", **kwargs) -> None:
        try:
            k = vtab_num_classes(task)
        except ValueError as e:
            raise DataConfigError(str(e)) from None
        if train_split not in ("train800", "train800val200"):
            raise DataConfigError(f"data.train_split={train_split!r} is not one of ['train800', 'train800val200']")
        kwargs.setdefault("num_classes", k)
        kwargs.setdefault("name", f"vtab_{task}")
        super().__init__(**kwargs)
        if int(self.num_classes) != k:
            raise DataConfigError(f"data.num_classes={self.num_classes} but VTAB task {task} has {k} classes")
        self.task, self.train_split, self.group = task, train_split, VTAB_TASKS[task][0]
        self.layout = f"  <root>/{task}/{{{', '.join(LIST_FILES)}}} + the images they list ('<path> <label>' lines)"

    def build_splits(self):
        root = self.root_dir()
        d = root / self.task
        if not d.is_dir():
            have = [t for t in list_class_dirs(root) if t in VTAB_TASKS]
            raise DatasetNotFoundError(
                f"{d} is missing (tasks found in {root}: {have or 'none'}). data=vtab expects\n{self.layout}"
            )
        read = lambda name: read_list_file(d / name, d, self.num_classes, self.check_files)  # noqa: E731
        train = self.images(*read(f"{self.train_split}.txt"))
        val = self.images(*read("val200.txt"))
        test = self.images(*read("test.txt"))
        self.classes = [str(i) for i in range(self.num_classes)]
        return train, val, test

    def stats(self):
        return {**super().stats(), M.DATA_VTAB_TASK: self.task, M.DATA_VTAB_GROUP: self.group}
