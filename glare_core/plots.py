"""Result tables and figures from ``results/`` (never from retyped numbers).

Every function here reads the cell JSONs written by :mod:`glare_core.experiments` (or the benchmark's
``results/efficiency/bench.json``) and draws or renders them:

* :func:`main_bars`: mean +- std (over seeds) linear-probe mIoU per method and dataset (the main table);
* :func:`per_class_bars`: per-class IoU of several methods on one dataset;
* :func:`ablation_bars`: the ablations, grouped, with the reference row as a dashed line;
* :func:`efficiency_bars`: images/s and peak memory of the benchmarked training steps;
* :func:`markdown_table`, :func:`fmt_mean_std`: the markdown renderer the book and ``summary.md`` use.

Each plotting function returns a ``matplotlib`` Figure (a notebook shows it; end the cell with ``plt.show()``)
and accepts ``ax`` to draw into an existing axis. :func:`table_figures` writes the PNGs of ``glare experiment
report``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .experiments import RESULTS_DIR, load_cells, table_summary


# ============================================================================================ markdown
def fmt_mean_std(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """``"55.3 ± 0.4"`` (``scale`` 100 turns fractions into %); ``"55.3"`` without a std; ``"-"`` without a
    mean."""
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table. ``align``: one letter per column (l, r, c); default: first column
    left, the others right. Cells are converted with ``str`` (``None`` becomes ``-``); ``|`` is escaped."""
    n = len(headers)
    align = align or ("l" + "r" * (n - 1))
    if len(align) != n or any(len(r) != n for r in rows):
        raise ValueError(
            f"markdown_table: {n} headers, align {align!r}, rows of lengths {[len(r) for r in rows]}"
        )

    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")

    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join(rule[a] for a in align) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


METRIC_NAMES = {"miou": "linear-probe mIoU", "pixel_acc": "pixel accuracy", "knn_top1": "k-NN top-1"}


# ============================================================================================ helpers
def _axis(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _summary(results_dir: str | Path | None, table: str) -> list[dict[str, Any]]:
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
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


# ============================================================================================ figures
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


def read_bench(results_dir: str | Path | None = None) -> dict[str, Any]:
    """``results/efficiency/bench.json`` (written by ``glare experiment efficiency``)."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / "efficiency" / "bench.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} not found. Fix: run `glare experiment efficiency`.") from e
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}). Fix: delete it and rerun `glare experiment efficiency`."
        ) from e


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
        bars = ax.bar(names, vals, color=["C0", "C1", "C2", "C3"][: len(names)])
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


def efficiency_markdown(results_dir: str | Path | None = None) -> str:
    """The benchmark as a markdown table (images/s, s/step, peak memory, GFLOP/s, fraction of bf16 peak)."""
    bench = read_bench(results_dir)
    rows = []
    for name, v in bench["variants"].items():
        rows.append(
            [
                name,
                v.get("precision", "-"),
                f"{v['images_per_s']:.2f}" if "images_per_s" in v else "-",
                f"{v['seconds_per_step']:.2f}" if "seconds_per_step" in v else "-",
                f"{v['peak_memory_mb']:.0f}" if "peak_memory_mb" in v else "-",
                f"{v['achieved_flops'] / 1e9:.0f}" if "achieved_flops" in v else "-",
                f"{100 * v['fraction_of_bf16_matmul_peak']:.0f} %"
                if "fraction_of_bf16_matmul_peak" in v
                else "-",
            ]
        )
    head = ["step", "precision", "images/s", "s/step", "peak MB", "GFLOP/s", "of bf16 matmul peak"]
    text = markdown_table(head, rows)
    goals = bench.get("goals", {})
    if goals:
        text += "\n\n" + markdown_table(
            ["goal", "value", "target", "met"],
            [[k, f"{g['value']:.3f}", g["goal"], "yes" if g["met"] else "no"] for k, g in goals.items()],
        )
    m = bench.get("machine", {})
    return (
        text
        + f"\n\nMachine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}.\n"
    )


def write_efficiency_markdown(results_dir: str | Path | None = None) -> Path:
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / "efficiency" / "efficiency.md"
    path.write_text(efficiency_markdown(results_dir))
    return path


def table_figures(results_dir: str | Path, table: str) -> dict[str, Path]:
    """Write a table's PNG figures into ``results/<table>/``; returns {file name: path}."""
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
    if table == "ablations":
        save(ablation_bars(results_dir, table), "ablations_miou.png")
    else:
        save(main_bars(results_dir, table), f"{table}_miou.png")
    for d in _ordered(e["dataset"] for e in summary):
        save(per_class_bars(results_dir, table, d), f"per_class_iou_{d}.png")
    return out


__all__ = [
    "ablation_bars",
    "efficiency_bars",
    "efficiency_markdown",
    "fmt_mean_std",
    "main_bars",
    "markdown_table",
    "per_class_bars",
    "read_bench",
    "table_figures",
    "write_efficiency_markdown",
]
