"""Figures of the study, drawn from ``results/`` alone (never from retyped numbers).

* :func:`main_bars`: mean +- std (over seeds) linear-probe mIoU per method and dataset (the main table);
* :func:`per_class_bars`: per-class IoU of several methods on one dataset;
* :func:`per_class_difference_bars`: per-class IoU of one row minus another, seed-paired;
* :func:`ablation_bars`: the ablations, grouped, with the reference row as a dashed line;
* :func:`neighbours_bars`: the PiPa / SSR table, with each term's seed-paired effect;
* :func:`efficiency_bars`: images/s and peak memory of the benchmarked training steps;
* :func:`forest_plot`: the pre-registered study's seed-paired differences with their 95 % and Bonferroni
  intervals (:mod:`glare_core.study.analysis`).

Each returns a ``matplotlib`` Figure (a notebook shows it; end the cell with ``plt.show()``); most accept
``ax``. :func:`table_figures` and :func:`write_figures` write the PNGs of ``glare experiment report``.
matplotlib is imported inside the functions, so that the rest of the study loads without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import method_label, result_tables
from .stats import mean_std, table_summary
from .store import load_cells, read_bench, results_path
from .tables import table_kind

METRIC_NAMES = {"miou": "linear-probe mIoU", "pixel_acc": "pixel accuracy", "knn_top1": "k-NN top-1"}


def _axis(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _summary(results_dir: str | Path | None, table: str) -> list[dict[str, Any]]:
    results_dir = results_path(results_dir)
    if not load_cells(results_dir, table):
        raise FileNotFoundError(
            f"no results in {results_dir / table / 'cells'}. Fix: run `glare experiment {table}` (or "
            f"`--smoke` for a quick look)."
        )
    return table_summary(results_dir, table)


def _ordered(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def main_bars(results_dir: str | Path | None = None, table: str = "main", metric: str = "miou", ax=None):
    """Grouped bars: one group per dataset, one bar per method, mean +- std over seeds (error bars)."""
    summary = _summary(results_dir, table)
    datasets = _ordered((e["dataset"], e["dataset_label"]) for e in summary)
    rows = _ordered((e["row"], e["row_label"]) for e in summary)
    by = {(e["row"], e["dataset"]): e for e in summary}
    fig, ax = _axis(ax, (max(6, 1.6 * len(datasets) * len(rows) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, (r, label) in enumerate(rows):
        xs, ys, errs = [], [], []
        for j, (d, _) in enumerate(datasets):
            e = by.get((r, d))
            if e is None or e[f"{metric}_mean"] is None:
                continue
            xs.append(j + (i - (len(rows) - 1) / 2) * width)
            ys.append(100 * e[f"{metric}_mean"])
            errs.append(100 * (e[f"{metric}_std"] or 0.0))
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(datasets)), [lab for _, lab in datasets])
    name = METRIC_NAMES.get(metric, metric)
    ax.set_ylabel(f"{name} (%)")
    n = sorted({e["n"] for e in summary})
    ax.set_title(f"{table}: {name} on val (mean ± std over {'/'.join(map(str, n))} seed(s))")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(rows)))
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def per_class_bars(
    results_dir: str | Path | None = None,
    table: str = "main",
    dataset: str = "camvid",
    rows: Sequence[str] | None = None,
    ax=None,
):
    """Per-class IoU (mean over seeds) of ``rows`` (default: all) on one dataset, one bar group per class."""
    summary = [e for e in _summary(results_dir, table) if e["dataset"] == dataset]
    if not summary:
        raise ValueError(f"table {table!r} has no results for dataset {dataset!r}")
    if rows is not None:
        summary = [e for e in summary if e["row"] in rows]
    classes = _ordered(k for e in summary for k in e["per_class_iou_mean"])
    fig, ax = _axis(ax, (max(7, 0.7 * len(classes) * max(1, len(summary)) / 2), 4))
    width = 0.8 / max(1, len(summary))
    for i, e in enumerate(summary):
        vals = [e["per_class_iou_mean"].get(c) for c in classes]
        xs = [j + (i - (len(summary) - 1) / 2) * width for j, v in enumerate(vals) if v is not None]
        ys = [100 * v for v in vals if v is not None]
        ax.bar(xs, ys, width, label=e["row_label"])
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"{table}: per-class IoU on {summary[0]['dataset_label']} (mean over seeds)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(3, len(summary)))
    fig.tight_layout()
    return fig


def ablation_bars(
    results_dir: str | Path | None = None,
    table: str = "ablations",
    dataset: str | None = None,
    reference_row: str = "G_L_R",
    ax=None,
):
    """Horizontal bars of mIoU per ablation row, grouped (``row_group``) and coloured by group; the reference
    row's mIoU is a dashed vertical line."""
    summary = _summary(results_dir, table)
    dataset = dataset or summary[0]["dataset"]
    summary = [e for e in summary if e["dataset"] == dataset]
    groups = _ordered(e["row_group"] for e in summary)
    summary = sorted(summary, key=lambda e: groups.index(e["row_group"]))
    fig, ax = _axis(ax, (9, 0.4 * len(summary) + 1.5))
    import matplotlib as mpl

    colours = mpl.colormaps["tab10"]
    ys = list(range(len(summary)))[::-1]
    vals = [100 * e["miou_mean"] for e in summary]
    errs = [100 * (e["miou_std"] or 0.0) for e in summary]
    bars = ax.barh(
        ys, vals, xerr=errs, color=[colours(groups.index(e["row_group"]) % 10) for e in summary], capsize=2
    )
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks(
        ys, [f"{e['row_label']}" + (f"  [{e['row_group']}]" if e["row_group"] else "") for e in summary]
    )
    ref = next((e for e in summary if e["row"] == reference_row), None)
    if ref is not None:
        ax.axvline(100 * ref["miou_mean"], ls="--", c="k", lw=1, label=f"{ref['row_label'].split(' (')[0]}")
        ax.legend(fontsize=8, loc="lower right")
    lo = min(vals) - 3 * max(1.0, max(errs, default=0))
    ax.set_xlim(left=max(0, lo))
    ax.set_xlabel("mIoU (%)")
    ax.set_title(f"{table} on {summary[0]['dataset_label']}: linear-probe mIoU on val", fontsize=10)
    fig.tight_layout()
    return fig


