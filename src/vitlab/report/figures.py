"""The paper's scaling figures from a table of runs (rows from ``vitlab.report.collect``).

- ``data_scaling.png``: accuracy against training examples, one line per model (paper Figures 3/4);
- ``compute.png``: accuracy against training compute, ViT vs ResNet vs hybrid (Figure 5), in the FLOPs unit
  that reads at the runs' scale (GFLOPs for a CPU demo, exaFLOPs for the paper's runs);
- ``report.html``: one self-contained page (figures inlined as base64 PNG) with the results table.
Several seeds of the same point are averaged, with their min-max as an error bar. Runs of different datasets or
protocols (scratch / fine-tune / ...) are separate lines, never averaged together; a dashed line marks chance
accuracy (1 / ``data/num_classes``).
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from vitlab import metrics as M
from vitlab.metrics import PAPER_ACC, PAPER_EXAFLOPS
from vitlab.models.registry import plot_style
from vitlab.report.collect import SCRATCH
from vitlab.utils.hydra_callbacks import fmt_cell


def _plt():
    matplotlib.use("Agg")  # files only, no window: chosen when vitlab draws, not for every program importing it
    import matplotlib.pyplot as plt  # kept here: pyplot fixes its backend when first imported

    return plt


def accuracy_key(rows: Sequence[dict[str, Any]], preferred: Sequence[str] = (M.TEST_ACC, M.VAL_ACC_BEST, M.VAL_ACC)) -> str:
    for key in preferred:
        if any(_num(r.get(key)) for r in rows):
            return key
    raise ValueError(f"no run has any of {list(preferred)}: nothing to plot (did the jobs finish a validation?)")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(key: str) -> str:
    return {M.TEST_ACC: "test accuracy", M.VAL_ACC_BEST: "best val accuracy", M.VAL_ACC: "val accuracy"}.get(key, key)


def _mean_band(values: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(values), min(values), max(values)


PAPER_STYLE = dict(color="0.55", marker="*", s=90, zorder=2, label="paper (same model, pretraining, fine-tuning data)")
#: a family's second, third... line (dataset or protocol): hollow markers, then other shapes, other dashes
_MORE_MARKERS = ("s", "^", "v", "D", "P")
_MORE_LINES = ("--", ":", "-.")


def _series_style(family: Any, n: int) -> dict[str, Any]:
    """Colour, marker, fill and line of the ``n``-th line of ``family`` (0: the family's own style, filled)."""
    style = plot_style(family)
    marker = style.marker if n <= 1 else _MORE_MARKERS[(n - 2) % len(_MORE_MARKERS)]
    return {"colour": style.colour, "marker": marker, "face": style.colour if n == 0 else "none",
            "ls": style.linestyle if n == 0 else _MORE_LINES[(n - 1) % len(_MORE_LINES)], "label": style.label}
#: FLOPs units, largest first: a figure uses the largest one in which its smallest run is at least 1
FLOP_UNITS = ((1e18, "exaFLOPs"), (1e15, "petaFLOPs"), (1e12, "teraFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"))


def flops_unit(exaflops: Sequence[float]) -> tuple[float, str]:
    """(factor from exaFLOPs, unit name) for values given in exaFLOPs: the largest unit in which the smallest
    value reads at least 1 (1.7e-8 exaFLOPs is 17 GFLOPs)."""
    low = min(exaflops) * 1e18
    for size, name in FLOP_UNITS:
        if low >= size:
            return 1e18 / size, name
    return 1e18 / FLOP_UNITS[-1][0], FLOP_UNITS[-1][1]


def _tick_text(v: float) -> str:
    if v >= 1e6:
        return f"{v:.3g}".replace("e+0", "e").replace("e+", "e")
    if v >= 1 and abs(v - round(v)) < 1e-9 * v:
        return f"{round(v):,}"
    return f"{v:.3g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """Between 2 and 8 round values (1, 2, 5 x 10^k; finer or coarser as the span asks) spanning [lo, hi]."""
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for mults in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), (1,)):
        ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in mults if lo / 1.05 <= m * 10.0**e <= hi * 1.05]
        if 2 <= len(ticks) <= 8:
            return ticks
    ticks = [10.0**e for e in range(e0, e1 + 1) if lo / 1.05 <= 10.0**e <= hi * 1.05]
    step = max(1, math.ceil(len(ticks) / 8))
    return ticks[::step] or [lo]


def _log_x(ax, xs: Sequence[float]) -> None:
    """A log x axis that reads: round tick values written out (no overlapping minor labels), some room at the
    ends so no marker sits on the frame."""
    lo, hi = min(xs), max(xs)
    ax.set_xscale("log")
    ax.set_xlim(lo / (1.3 if hi > lo else 2), hi * (1.3 if hi > lo else 2))
    ticks = log_ticks(*ax.get_xlim()) if hi > lo else [lo]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def chance_levels(rows: Sequence[dict[str, Any]]) -> dict[float, list[str]]:
    """Chance accuracy in % (100 / ``data/num_classes``) -> the datasets at it, for the runs that say."""
    out: dict[float, list[str]] = defaultdict(list)
    for r in rows:
        k = r.get(M.DATA_NUM_CLASSES)
        if _num(k) and k >= 2:
            name = str(r.get(M.DATA_NAME) or "?")
            if name not in out[100.0 / k]:
                out[100.0 / k].append(name)
    return dict(out)


def _draw_chance(ax, rows: Sequence[dict[str, Any]], accs: Sequence[float]) -> None:
    """A dashed line at each dataset's chance accuracy (drawn after the runs). One far below every run (10% under
    runs at 95-99%) is named in the legend without stretching the axis down to it."""
    levels = chance_levels(rows)
    lo, hi = min(accs), max(accs)
    for level, names in sorted(levels.items()):
        what = f" ({', '.join(names)})" if len(levels) > 1 else ""
        far = level < lo - max(hi - lo, 5.0)
        ylim = ax.get_ylim()
        ax.axhline(level, color="0.35", ls=(0, (4, 3)), lw=1, zorder=1,
                   label=f"chance: {level:.3g}%{what}" + (" (below the plotted range)" if far else ""))
        if far:
            ax.set_ylim(ylim)


def _series_label(parts: dict[str, Any], varying: set[str]) -> str:
    return " · ".join(str(parts[k]) for k in ("name", "data", "protocol") if k == "name" or k in varying)


def _series(rows: Sequence[dict[str, Any]], name_of: Callable[[dict[str, Any]], Any]) -> tuple[dict, set[str]]:
    """Rows by (name, dataset, protocol), and which of dataset / protocol differ between the rows."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(name_of(r), r.get(M.DATA_NAME), r.get(M.PROTOCOL))].append(r)
    varying = {k for i, k in ((1, "data"), (2, "protocol")) if len({g[i] for g in groups}) > 1}
    return groups, varying


