"""The paper's scaling figures from a table of runs (rows from ``vitlab.report.collect``).

- ``data_scaling.png``: accuracy against pretraining examples, one line per model (paper Figures 3/4);
- ``compute.png``: accuracy against pretraining compute in exaFLOPs, ViT vs ResNet vs hybrid (Figure 5);
- ``report.html``: one self-contained page (figures inlined as base64 PNG) with the results table.
Several seeds of the same point are averaged, with their min-max as an error bar.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from vitlab import metrics as M
from vitlab.metrics import PAPER_ACC, PAPER_EXAFLOPS
from vitlab.models.registry import plot_style
from vitlab.utils.hydra_callbacks import fmt_cell


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_key(rows: Sequence[dict[str, Any]], preferred: Sequence[str] = (M.TEST_ACC, M.VAL_ACC_BEST, M.VAL_ACC)) -> str:
    for key in preferred:
        if any(isinstance(r.get(key), (int, float)) for r in rows):
            return key
    raise ValueError(f"no run has any of {list(preferred)}: nothing to plot (did the jobs finish a validation?)")


def _label(key: str) -> str:
    return {M.TEST_ACC: "test accuracy", M.VAL_ACC_BEST: "best val accuracy", M.VAL_ACC: "val accuracy"}.get(key, key)


def _style(family: Any) -> tuple[str, str]:
    """Colour and marker of a family (its module says; the paper's Figure 5 uses one colour per family)."""
    return plot_style(family)[:2]


def _mean_band(values: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(values), min(values), max(values)


PAPER_STYLE = dict(color="0.55", marker="*", s=90, zorder=2, label="paper (same model, pretraining, fine-tuning data)")


def paper_points(rows: Sequence[dict[str, Any]], x: str) -> list[tuple[float, float]]:
    """The paper's (x, accuracy %) for every run it also reports (``vitlab.report.paper_points``); x is the run's own
    ``x`` key, or the paper's compute where ``x`` is the exaFLOPs axis."""
    pts = set()
    for r in rows:
        px = r.get(PAPER_EXAFLOPS) if x == M.TRAIN_EXAFLOPS else r.get(x)
        if isinstance(r.get(PAPER_ACC), (int, float)) and isinstance(px, (int, float)) and px > 0:
            pts.add((float(px), 100 * float(r[PAPER_ACC])))
    return sorted(pts)


def _draw_paper(ax, rows: Sequence[dict[str, Any]], x: str) -> None:
    pts = paper_points(rows, x)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], **PAPER_STYLE)


def _save_log_x(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The finish both scaling figures share: log x axis, labels, grid, legend, saved and closed."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} [%]")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_data_scaling(rows: Sequence[dict[str, Any]], path: Path, y: str | None = None,
                      x: str = M.DATA_TRAIN_SIZE) -> Path:
    """Figure 3/4: accuracy vs number of pretraining examples, one line per model."""
    plt = _plt()
    y = y or accuracy_key(rows)
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    family: dict[str, Any] = {}
    for r in rows:
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)):
            name = str(r.get(M.MODEL_NAME, "?"))
            series[name][float(r[x])].append(100 * float(r[y]))
            family[name] = r.get(M.MODEL_FAMILY)
    if not series:
        raise ValueError(f"no run has both {x} and {y}: cannot draw the data-scaling figure")
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for name in sorted(series, key=lambda n: (str(family[n]), n)):
        pts = sorted(series[name].items())
        xs = [p[0] for p in pts]
        stats = [_mean_band(v) for _, v in pts]
        means = [s[0] for s in stats]
        err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
        colour, marker = _style(family[name])
        ax.errorbar(xs, means, yerr=err, marker=marker, color=colour, capsize=3, lw=1.8,
                    ls=plot_style(family[name]).linestyle, label=name)
    _draw_paper(ax, rows, x)
    return _save_log_x(plt, fig, ax, path, "number of pretraining examples (data/train_size)", _label(y),
                       "Accuracy vs pretraining data (paper Fig. 3/4)")


def plot_compute(rows: Sequence[dict[str, Any]], path: Path, y: str | None = None, x: str = M.TRAIN_EXAFLOPS) -> Path:
    """Figure 5: accuracy vs total pretraining compute (exaFLOPs), ViT vs ResNet vs hybrid, with each family's frontier."""
    plt = _plt()
    y = y or accuracy_key(rows)
    pts = [(float(r[x]), 100 * float(r[y]), r.get(M.MODEL_FAMILY), str(r.get(M.MODEL_NAME, "?")))
           for r in rows if isinstance(r.get(x), (int, float)) and r[x] > 0 and isinstance(r.get(y), (int, float))]
    if not pts:
        raise ValueError(f"no run has both {x} and {y}: cannot draw the compute figure (train/exaflops comes from "
                         "the ComputeTracker callback, on by default)")
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for fam in sorted({p[2] for p in pts}, key=str):
        fp = sorted(p for p in pts if p[2] == fam)
        colour, marker = _style(fam)
        ax.scatter([p[0] for p in fp], [p[1] for p in fp], color=colour, marker=marker, s=36,
                   label=plot_style(fam).label, zorder=3)
        frontier, best = [], -1.0
        for p in fp:  # best accuracy reached with at most this much compute
            if p[1] > best:
                best = p[1]
                frontier.append(p)
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color=colour, alpha=0.6, lw=1.2)
    if len(pts) <= 16:
        for p in pts:
            ax.annotate(p[3], (p[0], p[1]), fontsize=6, xytext=(3, 3), textcoords="offset points", alpha=0.7)
    _draw_paper(ax, rows, x)
    return _save_log_x(plt, fig, ax, path, "total pretraining compute [exaFLOPs]", _label(y),
                       "Accuracy vs pretraining compute (paper Fig. 5)")


def html_page(title: str, figures: dict[str, Path], table_rows: Sequence[dict[str, Any]], columns, notes: str = "") -> str:
    """One self-contained HTML page: the figures inlined, then the table."""
    imgs = []
    for name, p in figures.items():
        b64 = base64.b64encode(Path(p).read_bytes()).decode()
        imgs.append(f'<figure><img id="fig-{html.escape(name)}" alt="{html.escape(name)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(name)}</figcaption></figure>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_cell(r.get(k), f))}</td>" for _, k, f in columns) + "</tr>"
        for r in table_rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} img {{ max-width: 640px; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(notes)} Generated {datetime.now():%Y-%m-%d %H:%M} by <code>python -m vitlab.report</code>.</p>
<section id="figures">{''.join(imgs)}</section>
<h2>Runs ({len(table_rows)})</h2>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
</body></html>
"""

