"""The documents stay true: every command in the README, the tutorial and the how-tos composes (or says what it
needs), every `make` target exists, and every `experiment=` / `model=` / `data=` a page cites is a config file.

A command is a line of a ```bash block. One that needs what a test machine lacks ends with `# needs: <what>`
(data, GPU, cluster, network): its names are checked, it is not composed. Composing with Hydra's compose API
in-process checks every group option and key a command names; the smallest real job runs in
tests/test_docs_console.py.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from vitlab import CONF_DIR
from vitlab.config import compose_job
from vitlab.utils.plain import job_config

ROOT = Path(__file__).resolve().parent.parent
CONF = Path(CONF_DIR)
COMMAND_PAGES = [ROOT / "README.md", ROOT / "docs" / "tutorial.md", *sorted((ROOT / "docs" / "how-to").glob("*.md"))]
#: every page a reader sees (the generated reference aside: it is written from conf/ itself)
ALL_PAGES = [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").rglob("*.md")) if "reference" not in p.parts)]
CITED_IN_COMMAND = re.compile(r"(?<![\w.])\+?(experiment|model|data)=(\S+)")
NEEDS = re.compile(r"#\s*needs:\s*(.+)$")
CITED = re.compile(r"`[^`]*?\b(experiment|model|data)=([\w/{},.+*<>()-]+)")
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p")


def bash_lines(page: Path) -> list[tuple[str, str | None]]:
    """(command, what it needs or None) for every command line of the page's ```bash blocks."""
    out, block, text = [], False, page.read_text()
    buf = ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```shell") if not block else False
            continue
        if not block or not line.strip():
            continue
        buf += line.rstrip().removesuffix("\\")
        if line.rstrip().endswith("\\"):
            continue
        needs = NEEDS.search(buf)
        out.append((buf.strip(), needs.group(1).strip() if needs else None))
        buf = ""
    return out


def commands() -> list[tuple[str, str, str | None]]:
    return [(p.relative_to(ROOT).as_posix(), cmd, needs) for p in COMMAND_PAGES for cmd, needs in bash_lines(p)]


def split_commands(line: str) -> list[list[str]]:
    """``time a && b | c`` -> [[a...], [b...], [c...]] (comments dropped, `time` stripped)."""
    tokens = shlex.split(line, comments=True)
    parts, cur = [], []
    for t in tokens:
        if t in ("&&", "||", ";", "|"):
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return [p[1:] if p and p[0] == "time" else p for p in parts if p]


def vitlab_task(argv: list[str]) -> tuple[str, list[str]] | None:
    """``python -m vitlab.train a=b`` / ``vitlab-train a=b`` -> ("vitlab.train", ["a=b"]); None for other tools."""
    if argv[0] in ("python", ".venv/bin/python", "python3") and "-m" in argv:
        i = argv.index("-m")
        if argv[i + 1].startswith("vitlab"):
            return argv[i + 1], argv[i + 2:]
    if argv[0].startswith("vitlab-"):
        return "vitlab." + argv[0].removeprefix("vitlab-"), argv[1:]
    return None


def hydra_overrides(args: list[str]) -> tuple[list[str], bool]:
    """The overrides of a command line (flags dropped, ``<placeholders>`` filled); whether it is a multirun."""
    out, multirun, skip = [], False, False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in FLAGS_WITH_VALUE:
            skip = True
        elif a.startswith("-"):
            continue
        else:
            out.append(re.sub(r"<[^>]*>", "placeholder", a))
    return out, multirun


def first_of_sweep(override: str) -> str:
    """``model=vit_micro,bit_micro`` -> ``model=vit_micro`` (one job of a ``-m`` sweep)."""
    key, _, value = override.partition("=")
    depth, cut = 0, None
    for i, ch in enumerate(value):
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            cut = i
            break
    return f"{key}={value[:cut]}" if cut is not None else override


def expand(value: str) -> list[str]:
    """``paper/finetune_{cifar10,pets}`` -> both names; ``a,b`` (a sweep) -> both."""
    m = re.search(r"\{([^}]*)\}", value)
    if m:
        return [v for alt in m.group(1).split(",") for v in expand(value[:m.start()] + alt + value[m.end():])]
    return [v for v in value.split(",") if v]


def test_every_page_has_commands_and_every_needs_marker_says_what():
    found = commands()
    assert {page for page, _, _ in found} >= {"README.md", "docs/tutorial.md"}
    for page, cmd, needs in found:
        if needs is not None:
            assert set(re.split(r"[,\s]+", needs)) <= {"data", "GPU", "cluster", "network", ""}, (page, cmd)


def test_every_make_target_a_page_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    for page, cmd, _ in commands():
        for argv in split_commands(cmd):
            if argv[0] == "make":
                for t in (a for a in argv[1:] if "=" not in a and not a.startswith("-")):
                    assert t in targets, f"{page}: `{cmd}` names no Makefile target {t!r}"


def cited_names(page: Path) -> list[tuple[str, str]]:
    """(group, value) of every `experiment=`/`model=`/`data=` in the page's inline code and its commands."""
    in_commands = [m for cmd, _ in bash_lines(page) for m in CITED_IN_COMMAND.findall(cmd)]
    return CITED.findall(page.read_text()) + in_commands


def test_every_cited_experiment_model_and_data_exists():
    for page in ALL_PAGES:
        for group, value in cited_names(page):
            for name in expand(value.rstrip(".,")):
                if "<" in name or "(" in name or name == "null":  # `model=<model>`, `glob(*)`: not a name
                    continue
                found = list(CONF.glob(f"{group}/{name.lstrip('+')}.yaml"))  # `paper/pretrain_*`: one at least
                assert found, f"{page.relative_to(ROOT)} cites {group}={name}: no conf/{group}/{name}.yaml"


@pytest.mark.parametrize(("page", "cmd"), [(p, c) for p, c, needs in commands() if needs is None],
                         ids=lambda x: str(x)[:60])
def test_command_composes(page, cmd, tmp_path):
    """A vitlab command composes exactly as its command line would (unknown groups, options and keys fail), and
    its config resolves; a non-Hydra module (``vitlab.inspection.flops``) must exist. Commands marked
    ``# needs: ...`` are name-checked only (test_every_cited_experiment_model_and_data_exists)."""
    for argv in split_commands(cmd):
        task = vitlab_task(argv)
        if task is None:
            continue
        module, args = task
        if args and "=" not in args[0] and not args[0].startswith("-"):  # a sub-command (`vitlab.bench startup`)
            assert importlib.util.find_spec(f"{module}.{args[0]}") is not None, f"{page}: `{cmd}`: no {module}.{args[0]}"
            continue
        name = module.removeprefix("vitlab.")
        if not (CONF / f"{name}.yaml").is_file():
            assert importlib.util.find_spec(module) is not None, f"{page}: `{cmd}`: no module {module}"
            continue
        overrides, multirun = hydra_overrides(args)
        if multirun:
            overrides = [first_of_sweep(o) for o in overrides]
        try:
            cfg = compose_job(name, overrides, tmp_path / "job")
            job_config(cfg)
        except Exception as e:  # noqa: BLE001 - the message names the page and the command
            raise AssertionError(f"{page}: `{cmd}` does not compose: {type(e).__name__}: {e}") from e
        finally:
            GlobalHydra.instance().clear()


#: what leaves the pages: vitlab's own issue numbers, dated measurements, a machine's load figures
HISTORY = re.compile(r"(?<!vision_transformer )\bissues?[- ]#?\d+|\b20\d\d-\d\d-\d\d\b|\bload(?: average)? \d", re.I)


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    head = "\n".join(lines[:40])
    assert "make train" in head and "make test" in head and "source .venv/bin/activate" in "\n".join(lines)


def test_pages_carry_no_issue_numbers_dates_or_load_figures():
    for page in ALL_PAGES:
        for i, line in enumerate(page.read_text().splitlines(), 1):
            assert not HISTORY.search(line), f"{page.relative_to(ROOT)}:{i}: {line.strip()}"


#: what a test adds to a documented training command to run it at CPU size
TINY = ["trainer.max_steps=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=none",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def readme_command(module: str) -> list[str]:
    """The arguments of the README's first unmarked ``python -m <module>`` command (not a multirun)."""
    for cmd, needs in bash_lines(ROOT / "README.md"):
        for argv in split_commands(cmd):
            task = vitlab_task(argv)
            if needs is None and task and task[0] == module and "-m" not in task[1]:
                return task[1]
    raise AssertionError(f"README.md has no `python -m {module}` example")


def test_readme_train_and_predict_examples_run_at_cpu_size(tmp_path):
    """The README's Train example, made tiny, trains (in-process); its Predict example labels images with the
    checkpoint that run wrote."""
    from PIL import Image

    from vitlab.predict import predict
    from vitlab.train import train

    run = tmp_path / "run"
    overrides, _ = hydra_overrides(readme_command("vitlab.train"))
    try:
        train(compose_job("train", [*overrides, *TINY], run))
    finally:
        GlobalHydra.instance().clear()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 40, 200)).save(photos / f"{i}.png")
    args = [a.replace("<run>", str(run)).replace("photos/", f"{photos}/").replace("out=", f"out={tmp_path}/", 1)
            for a in readme_command("vitlab.predict")]
    try:
        result = predict(compose_job("predict", hydra_overrides(args)[0], tmp_path / "predict"))
    finally:
        GlobalHydra.instance().clear()
    assert result["labelled"] == 3 and Path(result["out"]).is_file()


def test_readme_links_point_at_files():
    """The README is not part of the strict site build: its relative links are checked here."""
    for target in re.findall(r"\]\(([^)#:]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).is_file(), f"README.md links to {target}, which does not exist"