def _pretraining(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every run trained from scratch (then train size and compute are pretraining's)."""
    return all(r.get(M.PROTOCOL) in (None, SCRATCH) for r in rows)


def paper_points(rows: Sequence[dict[str, Any]], x: str) -> list[tuple[float, float]]:
    """The paper's (x, accuracy %) for every run it also reports (``vitlab.report.paper_points``); x is the run's own
    ``x`` key, or the paper's compute (exaFLOPs) where ``x`` is the exaFLOPs axis."""
    pts = set()
    for r in rows:
        px = r.get(PAPER_EXAFLOPS) if x == M.TRAIN_EXAFLOPS else r.get(x)
        if _num(r.get(PAPER_ACC)) and _num(px) and px > 0:
            pts.add((float(px), 100 * float(r[PAPER_ACC])))
    return sorted(pts)


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The finish both scaling figures share: labels, grid, legend below the plot, saved and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} [%]")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith(("chance", "paper")), i))  # runs first
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, ncol=1 if len(handles) <= 14 else 2)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_data_scaling(rows: Sequence[dict[str, Any]], path: Path, y: str | None = None,
                      x: str = M.DATA_TRAIN_SIZE) -> Path:
    """Figure 3/4: accuracy vs number of training examples, one line per model (and dataset, protocol)."""
    plt = _plt()
    y = y or accuracy_key(rows)
    used = [r for r in rows if _num(r.get(x)) and r[x] > 0 and _num(r.get(y))]
    if not used:
        raise ValueError(f"no run has both {x} and {y}: cannot draw the data-scaling figure")
    groups, varying = _series(used, lambda r: str(r.get(M.MODEL_NAME, "?")))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    per_family: dict[Any, int] = defaultdict(int)
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        grp = groups[key]
        fam = grp[0].get(M.MODEL_FAMILY)
        st = _series_style(fam, per_family[str(fam)])
        per_family[str(fam)] += 1
        by_x: dict[float, list[float]] = defaultdict(list)
        for r in grp:
            by_x[float(r[x])].append(100 * float(r[y]))
        pts = sorted(by_x.items())
        stats = [_mean_band(v) for _, v in pts]
        err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
        spread = any(e > 0 for side in err for e in side)  # seeds of one point: their min-max as an error bar
        ax.errorbar([p[0] for p in pts], [s[0] for s in stats], yerr=err if spread else None, marker=st["marker"],
                    color=st["colour"], markerfacecolor=st["face"], capsize=3, lw=1.8, ls=st["ls"],
                    label=_series_label({"name": key[0], "data": key[1], "protocol": key[2]}, varying))
    pts = paper_points(rows, x)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], **PAPER_STYLE)
    _draw_chance(ax, used, [100 * float(r[y]) for r in used])
    _log_x(ax, [float(r[x]) for r in used] + [p[0] for p in pts])
    what = "pretraining examples" if _pretraining(used) else "training examples of the run"
    return _finish(plt, fig, ax, path, f"{what} ({x}, log scale)", _label(y),
                   "Accuracy vs training data (paper Fig. 3/4)")


