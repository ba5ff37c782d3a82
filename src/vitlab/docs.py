"""The reference half of the docs site, generated from the code and ``conf/`` so it cannot drift.

    python -m vitlab.docs docs/reference        # what `make docs` runs before `mkdocs build --strict`

Writes ``index.md`` (the list), one page per config group (``config/<group>.md``: every option with its header
comment and every key with its default and the comment beside it; where a value comes from the paper through
``${vitlab.paper:...}``, the paper's number and its source), ``tasks.md`` (every task's command line, console
script, purpose and keys), ``checkpoint.md`` and ``metrics.md`` (the two file formats, read from the code that
writes them), ``paper.md`` (:mod:`vitlab.paper`'s tables) and ``api.md`` (the Python API, rendered from the
docstrings by mkdocstrings). The pages are build output (gitignored): a rename in ``conf/`` or the code shows
up in the next build, and a page that cites something gone fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from vitlab import CONF_DIR, paper
from vitlab.errors import PaperKeyError

SRC_DIR = Path(__file__).resolve().parent
#: config folders that are not groups a user selects: machine-local files (gitignored)
SKIPPED_GROUPS = ("local",)
#: the Python API page: the entry points a user calls from Python
API_OBJECTS = ("vitlab.train.train", "vitlab.paper", "vitlab.models.registry")
PAPER_REF = re.compile(r"\$\{vitlab\.paper(?:_sweep)?:([^${}]+)\}")


# ---- reading a config file with its comments ---------------------------------------------------------------
@dataclass
class Key:
    path: str
    value: str | None  # None: a section (its keys follow)
    meaning: str = ""


@dataclass
class ConfigFile:
    header: str
    defaults: list[str] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)


def split_comment(line: str) -> tuple[str, str]:
    """``"lr: 0.1   # base lr"`` -> ``("lr: 0.1", "base lr")``; a ``#`` inside quotes is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


KEY_LINE = re.compile(r"^(\s*)([^\s#:\-][^:]*?):(?:\s+(.*))?$")


def read_config(path: Path) -> ConfigFile:
    """The header comment, the defaults list and every key (dotted path, value as written, comment)."""
    header: list[str] = []
    out = ConfigFile(header="")
    stack: list[tuple[int, str]] = []
    last: Key | None = None
    last_indent = -1
    seen_key = False
    pending: list[str] = []
    for raw in path.read_text().splitlines():
        if not raw.strip():
            pending = []
            continue
        indent = len(raw) - len(raw.lstrip())
        body, comment = split_comment(raw)
        if not body:  # a comment line
            if comment.startswith("@package"):
                continue
            if not seen_key:
                header.append(comment)
            elif last is not None and indent > last_indent:
                last.meaning = f"{last.meaning} {comment}".strip()  # continues the comment beside a key
            else:
                pending.append(comment)
            continue
        stripped = body.strip()
        if stripped.startswith("- "):  # a list item: the defaults list, or a block list value
            if stack and stack[-1][1] == "defaults" and len(stack) == 1:
                out.defaults.append(stripped[2:] + (f"  # {comment}" if comment else ""))
            elif last is not None:
                last.value = f"{last.value or ''} {stripped}".strip()
            continue
        m = KEY_LINE.match(body)
        if not m:
            if last is not None:  # a value continued on the next line
                last.value = f"{last.value or ''} {stripped}".strip()
            continue
        seen_key = True
        key, value = m.group(2).strip(), (m.group(3) or "").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        meaning = comment or " ".join(pending)
        pending = []
        if dotted == "defaults":
            stack.append((indent, key))
            last = None
            continue
        last = Key(dotted, value or None, meaning)
        last_indent = indent
        if not value:
            stack.append((indent, key))
        out.keys.append(last)
    out.header = " ".join(header)
    return out


def paper_note(value: str) -> str:
    """``${vitlab.paper:table3,vit_b16,imagenet21k,lr}`` -> ``0.001 (Table 3 ...)``; "" when none applies."""
    notes = []
    for args in PAPER_REF.findall(value or ""):
        table, *keys = [a.strip() for a in args.split(",")]
        try:
            number = paper.lookup(table, *keys)
        except PaperKeyError:
            continue
        try:
            source = paper.lookup(table, *keys[:-1], "source")
        except PaperKeyError:
            source = f"vitlab.paper {table}"
        notes.append(f"paper: {number} ({source})")
    return "; ".join(notes)


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_body(cfg, intro: str, defaults_label: str) -> list[str]:
    """One config's section: its introduction, its defaults list and its keys table."""
    lines = [intro, ""] if intro else []
    if cfg.defaults:
        lines += [f"{defaults_label}: " + ", ".join(f"`{cell(d)}`" for d in cfg.defaults), ""]
    return lines + keys_table(cfg)


