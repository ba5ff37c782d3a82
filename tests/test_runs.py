"""The run-assembly layer (issue #12): one way through the code.

- No module under ``src/vitlab`` imports a task module: every task gets its objects from ``vitlab.runs``; the one
  exception is ``vtab``, which is ``vitlab.train``'s job once per learning rate (the layers of pyproject.toml).
- One training run resolves its config (``job_config``) once: config.yaml, the checkpoints, the loggers and the
  printed tree all hold that one.
- Objectives are a config group (``conf/module/``), each with its own keys.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "vitlab"
#: the task modules: Hydra apps with a command line; nothing else may import them
TASKS = ("train", "evaluate", "finetune", "fewshot", "probe", "vtab", "analyze", "predict", "bench", "pack", "report.task")
#: the tasks that run another: the fine-tuning protocol is vitlab.train's job once per candidate and once more, and
#: VTAB is that protocol once per task
RUNS_ANOTHER = {"vitlab.finetune": {"vitlab.train"}, "vitlab.vtab": {"vitlab.finetune"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, me: str) -> set[str]:
    """Every module the file of module ``me`` imports, at any depth (``from a import b`` counts ``a`` and ``a.b``;
    relative imports resolved)."""
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _task_imports(path: Path, me: str) -> list[str]:
    tasks = {f"vitlab.{t}" for t in TASKS}
    return sorted(m for m in _imported(path, me) & tasks if m != me)


def test_no_module_imports_a_task_module():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__main__.py":  # `python -m vitlab.report` runs the report task: a shim, allowed
            continue
        me = _module_name(path)
        bad = [m for m in _task_imports(path, me) if m not in RUNS_ANOTHER.get(me, set())]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {', '.join(bad)}")
    assert not offenders, "a task module is imported (use vitlab.runs instead):\n" + "\n".join(offenders)


def test_the_import_reader_finds_every_spelling(tmp_path):
    """The check above can fail: imports inside functions, ``from vitlab import train`` and relative imports."""
    planted = tmp_path / "x.py"
    planted.write_text("import vitlab.pack\nfrom vitlab import vtab\nfrom vitlab.report import task\n"
                       "def f():\n    from vitlab.train import train\n    from ..bench import run_bench\n"
                       "    from . import evaluate\n")
    assert _task_imports(planted, "vitlab.x") == ["vitlab.evaluate", "vitlab.pack", "vitlab.report.task",
                                                 "vitlab.train", "vitlab.vtab"]
    assert _task_imports(planted, "vitlab.inspect.x") == ["vitlab.bench", "vitlab.pack", "vitlab.report.task",
                                                         "vitlab.train", "vitlab.vtab"]


def test_job_config_is_built_once_per_training_run(compose_train, monkeypatch):
    """config.yaml, the checkpoint's vitlab_config, the loggers' hparams and the printed config tree: one
    ``job_config`` call for all of them (it resolves and masks the whole config)."""
    import sys

    import vitlab.utils.plain
    from vitlab.train import train

    calls = []
    original = vitlab.utils.plain.job_config

    def counting(cfg):
        calls.append(1)
        return original(cfg)

    for mod in [m for name, m in sys.modules.items() if name.startswith("vitlab") and m is not None]:
        if getattr(mod, "job_config", None) is original:
            monkeypatch.setattr(mod, "job_config", counting)
    cfg = compose_train("model=vit_micro", "data=digits", "data.img_size=16", "data.train_size=64",
                        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                        "trainer.limit_test_batches=1", "logger=csv", "extras.print_config=true")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "config.yaml").is_file() and (out / "config_tree.log").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "csv" / "hparams.yaml").is_file()
    assert len(calls) == 1, f"job_config was built {len(calls)} times in one training run"


# ---- objectives: conf/module/ ---------------------------------------------------------------------------
def test_each_objective_has_its_own_keys(compose_train):
    cls_cfg = compose_train()
    mpp_cfg = compose_train("module=mpp")
    assert cls_cfg.module._target_.endswith("ClassificationModule") and "loss" in cls_cfg.module
    assert mpp_cfg.module._target_.endswith("MaskedPatchPredictionModule")
    assert "loss" not in mpp_cfg.module and "label_smoothing" not in mpp_cfg.module
    assert mpp_cfg.module.corrupt_frac == 0.5 and "corrupt_frac" not in cls_cfg.module
    from vitlab.runs.assemble import build_module

    assert type(build_module(mpp_cfg)).__name__ == "MaskedPatchPredictionModule"


def test_mpp_takes_no_classification_keys():
    import inspect

    from vitlab.modules.mpp import MaskedPatchPredictionModule

    params = set(inspect.signature(MaskedPatchPredictionModule.__init__).parameters)
    assert not params & {"loss", "label_smoothing", "head_bias_init"}


def test_objective_yaml_states_the_module_defaults():
    """conf/module/<objective>.yaml lists every key of its class, at the class's own defaults (one set of values)."""
    import inspect

    from omegaconf import OmegaConf

    from vitlab import CONF_DIR
    from vitlab.runs import objective_class

    for name in ("classification", "mpp"):
        conf = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "module" / f"{name}.yaml"))
        cls = objective_class(name)
        assert conf.pop("_target_") == f"{cls.__module__}.{cls.__name__}"
        params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                  if k not in ("self", "model", "optim")}
        assert conf == {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}, name