def efficiency_bars(results_dir: str | Path | None = None, axes=None):
    """Two panels from the benchmark: images/s and peak memory (MB) per measured step variant."""
    import matplotlib.pyplot as plt

    bench = read_bench(results_dir)
    variants = bench["variants"]
    names = list(variants)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    else:
        fig = axes[0].figure
    for ax, key, label in (
        (axes[0], "images_per_s", "images / s (best round)"),
        (axes[1], "peak_memory_mb", "peak memory (MB)"),
    ):
        vals = [variants[n].get(key) or 0 for n in names]
        bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.2f" if key == "images_per_s" else "%.0f", fontsize=8)
        ax.set_title(label)
    m = bench.get("machine", {})
    fig.suptitle(
        f"training step, batch {bench.get('batch_size')}, {bench.get('image_size')} px; "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def per_class_difference_bars(
    results_dir: str | Path | None = None,
    table: str = "main",
    dataset: str = "camvid",
    row: str = "glare",
    reference: str = "base",
    ax=None,
):
    """Per-class IoU of ``row`` minus ``reference`` (IoU points, mean over the seeds both have finished)."""
    results_dir = results_path(results_dir)
    cells = [c for c in load_cells(results_dir, table) if c["dataset"] == dataset]
    got = {(c["row"], c["seed"]): c for c in cells}
    seeds = sorted(s for (r, s) in got if r == row and (reference, s) in got)
    if not seeds:
        raise ValueError(
            f"table {table!r}: no seed with both {row!r} and {reference!r} finished on {dataset}"
        )
    classes = _ordered(k for s in seeds for k in got[(row, s)]["metrics"].get("per_class_iou", {}))
    deltas = []
    for k in classes:
        pairs = [
            (
                got[(row, s)]["metrics"]["per_class_iou"].get(k),
                got[(reference, s)]["metrics"]["per_class_iou"].get(k),
            )
            for s in seeds
        ]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        deltas.append(100 * sum(a - b for a, b in pairs) / len(pairs) if pairs else 0.0)
    fig, ax = _axis(ax, (max(6, 0.6 * len(classes)), 3.2))
    bars = ax.bar(range(len(classes)), deltas, color=["C2" if v >= 0 else "C3" for v in deltas])
    ax.bar_label(bars, fmt="%+.1f", fontsize=7, padding=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_ylabel("IoU difference (points)")
    first = got[(row, seeds[0])]
    ax.set_title(
        f"{first.get('row_label', row)} minus {got[(reference, seeds[0])].get('row_label', reference)} on "
        f"{first.get('dataset_label', dataset)} (seeds {', '.join(map(str, seeds))})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def neighbours_bars(
    results_dir: str | Path | None = None, table: str = "neighbours", dataset: str | None = None
):
    """The PiPa / SSR table (chapter 10): light-decoder mIoU per set of extra training terms and backbone.

    Left: mean ± std over seeds (error bars) of each (terms, backbone), every seed a dot. Right: the effect
    of each term, seed-paired, on each backbone: mIoU(decoder + terms, seed s) - mIoU(decoder alone, seed s),
    mean over the seeds both have finished, every seed a dot. Read from the cell JSONs alone.
    """
    import matplotlib.pyplot as plt

    results_dir = results_path(results_dir)
    summary = _summary(results_dir, table)
    dataset = dataset or summary[0]["dataset"]
    summary = [e for e in summary if e["dataset"] == dataset]
    cells = [c for c in load_cells(results_dir, table) if c["dataset"] == dataset]
    methods = _ordered(tuple(e.get("terms", ())) for e in summary)
    backbones = [b for b in ("base", "adapted") if any(e.get("backbone", "base") == b for e in summary)]
    names = {"base": "base", "adapted": "GLARE-adapted"}
    miou = {
        (tuple(c.get("terms", ())), c.get("backbone", "base"), c["seed"]): c["metrics"]["miou"] for c in cells
    }
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(backbones))
    for i, b in enumerate(backbones):
        colour = f"C{i}"
        for j, terms in enumerate(methods):
            x = j + (i - (len(backbones) - 1) / 2) * width
            vals = [100 * v for (t, bb, _), v in miou.items() if t == terms and bb == b]
            if not vals:
                continue
            mean, std, n = mean_std(vals)
            ax.errorbar(
                x,
                mean,
                yerr=std or 0.0,
                fmt="s",
                color=colour,
                capsize=4,
                ms=7,
                label=names[b] if j == 0 else None,
            )
            ax.plot([x + 0.08] * n, vals, ".", color=colour, alpha=0.6)
            ax.annotate(
                f"{mean:.1f}", (x, mean), textcoords="offset points", xytext=(-22, 0), fontsize=7, va="center"
            )
        for j, terms in enumerate(methods[1:], start=1):
            seeds = sorted({s for (t, bb, s) in miou if t == terms and bb == b and ((), b, s) in miou})
            diffs = [100 * (miou[(terms, b, s)] - miou[((), b, s)]) for s in seeds]
            if not diffs:
                continue
            x = j - 1 + (i - (len(backbones) - 1) / 2) * width
            ax2.bar(
                x, sum(diffs) / len(diffs), width, color=colour, alpha=0.5, label=names[b] if j == 1 else None
            )
            ax2.plot([x] * len(diffs), diffs, ".", color=colour)
    ax.set_xticks(range(len(methods)), [method_label(t, short=True) for t in methods], fontsize=8)
    ax.set_ylabel("mIoU on val (%)")
    ns = sorted({e["n"] for e in summary})
    ax.set_title(
        f"{summary[0]['dataset_label']}: light decoder (mean ± std over {'/'.join(map(str, ns))} "
        "seed(s); dots: seeds)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax2.axhline(0, color="k", lw=0.8)
    effects = [method_label(t, short=True) for t in methods[1:]] or [""]
    ax2.set_xticks(range(len(effects)), effects, fontsize=8)
    ax2.set_ylabel("mIoU difference (points)")
    ax2.set_title("effect of the term: minus the decoder alone (same seed)", fontsize=9)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def forest_plot(endpoints: Sequence[dict[str, Any]], ax=None):
    """One row per endpoint of :func:`glare_core.study.analysis.analyse` (those with n >= 2): the mean
    seed-paired difference (points), its Bonferroni interval (thin line, the family's corrected interval), its
    95 % t-interval (thick line) and each seed's difference (small dots); a vertical line at 0. Interim
    endpoints (fewer seeds than planned) are drawn in grey and labelled so."""
    rows = [e for e in endpoints if e["ci95"] is not None]
    fig, ax = _axis(ax, (7, 0.45 * max(len(rows), 2) + 1))
    for y, e in enumerate(reversed(rows)):
        colour = "0.6" if e["interim"] else "C0"
        ax.plot(e["ci_bonferroni"], [y, y], color=colour, lw=1)
        ax.plot(e["ci95"], [y, y], color=colour, lw=4, solid_capstyle="butt")
        ax.plot([e["mean"]], [y], "o", color="k" if not e["interim"] else "0.4", ms=5)
        ax.plot(e["diffs"], [y] * len(e["diffs"]), "|", color="k", ms=6, alpha=0.5)
    ax.axvline(0, color="k", lw=0.8)
    labels = []
    for e in reversed(rows):
        interim = ", interim" if e["interim"] else ""
        labels.append(f"{e['key']} {e['label']} ({e['dataset']}, {e['value']}; n={e['n']}{interim})")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("difference (points); thick: 95 % CI, thin: Bonferroni CI, ticks: seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def table_figures(results_dir: str | Path, table: str) -> dict[str, Path]:
    """Write a table's PNG figures into ``<results_dir>/<table>/``: its mIoU figure (:func:`main_bars`,
    :func:`ablation_bars` or :func:`neighbours_bars`) and per-class IoU per dataset; for ``efficiency``,
    :func:`efficiency_bars`. Returns {file name: path}."""
    import matplotlib.pyplot as plt

    folder = Path(results_dir) / table
    out: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        out[name] = folder / name

    if table == "efficiency":
        save(efficiency_bars(results_dir), "efficiency.png")
        return out
    summary = _summary(results_dir, table)
    if table_kind(table) == "segmentation":
        save(neighbours_bars(results_dir, table), f"{table}_miou.png")
    elif table == "ablations":
        save(ablation_bars(results_dir, table), "ablations_miou.png")
    else:
        save(main_bars(results_dir, table), f"{table}_miou.png")
    for d in _ordered(e["dataset"] for e in summary):
        save(per_class_bars(results_dir, table, d), f"per_class_iou_{d}.png")
    return out


def write_figures(results_dir: str | Path | None = None) -> dict[str, Path]:
    """Draw every table's PNGs (:func:`table_figures`) and the benchmark's from the result files alone.
    Returns {"<table>/<file>": path}."""
    results_dir = results_path(results_dir)
    written: dict[str, Path] = {}
    tables = [t for t in result_tables(results_dir) if load_cells(results_dir, t)]
    if (results_dir / "efficiency" / "bench.json").exists():
        tables.append("efficiency")
    for table in tables:
        written.update({f"{table}/{k}": v for k, v in table_figures(results_dir, table).items()})
    return written