def keys_table(cfg: ConfigFile) -> list[str]:
    if not cfg.keys:
        return ["No keys of its own."]
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for k in cfg.keys:
        value = "*(section)*" if k.value is None else f"`{cell(k.value)}`"
        meaning = "; ".join(x for x in (k.meaning, paper_note(k.value or "")) if x)
        lines.append(f"| `{k.path}` | {value} | {cell(meaning)} |")
    return lines


# ---- pages -------------------------------------------------------------------------------------------------
def config_groups(conf: Path = Path(CONF_DIR)) -> list[str]:
    """Every selectable config group: the top-level folders of ``conf/`` (``conf/local`` aside)."""
    return sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name not in SKIPPED_GROUPS)


def group_options(group: str, conf: Path = Path(CONF_DIR)) -> list[str]:
    """``data`` -> ``["base/common", ..., "cifar10", ...]``: what ``group=<option>`` accepts (sub-folders too)."""
    root = conf / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def group_page(group: str, conf: Path = Path(CONF_DIR)) -> str:
    options = group_options(group, conf)
    lines = [f"# `{group}`: config group", "",
             f"Generated from `conf/{group}/` by `python -m vitlab.docs`. Select an option with `{group}=<option>`; "
             f"set one key with `{group}.<key>=<value>`.", "",
             "| option | what it is |", "|---|---|"]
    parsed = {opt: read_config(conf / group / f"{opt}.yaml") for opt in options}
    lines += [f"| [`{opt}`](#{anchor(opt)}) | {cell(parsed[opt].header)} |" for opt in options]
    for opt in options:
        cfg = parsed[opt]
        lines += ["", f"## `{opt}`", "", f"`{group}={opt}` · file `conf/{group}/{opt}.yaml`", ""]
        lines += config_body(cfg, cfg.header, "Composes (defaults list)")
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """The id MkDocs gives a heading (toc's default slugify)."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def console_scripts() -> dict[str, str]:
    """``{"vitlab.train": "vitlab-train", ...}``: the installed package's console scripts (pyproject.toml's
    ``[project.scripts]``)."""
    try:
        eps = distribution("vitlab").entry_points
    except PackageNotFoundError:
        return {}
    return {ep.module: ep.name for ep in eps if ep.group == "console_scripts"}


def module_docstring(module: str) -> str:
    """A module's docstring, read from its source without importing it (a task imports torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""


def task_module(task: str) -> str | None:
    """The module that runs ``conf/<task>.yaml``: the console script's, else ``vitlab.<task>``."""
    for module in console_scripts():
        if module.rsplit(".", 1)[-1] == task or module == f"vitlab.{task}.task":
            return module
    return f"vitlab.{task}" if importlib.util.find_spec(f"vitlab.{task}") else None


def tasks_page(conf: Path = Path(CONF_DIR)) -> str:
    scripts = console_scripts()
    tasks = sorted(p.stem for p in conf.glob("*.yaml"))
    lines = ["# Tasks: command lines", "",
             "Generated from `conf/<task>.yaml`, the task modules' docstrings and the console scripts by "
             "`python -m vitlab.docs`. Every task is a Hydra app: `key=value` overrides, `group=option` "
             "selections, `-m` for a multirun, `--cfg job` to print the composed config without running.", "",
             "| task | command | console script | config |", "|---|---|---|---|"]
    mods = {t: task_module(t) for t in tasks}
    for t in tasks:
        mod = mods[t]
        command = f"`python -m {mod.removesuffix('.task')}`" if mod else "–"
        script = f"`{scripts[mod]}`" if mod in scripts else "–"
        lines.append(f"| [{t}](#{anchor(t)}) | {command} | {script} | `conf/{t}.yaml` |")
    for t in tasks:
        cfg = read_config(conf / f"{t}.yaml")
        mod = mods[t]
        lines += ["", f"## {t}", ""]
        doc = module_docstring(mod) if mod else ""
        intro = "\n".join(["```text", doc.strip(), "```"]) if doc else cfg.header
        lines += config_body(cfg, intro, "Config groups and their defaults")
    return "\n".join(lines) + "\n"