def plot_compute(rows: Sequence[dict[str, Any]], path: Path, y: str | None = None, x: str = M.TRAIN_EXAFLOPS) -> Path:
    """Figure 5: accuracy vs total training compute, ViT vs ResNet vs hybrid, with each family's frontier (the best
    accuracy reached with at most that much compute); the families' models are named in the legend."""
    plt = _plt()
    y = y or accuracy_key(rows)
    used = [r for r in rows if _num(r.get(x)) and r[x] > 0 and _num(r.get(y))]
    if not used:
        raise ValueError(f"no run has both {x} and {y}: cannot draw the compute figure (train/exaflops comes from "
                         "the ComputeTracker callback, on by default)")
    paper = paper_points(rows, x)
    factor, unit = flops_unit([float(r[x]) for r in used] + [p[0] for p in paper])
    groups, varying = _series(used, lambda r: r.get(M.MODEL_FAMILY))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    per_family: dict[Any, int] = defaultdict(int)
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        grp = groups[key]
        st = _series_style(key[0], per_family[str(key[0])])
        per_family[str(key[0])] += 1
        fp = sorted((float(r[x]) * factor, 100 * float(r[y])) for r in grp)
        models = sorted({str(r.get(M.MODEL_NAME, "?")) for r in grp})
        names = ", ".join(models[:3]) + (f" +{len(models) - 3} more" if len(models) > 3 else "")
        label = _series_label({"name": f"{st['label']}: {names}", "data": key[1], "protocol": key[2]}, varying)
        ax.scatter([p[0] for p in fp], [p[1] for p in fp], marker=st["marker"], s=36, zorder=3, label=label,
                   edgecolors=st["colour"], facecolors=st["face"])
        frontier, best = [], -1.0
        for p in fp:
            if p[1] > best:
                best = p[1]
                frontier.append(p)
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color=st["colour"], alpha=0.6, lw=1.2, ls=st["ls"])
    if paper:
        ax.scatter([p[0] * factor for p in paper], [p[1] for p in paper], **PAPER_STYLE)
    _draw_chance(ax, used, [100 * float(r[y]) for r in used])
    _log_x(ax, [float(r[x]) * factor for r in used] + [p[0] * factor for p in paper])
    what = "total pretraining compute" if _pretraining(used) else "training compute of the run"
    return _finish(plt, fig, ax, path, f"{what} [{unit}, log scale]", _label(y),
                   "Accuracy vs training compute (paper Fig. 5)")


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

