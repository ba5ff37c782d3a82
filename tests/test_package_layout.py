"""Where things live in the package: one errors module, no import cycles, callbacks in ``callbacks/``,
metric names in ``metrics.py``. Read from the source with ``ast`` (nothing is imported to check it)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(("vitlab", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, module_level_only: bool) -> set[str]:
    """The vitlab modules ``name`` imports (at module level, or anywhere in the file)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    out: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("vitlab"):
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                out.add(sub if sub in MODULES else n.module)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("vitlab")}
    return {m for m in out if m in MODULES and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for m in graph:
            if m not in index:
                visit(m)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_module_level_import_cycle():
    graph = {m: _imports(m, module_level_only=True) for m in MODULES}
    assert _cycles(graph) == []


def test_config_and_secrets_do_not_import_each_other_even_lazily():
    """The old cycle: config -> utils.secrets (redact) and utils.secrets -> config (ConfigError)."""
    graph = {m: _imports(m, module_level_only=False) for m in MODULES}
    for comp in _cycles(graph):
        assert "vitlab.utils.secrets" not in comp, comp


def test_errors_module_imports_nothing_of_vitlab():
    assert _imports("vitlab.errors", module_level_only=False) == set()


def test_every_error_class_is_defined_in_errors():
    strays = [f"{name}.{n.name}" for name, path in MODULES.items() if name != "vitlab.errors"
              for n in ast.walk(ast.parse(path.read_text()))
              if isinstance(n, ast.ClassDef) and n.name.endswith("Error")]
    assert strays == []


@pytest.mark.parametrize("name", ["ConfigError", "DataConfigError", "ModelConfigError", "PretrainedError",
                                  "PretrainedMismatchError", "BenchConfigError", "OptimConfigError",
                                  "DatasetFormatError", "ReportError", "RunDirBusyError"])
def test_command_line_treats_each_config_error_as_a_users_mistake(name):
    import vitlab.errors
    from vitlab.tasks import user_error

    err = getattr(vitlab.errors, name)("data.batch_size=0 must be positive")
    wrapped = RuntimeError("while instantiating")
    wrapped.__cause__ = err
    assert user_error(wrapped) is err


METRIC_LITERAL = re.compile(r"^(train|val|test|fewshot|vtab|time|model|data)/[a-z0-9_]+$")


def _string_literals(tree: ast.AST):
    """String constants that are not docstrings (f-string pieces included)."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            yield n


def test_metric_names_are_spelled_only_in_metrics_py():
    """A key one module writes and another reads (``val/acc_best``, ``fewshot/<data>_<k>shot``, ``data/name``)
    is a constant of ``vitlab.metrics``: a typo is then an AttributeError, not an empty report column."""
    found = [f"{name}:{n.lineno}: {n.value!r}" for name, path in MODULES.items() if name != "vitlab.metrics"
             for n in _string_literals(ast.parse(path.read_text())) if METRIC_LITERAL.match(n.value)]
    assert found == []


def test_both_objectives_log_best_val_acc_synced_across_processes():
    """Both objectives inherit the one ``val/acc_best`` log of ``modules/base.py``, synced across processes."""
    def calls(name: str) -> list[ast.Call]:
        return [n for n in ast.walk(ast.parse(MODULES[name].read_text())) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute) and n.func.attr == "log" and n.args
                and ast.unparse(n.args[0]) == "M.VAL_ACC_BEST"]

    (base,) = calls("vitlab.modules.base")
    assert {k.arg: ast.unparse(k.value) for k in base.keywords}.get("sync_dist") == "True"
    for name in ("vitlab.modules.classification", "vitlab.modules.mpp"):
        assert calls(name) == [], f"{name} logs val/acc_best itself instead of inheriting modules/base.py's"
        assert "(VitlabModule)" in MODULES[name].read_text()


def _lightning_callbacks() -> list[str]:
    """``module.Class`` of every class whose base is Lightning's ``Callback`` (not Hydra's)."""
    out = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        lightning = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and (n.module or "").startswith(("lightning", "pytorch_lightning")) for a in n.names}
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                   for a in n.names if a.name.startswith(("lightning", "pytorch_lightning"))}
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef):
                for b in n.bases:
                    base = ast.unparse(b)
                    if (base == "Callback" and "Callback" in lightning) or \
                            (base.endswith(".Callback") and base.split(".")[0] in aliases):
                        out.append(f"{name}.{n.name}")
    return out


_CALLBACKS_ELSEWHERE: set[str] = set()  # none: the bench's WindowTimer is vitlab.callbacks.timing


def test_every_lightning_callback_lives_in_callbacks():
    found = _lightning_callbacks()
    assert "vitlab.callbacks.nonfinite.NonFiniteGuard" in found  # the scan sees them
    strays = sorted(c for c in found if not c.startswith("vitlab.callbacks.") and c not in _CALLBACKS_ELSEWHERE)
    assert strays == []


def test_every_vitlab_target_in_conf_names_an_existing_class():
    """A moved class with a stale ``_target_`` in ``conf/`` would only fail when that config is used."""
    import importlib

    from vitlab.runs.read import _MOVED_TARGETS, vitlab_targets

    missing = []
    for t in sorted(t for t in vitlab_targets() - _MOVED_TARGETS if t.startswith("vitlab.")):
        mod, _, attr = t.rpartition(".")
        try:
            getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            missing.append(f"{t}: {e}")
    assert missing == []


@pytest.mark.parametrize("old", ["vitlab.analysis.flops.ComputeTracker", "vitlab.report.wandb_dash.WandbDashboard",
                                 "vitlab.eval.fewshot.FewShotCallback", "vitlab.utils.trainer.make_trainer"])
def test_checkpoint_reader_still_accepts_the_old_path_of_a_moved_class(old):
    """An older checkpoint's ``vitlab_config`` stored these ``_target_``s; reading it must not be refused."""
    from vitlab.runs import check_checkpoint

    check_checkpoint({"vitlab_config": {"callbacks": {"x": {"_target_": old}}}}, "old.ckpt")
    with pytest.raises(ValueError, match="not allowed"):
        check_checkpoint({"vitlab_config": {"callbacks": {"x": {"_target_": old + "Evil"}}}}, "old.ckpt")


def test_architecture_doc_matches_the_tree():
    """docs/architecture.md is the map: every path it cites exists, and every package and task is on it."""
    repo = Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "architecture.md").read_text()
    cited = set(re.findall(r"`((?:src/vitlab|conf|tests|docs)/[\w./<>-]*)", doc))
    missing = sorted(p for p in cited if "<" not in p and not (repo / p.rstrip("/")).exists())
    assert missing == [], f"docs/architecture.md cites paths that do not exist: {missing}"
    for f in (repo / "docs" / "architecture.md",):
        for exp in re.findall(r"experiment=([\w/]+)", f.read_text()):
            assert (repo / "conf" / "experiment" / f"{exp}.yaml").is_file(), exp
    src = repo / "src" / "vitlab"
    packages = sorted(p.name for p in src.iterdir() if (p / "__init__.py").is_file())
    assert [p for p in packages if f"src/vitlab/{p}/" not in doc] == []
    tasks = ("train", "evaluate", "predict", "fewshot", "vtab", "analyze", "report", "bench", "pack")
    assert all(f"`{t}`" in doc for t in tasks)