def metrics_page() -> str:
    """Every name of ``vitlab.metrics`` with its section and comment, from the module's source."""
    source = (SRC_DIR / "metrics.py").read_text()
    lines_src = source.splitlines()
    doc = ast.get_docstring(ast.parse(source)) or ""
    lines = ["# Metric names and `metrics.json`", "",
             "Generated from `src/vitlab/metrics.py` by `python -m vitlab.docs`.", "", doc, "",
             "A training job writes `<run dir>/metrics.json` at its end: one JSON object whose keys are the names "
             "below (final `val/` and `test/` metrics, what the run was, its wall time); every logger gets the "
             "same names.", ""]
    section = None
    for i, text in enumerate(lines_src):
        m = re.match(r"^# ---- (.*?) -+$", text)
        if m:
            section = m.group(1)
            lines += ["", f"## {section}", "", "| name | constant | meaning |", "|---|---|---|"]
            continue
        m = re.match(r'^([A-Z][A-Z0-9_]*) = "([^"]+)"\s*(?:#\s*(.*))?$', text)
        if m and section:
            lines.append(f"| `{m.group(2)}` | `{m.group(1)}` | {cell(m.group(3) or '')} |")
        m = re.match(r"^def (\w+)\(", text)
        if m and section:
            fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == m.group(1))
            lines.append(f"| `{lines_src[i][4:].split(')')[0]})` | function | {cell(ast.get_docstring(fn) or '')} |")
    return "\n".join(lines) + "\n"


def checkpoint_keys() -> list[tuple[str, str, str]]:
    """(key, where, what) for every ``checkpoint[<key>] = ...`` vitlab writes, found in the source."""
    found = []
    for path in sorted(SRC_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                    continue
                target = node.targets[0]
                if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                        and target.value.id == "checkpoint"):
                    continue
                sl = target.slice
                key = sl.value if isinstance(sl, ast.Constant) else consts.get(getattr(sl, "id", ""), None)
                if key is None:
                    continue
                what = ""
                if isinstance(node.value, ast.Dict):
                    what = "a dict of " + ", ".join(f"`{k.value}`" for k in node.value.keys if isinstance(k, ast.Constant))
                else:
                    what = f"`{ast.unparse(node.value)}`"
                where = f"`{path.relative_to(SRC_DIR.parent)}` ({fn.name})"
                found.append((str(key), where, what))
    return found


def checkpoint_page() -> str:
    lines = ["# Checkpoint format", "",
             "Generated by `python -m vitlab.docs` from the code that writes checkpoints.", "",
             "A vitlab checkpoint (`<run dir>/checkpoints/last.ckpt`, `epoch…-val_acc….ckpt`) is a Lightning "
             "checkpoint saved with `torch.save`: plain containers and tensors only, so it loads with "
             "`torch.load(path, weights_only=True)`. Lightning's own keys (`state_dict`, `epoch`, `global_step`, "
             "`optimizer_states`, `lr_schedulers`, `callbacks`, `loops`, `hyper_parameters`, "
             "`pytorch-lightning_version`) are as Lightning documents them; the network's weights are the "
             "`state_dict` entries under `net.`. vitlab adds:", "",
             "| key | written by | value |", "|---|---|---|"]
    lines += [f"| `{k}` | {w} | {cell(v)} |" for k, w, v in checkpoint_keys()]
    lines += ["", "How vitlab reads one back, and what it refuses, is the threat model: "
              "[Reliability](../reliability.md)."]
    return "\n".join(lines) + "\n"


def api_page() -> str:
    lines = ["# Python API", "", "Rendered from the docstrings by mkdocstrings at build time.", ""]
    for obj in API_OBJECTS:
        lines += [f"## `{obj}`", "", f"::: {obj}", ""]
    return "\n".join(lines)


def paper_page() -> str:
    return ("# The paper's numbers\n\nGenerated from `vitlab.paper` (`python -m vitlab.paper`): every number a "
            "recipe reads, with its table, row and source.\n\n" + paper.markdown_tables())


def index_page(groups: list[str]) -> str:
    lines = ["# Reference", "",
             "Generated from the code and `conf/` at every `make docs` (`python -m vitlab.docs docs/reference`), "
             "so it describes exactly the tree it was built from.", "",
             "- [Tasks: command lines](tasks.md): every `python -m vitlab.<task>` and its keys",
             "- [Checkpoint format](checkpoint.md)",
             "- [Metric names and `metrics.json`](metrics.md)",
             "- [The paper's numbers](paper.md)",
             "- [Python API](api.md)", "", "## Config groups", "",
             "| group | options |", "|---|---|"]
    for g in groups:
        opts = group_options(g)
        lines.append(f"| [`{g}`](config/{g}.md) | {cell(', '.join(f'`{o}`' for o in opts))} |")
    return "\n".join(lines) + "\n"


def generate(out: Path) -> list[Path]:
    """Write every reference page under ``out``; returns the files written."""
    groups = config_groups()
    pages = {"index.md": index_page(groups), "tasks.md": tasks_page(), "metrics.md": metrics_page(),
             "checkpoint.md": checkpoint_page(), "api.md": api_page(), "paper.md": paper_page()}
    pages |= {f"config/{g}.md": group_page(g) for g in groups}
    written = []
    for name, text in pages.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/reference")
    written = generate(out)
    print(f"{len(written)} reference pages written to {out}/")


if __name__ == "__main__":
    main()
