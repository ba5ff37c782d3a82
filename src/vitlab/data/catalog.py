"""Facts about the datasets that configs need at compose time, importable without torch.

- :data:`VTAB_TASKS`: the 19 VTAB-1k tasks, their group and class count (paper §4.1, Table 2), the
  one table every VTAB consumer reads.
- Config resolvers: ``${vitlab.vtab_classes:<task>}`` and ``${vitlab.folder_classes:<root>}`` so a
  model's head size follows the data without a second key to keep in sync.
"""

from __future__ import annotations

from pathlib import Path

from vitlab.data.tree import list_class_dirs

#: task -> (group, number of classes); directory names of the VTAB-1k release used by PyTorch work
VTAB_TASKS: dict[str, tuple[str, int]] = {
    "caltech101": ("natural", 102),
    "cifar": ("natural", 100),
    "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102),
    "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2),
    "eurosat": ("specialized", 10),
    "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8),
    "clevr_dist": ("structured", 6),
    "dmlab": ("structured", 6),
    "kitti": ("structured", 4),
    "dsprites_loc": ("structured", 16),
    "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18),
    "smallnorb_ele": ("structured", 9),
}
VTAB_GROUPS: dict[str, list[str]] = {
    g: [t for t, (grp, _) in VTAB_TASKS.items() if grp == g] for g in ("natural", "specialized", "structured")
}


def vtab_num_classes(task: str) -> int:
    if task not in VTAB_TASKS:
        raise ValueError(f"data.task={task!r} is not a VTAB-1k task; choose one of {', '.join(VTAB_TASKS)}")
    return VTAB_TASKS[task][1]


def folder_num_classes(root: str, dataset: str | None = None) -> int:
    """Number of class sub-folders of ``<root>/train`` (or of ``root`` itself when it has no train/).

    ``dataset`` names a dataset vitlab cannot download (``${vitlab.folder_classes:${.root},JFT-300M}``): a missing
    root then says where to put your copy.
    """
    if root in (None, "", "???"):
        raise ValueError("data.root is not set: data=folder needs data.root=<folder of class sub-folders>")
    p = Path(str(root)).expanduser()
    base = p / "train" if (p / "train").is_dir() else p
    if not base.is_dir() and dataset:
        raise FileNotFoundError(
            f"{dataset} is not public and vitlab cannot fetch it: put your copy at data.root={root} ({p.resolve()}) "
            "as <root>/<class>/<image> or <root>/train/<class>/<image>, or point data.root=<your copy> at it"
        )
    if not base.is_dir():
        raise FileNotFoundError(
            f"data.root={root} does not exist ({p.resolve()}); data=folder expects <root>/<class>/<image> "
            "or <root>/train/<class>/<image> (+ optional val/, test/)"
        )
    n = len(list_class_dirs(base, p))  # the scan's own rule: a link leaving data.root, or a loop, is no class
    if n == 0:
        raise FileNotFoundError(f"{base} holds no class sub-folders; data=folder expects {base}/<class>/<image>")
    return n


def packed_value(root: str, key: str, *args):
    """``${vitlab.packed:<root>,<key>,<timeout>[,<img_size>]}``: the class count or a source setting recorded by ``vitlab.pack``."""
    # Lazy on purpose: vitlab.config imports this module to register the resolvers, and every command imports
    # vitlab.config before its config is checked; data.packed imports torch and litdata (`import vitlab.config`:
    # 2.2 s with this import here, 16-22 s with it at the top, measured on the 2-core machine).
    from vitlab.data.packed import packed_manifest_value

    return packed_manifest_value(root, key, *args)


RESOLVERS = {"vitlab.vtab_classes": vtab_num_classes, "vitlab.folder_classes": folder_num_classes,
             "vitlab.packed": packed_value}
