"""Result tables and figures from ``results/`` (never from retyped numbers).

Every function here reads the cell JSONs written by :mod:`glare_core.experiments` (or the benchmark's
``results/efficiency/bench.json``) and draws or renders them:

* :func:`main_bars`: mean +- std (over seeds) linear-probe mIoU per method and dataset (the main table);
* :func:`per_class_bars`: per-class IoU of several methods on one dataset;
* :func:`ablation_bars`: the ablations, grouped, with the reference row as a dashed line;
* :func:`efficiency_bars`: images/s and peak memory of the benchmarked training steps;
* :func:`markdown_table`, :func:`fmt_mean_std`: the markdown renderer the book and ``summary.md`` use;
* chapter 9 (results): :func:`table_status` (done / pending / stale cells, commits, machines),
  :func:`results_markdown` (the main table with n, k-NN forgetting, parameters, minutes),
  :func:`paired_difference` and :func:`comparison_lines` (seed-paired differences, as sentences generated
  from the data), :func:`per_class_difference_bars`, :func:`qualitative_figure`;
* chapter 11 (efficiency): :func:`speedup_decomposition` (measured speedup = peak ratio x efficiency ratio x
  FLOP ratio) and :func:`machines_markdown` (the same benchmark on every machine it was run on).

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


def _efficiency_dir(results_dir: str | Path | None) -> Path:
    """``<results>/efficiency`` (``results/`` of the repository when ``results_dir`` is None)."""
    return (Path(results_dir) if results_dir is not None else RESULTS_DIR) / "efficiency"


def read_bench(results_dir: str | Path | None = None, name: str = "bench.json") -> dict[str, Any]:
    """``results/efficiency/bench.json`` (written by ``glare experiment efficiency``), or another benchmark
    file of that folder by ``name`` (an earlier machine's, e.g. ``bench_amd_epyc.json``)."""
    path = _efficiency_dir(results_dir) / name
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


def fp32_variant(bench: dict[str, Any]) -> str:
    """The benchmark's float32 GLARE step: ``glare_fp32`` (forced fp32 of the real step), or ``naive_fp32`` in
    files written before the benchmark timed :func:`glare_core.train.train_step`."""
    return "glare_fp32" if "glare_fp32" in bench["variants"] else "naive_fp32"


def _own_peak_fraction(v: dict[str, Any]) -> str:
    if "fraction_of_own_precision_matmul_peak" in v:
        return f"{100 * v['fraction_of_own_precision_matmul_peak']:.0f} %"
    return "-"


def efficiency_markdown(results_dir: str | Path | None = None) -> str:
    """The benchmark as a markdown table (images/s, s/step, peak memory, GFLOP/s, fraction of the matmul peak
    of the step's own precision), its goals and machine."""
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
                _own_peak_fraction(v),
            ]
        )
    head = ["step", "precision", "images/s", "s/step", "peak MB", "GFLOP/s", "of its precision's matmul peak"]
    text = markdown_table(head, rows)
    goals = bench.get("goals", {})
    if goals:
        text += "\n\n" + markdown_table(
            ["goal", "value", "target", "met"],
            [[k, f"{g['value']:.3f}", g["goal"], "yes" if g["met"] else "no"] for k, g in goals.items()],
        )
    m = bench.get("machine", {})
    auto = bench.get("auto_precision")
    chosen = f" `auto` picks {auto['name']} here: {auto['reason']}." if auto else ""
    return (
        text
        + f"\n\nMachine: {m.get('cpu', '?')} (torch CPU capability {kernels_label(m)}), "
        + f"{m.get('cores', '?')} cores, torch threads: {m.get('torch_threads', '?')}, "
        + f"torch {m.get('torch', '?')}.{chosen}\n"
    )


def bench_files(results_dir: str | Path | None = None) -> list[str]:
    """Names of the benchmark files in ``results/efficiency/``: ``bench.json`` first, then earlier machines'
    ``bench_*.json`` in name order."""
    names = (p.name for p in _efficiency_dir(results_dir).glob("bench*.json"))
    return sorted(names, key=lambda n: (n != "bench.json", n))


def bench_is_earlier(bench: dict[str, Any]) -> bool:
    """True for a file of the earlier benchmark, which timed a re-implemented step (its variants are glare,
    dino_only and naive_fp32, in fixed precisions) rather than :func:`glare_core.train.train_step`."""
    return "step" not in bench and "naive_fp32" in bench["variants"]


def bf16_variant(bench: dict[str, Any]) -> str | None:
    """The benchmark's bf16 GLARE step: ``glare_bf16`` (forced), or ``glare`` in an earlier file (bf16)."""
    v = bench["variants"]
    if "glare_bf16" in v:
        return "glare_bf16"
    return "glare" if v.get("glare", {}).get("precision") == "bf16" else None


def kernels_label(machine: dict[str, Any]) -> str:
    """torch's CPU capability, and the kernel limits set to emulate a lesser processor, if any."""
    text = machine.get("cpu_capability", "?")
    limits = machine.get("kernel_limits") or {}
    if limits:
        text += " limited to " + "/".join(sorted({str(x).upper() for x in limits.values()}))
    return text


def machines_markdown(results_dir: str | Path | None = None) -> str:
    """One row per benchmark file: which benchmark wrote it, the machine (CPU, torch kernels, threads), the
    bf16 / fp32 matmul peaks (and the matmul size), the precision of the ``glare`` step (``auto``'s choice,
    or bf16 fixed in an earlier file), the images/s of that step, of the bf16 and of the fp32 GLARE steps,
    its speedup over each, and the fraction of its own precision's matmul peak it reaches."""
    rows = []
    for name in bench_files(results_dir):
        b = read_bench(results_dir, name)
        v, peaks, m = b["variants"], b["matmul_flops"], b.get("machine", {})
        glare, fp32, bf16 = v["glare"], v[fp32_variant(b)], bf16_variant(b)
        auto = b.get("auto_precision")
        rows.append(
            [
                f"`{name}`",
                "earlier (re-implemented step)" if bench_is_earlier(b) else "train_step",
                m.get("cpu", "?"),
                kernels_label(m),
                str(m.get("torch_threads", "?")),
                f"{peaks['bf16'] / 1e9:.0f} / {peaks['fp32'] / 1e9:.0f} ({peaks.get('n', '?')})",
                f"{auto['name']} (auto)" if auto else f"{glare['precision']} (fixed)",
                f"{glare['images_per_s']:.2f} / "
                + (f"{v[bf16]['images_per_s']:.2f}" if bf16 else "-")
                + f" / {fp32['images_per_s']:.2f}",
                f"{glare['images_per_s'] / v[bf16]['images_per_s']:.2f}" if bf16 else "-",
                f"{glare['images_per_s'] / fp32['images_per_s']:.2f}",
                f"{100 * glare['fraction_of_own_precision_matmul_peak']:.0f} %",
            ]
        )
    head = [
        "file",
        "benchmark",
        "CPU",
        "torch kernels",
        "threads",
        "matmul GFLOP/s bf16 / fp32 (n)",
        "glare step in",
        "images/s glare / bf16 / fp32",
        "glare / bf16",
        "glare / fp32",
        "glare, of own peak",
    ]
    return markdown_table(head, rows)


def write_efficiency_markdown(results_dir: str | Path | None = None) -> Path:
    path = _efficiency_dir(results_dir) / "efficiency.md"
    text = efficiency_markdown(results_dir)
    if len(bench_files(results_dir)) > 1:
        text += "\nEvery benchmark file of this folder:\n\n" + machines_markdown(results_dir) + "\n"
    path.write_text(text)
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


# ============================================================================================ results chapter
def table_status(results_dir: str | Path | None = None, table: str = "main") -> dict[str, Any]:
    """Which cells of a table are finished, pending or stale, and where the finished ones were computed.

    Returns:
        ``total`` (number of cells), ``done`` and ``pending`` (cell keys in run order), ``stale`` ({key:
        reason} of finished cells that no longer match the table's definition), ``commits`` ({git commit:
        number of cells}), ``machines`` ({"cpu, N cores, torch T, K threads": number of cells}),
        ``first_start`` and ``last_finish`` (ISO times, or None) and ``smoke`` (keys of smoke-run cells).
    """
    from .experiments import cell_done, get_table, read_cell, stale_reason

    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t = get_table(table)
    if t.kind != "cells":
        raise ValueError(f"table {table!r} has no cells (kind {t.kind!r})")
    cells = t.cells()
    done = [c for c in cells if cell_done(c, results_dir)]
    records = {c.key: read_cell(c.result_path(results_dir)) for c in done}
    commits: dict[str, int] = {}
    machines: dict[str, int] = {}
    for r in records.values():
        commits[r["git_commit"]] = commits.get(r["git_commit"], 0) + 1
        m = r["machine"]
        name = (
            f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}, "
            f"{r.get('threads') or m.get('torch_threads', '?')} thread(s)"
        )
        machines[name] = machines.get(name, 0) + 1
    starts = sorted(r["started"] for r in records.values() if r.get("started"))
    ends = sorted(r["finished"] for r in records.values() if r.get("finished"))
    stale = {c.key: reason for c in done if (reason := stale_reason(c, results_dir))}
    return {
        "total": len(cells),
        "done": [c.key for c in done],
        "pending": [c.key for c in cells if c not in done],
        "stale": stale,
        "commits": commits,
        "machines": machines,
        "first_start": starts[0] if starts else None,
        "last_finish": ends[-1] if ends else None,
        "smoke": [k for k, r in records.items() if r.get("smoke")],
    }


def results_markdown(results_dir: str | Path | None = None, table: str = "main") -> str:
    """The main results table as markdown, one line per row of the table's definition (finished or not).

    Columns: linear-probe mIoU per dataset (mean ± sample std over the finished seeds, with n), k-NN top-1 on
    Tiny-ImageNet of each dataset's model (forgetting; mean over the cells that measured it), trainable
    parameters, pre-training minutes per run (mean ± std over every finished cell of the row) and seeds done
    per dataset. Cells not finished yet read "pending".
    """
    from .experiments import get_table, load_cells, mean_std, summarise

    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t = get_table(table)
    cells = load_cells(results_dir, table)
    by = {(e["row"], e["dataset"]): e for e in summarise(cells)}
    headers = ["method"] + [f"{d.label} mIoU %" for d in t.datasets]
    headers += [f"k-NN top-1 % ({d.label} model)" for d in t.datasets]
    headers += ["trainable params", "pre-training min / run", "seeds done"]
    lines = []
    for row in t.rows:
        entries = [by.get((row.name, d.name)) for d in t.datasets]
        line: list[Any] = [row.label]
        line += [
            f"{fmt_mean_std(e['miou_mean'], e['miou_std'], 100)} (n={e['n']})" if e else "pending"
            for e in entries
        ]
        line += ["pending" if e is None else fmt_mean_std(e["knn_top1_mean"], None, 100) for e in entries]
        present = [e for e in entries if e]
        params = present[0]["trainable_params_mean"] if present else None
        line.append("-" if params is None else ("0" if params == 0 else f"{params / 1e6:.2f} M"))
        if not row.pretrain:
            line.append("0 (no pre-training)")
        else:
            minutes = [c["metrics"].get("pretrain_minutes") for c in cells if c["row"] == row.name]
            mean, std, _ = mean_std(minutes)
            line.append(fmt_mean_std(mean, std))
        line.append(", ".join(f"{e['n'] if e else 0}/{len(t.seeds)}" for e in entries))
        lines.append(line)
    return markdown_table(headers, lines)


def paired_difference(
    results_dir: str | Path | None,
    table: str,
    row: str,
    reference: str,
    dataset: str,
    metric: str = "miou",
) -> dict[str, Any]:
    """``row`` minus ``reference`` on one dataset, seed by seed, over the seeds both have finished.

    Pairing by seed removes the probe's seed-to-seed variation that both rows share (the same probe seed).

    Returns:
        ``seeds``, ``diffs`` (per seed, in the metric's unit: fractions for mIoU), ``n``, ``mean`` and ``std``
        (sample std of the per-seed differences; None for n < 2; ``mean`` None for n = 0), and the labels
        ``row_label``, ``reference_label``, ``dataset_label``.
    """
    from .experiments import load_cells, mean_std

    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    values: dict[tuple[str, int], float] = {}
    labels = {row: row, reference: reference, dataset: dataset}
    for c in load_cells(results_dir, table):
        if c["dataset"] != dataset or c["row"] not in (row, reference):
            continue
        labels[c["row"]] = c.get("row_label", c["row"])
        labels[dataset] = c.get("dataset_label", dataset)
        v = c["metrics"].get(metric)
        if v is not None:
            values[(c["row"], c["seed"])] = float(v)
    seeds = sorted(s for (r, s) in values if r == row and (reference, s) in values)
    diffs = [values[(row, s)] - values[(reference, s)] for s in seeds]
    mean, std, n = mean_std(diffs)
    return {
        "row": row,
        "reference": reference,
        "dataset": dataset,
        "metric": metric,
        "seeds": seeds,
        "diffs": diffs,
        "n": n,
        "mean": mean,
        "std": std,
        "row_label": labels[row],
        "reference_label": labels[reference],
        "dataset_label": labels[dataset],
    }


def comparison_lines(
    results_dir: str | Path | None = None,
    table: str = "main",
    pairs: Sequence[tuple[str, str]] = (
        ("glare", "base"),
        ("glare", "dino_adapter"),
        ("dino_adapter", "base"),
    ),
    metric: str = "miou",
) -> list[str]:
    """One sentence per (pair, dataset of the table) saying what the finished cells show, and nothing more.

    Example: ``"GLARE (G+L+R), adapter - base on CamVid: +0.40 mIoU points (3 seeds; per seed +0.30, +0.60,
    +0.30; std 0.17; positive in 3 of 3)"``; a pair without a common finished seed reads "not measured yet".
    """
    from .experiments import get_table

    t = get_table(table)
    unit = {"miou": "mIoU", "pixel_acc": "pixel-accuracy", "knn_top1": "k-NN top-1"}.get(metric, metric)
    labels = {r.name: r.label for r in t.rows}
    out = []
    for row, ref in pairs:
        for d in t.datasets:
            p = paired_difference(results_dir, table, row, ref, d.name, metric)
            head = f"{labels.get(row, row)} - {labels.get(ref, ref)} on {d.label}: "
            if p["n"] == 0:
                out.append(head + "not measured yet (no seed with both cells finished)")
                continue
            per_seed = ", ".join(f"{100 * x:+.2f}" for x in p["diffs"])
            positive = sum(x > 0 for x in p["diffs"])
            text = f"{100 * p['mean']:+.2f} {unit} points ("
            if p["n"] == 1:
                text += f"1 seed, seed {p['seeds'][0]}: no seed-to-seed spread to judge it against)"
            else:
                text += (
                    f"{p['n']} seeds; per seed {per_seed}; std {100 * p['std']:.2f}; "
                    f"positive in {positive} of {p['n']})"
                )
            out.append(head + text)
    return out


def per_class_difference_bars(
    results_dir: str | Path | None = None,
    table: str = "main",
    dataset: str = "camvid",
    row: str = "glare",
    reference: str = "base",
    ax=None,
):
    """Per-class IoU of ``row`` minus ``reference`` (IoU points, mean over the seeds both have finished)."""
    from .experiments import load_cells

    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
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


def qualitative_figure(
    images: Sequence[Any],
    labels: Sequence[Any],
    predictions: dict[str, Sequence[Any]],
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    titles: Sequence[str] | None = None,
    ignore_index: int = 255,
    changes: tuple[str, str] | None = None,
):
    """One row per frame: the image, the ground truth, then each model's prediction with the share of
    correctly labelled (non-ignored) pixels in its title; optionally a last column of what changed.

    Args:
        images: (3, H, W) tensors or (H, W, 3) arrays.
        labels: (H, W) class ids (``ignore_index`` = void).
        predictions: {model name: one (H, W) class-id map per frame}.
        palette: one RGB colour per class.
        classes: class names (for the legend).
        titles: one title per frame for the image column (default: "frame i").
        changes: ``(a, b)``, two keys of ``predictions``: add a column where green marks the pixels ``b``
            labels correctly and ``a`` does not, red the reverse, grey the void pixels; its title gives both
            shares in % of the scored pixels.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from .notebook import colorize_labels, to_numpy_image

    n, ncols = len(images), 2 + len(predictions) + (changes is not None)
    fig, axes = plt.subplots(n, ncols, figsize=(3.2 * ncols, 2.45 * n + 0.5), squeeze=False)
    for i in range(n):
        label = np.asarray(labels[i])
        valid = label != ignore_index
        panels = [(to_numpy_image(images[i]), titles[i] if titles else f"frame {i}")]
        panels.append((colorize_labels(label, palette, ignore_index), "ground truth"))
        for name, preds in predictions.items():
            pred = np.asarray(preds[i])
            acc = 100 * float((pred[valid] == label[valid]).mean()) if valid.any() else float("nan")
            panels.append((colorize_labels(pred, palette, ignore_index), f"{name}: {acc:.1f} % px correct"))
        if changes is not None:
            right_a, right_b = (np.asarray(predictions[k][i]) == label for k in changes)
            fixed, broken = right_b & ~right_a & valid, right_a & ~right_b & valid
            change = np.ones((*label.shape, 3))
            change[fixed], change[broken], change[~valid] = (
                (0.1, 0.65, 0.2),
                (0.85, 0.1, 0.1),
                (0.7, 0.7, 0.7),
            )
            share = 100 / max(1, int(valid.sum()))
            panels.append(
                (
                    change,
                    f"{changes[0]} -> {changes[1]}: fixed {share * fixed.sum():.1f} %, "
                    f"broken {share * broken.sum():.1f} %",
                )
            )
        for ax, (img, title) in zip(axes[i], panels, strict=True):
            ax.imshow(img)
            ax.set_title(title, fontsize=8.5)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.asarray(c) / 255) for c in palette]
    fig.legend(
        handles, list(classes), loc="lower center", ncol=min(len(classes), 11), fontsize=7.5, frameon=False
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def speedup_decomposition(
    bench: dict[str, Any], fast: str = "glare", slow: str | None = None, target: float = 2.5
) -> dict[str, Any]:
    """Why the ``fast`` step is as much faster than the ``slow`` one (default: the float32 GLARE step,
    :func:`fp32_variant`) as it is, from the benchmark alone.

    With ``F`` the FLOPs of a step, ``P`` the measured matmul peak of its precision and ``e`` the fraction of
    that peak the step reaches (``t = F / (e P)``), the measured speedup factors exactly into

        speedup = (P_fast / P_slow) * (e_fast / e_slow) * (F_slow / F_fast).

    Returns:
        ``speedup`` (measured images/s ratio), ``peak_ratio``, ``efficiency_ratio``, ``flops_ratio``,
        ``product`` (of the three; equals ``speedup``), ``efficiency_fast`` and ``efficiency_slow``,
        ``target``, ``required_efficiency_fast`` (the fraction of its peak the fast step would need for
        ``target`` with everything else as measured), ``at_equal_efficiency`` (the speedup if the fast step
        reached the same fraction of its peak as the slow one: peak ratio x FLOP ratio) and
        ``bound_at_full_peak`` (the speedup if the fast step ran at 100 % of its peak).
    """
    v = bench["variants"]
    f, s = v[fast], v[slow or fp32_variant(bench)]
    peaks = bench["matmul_flops"]
    peak_ratio = peaks[f["precision"]] / peaks[s["precision"]]
    e_fast, e_slow = f["fraction_of_own_precision_matmul_peak"], s["fraction_of_own_precision_matmul_peak"]
    flops_ratio = s["flops_per_step"] / f["flops_per_step"]
    at_equal_efficiency = peak_ratio * flops_ratio
    return {
        "speedup": f["images_per_s"] / s["images_per_s"],
        "peak_ratio": peak_ratio,
        "efficiency_ratio": e_fast / e_slow,
        "flops_ratio": flops_ratio,
        "product": peak_ratio * (e_fast / e_slow) * flops_ratio,
        "efficiency_fast": e_fast,
        "efficiency_slow": e_slow,
        "target": target,
        "required_efficiency_fast": target * e_slow / at_equal_efficiency,
        "at_equal_efficiency": at_equal_efficiency,
        "bound_at_full_peak": at_equal_efficiency / e_slow,
    }


__all__ = [
    "ablation_bars",
    "comparison_lines",
    "bench_files",
    "bench_is_earlier",
    "bf16_variant",
    "efficiency_bars",
    "efficiency_markdown",
    "fp32_variant",
    "fmt_mean_std",
    "kernels_label",
    "machines_markdown",
    "main_bars",
    "markdown_table",
    "paired_difference",
    "per_class_bars",
    "per_class_difference_bars",
    "qualitative_figure",
    "read_bench",
    "results_markdown",
    "speedup_decomposition",
    "table_figures",
    "table_status",
    "write_efficiency_markdown",
]


# ============================================================================================ neighbours
def neighbours_bars(
    results_dir: str | Path | None = None, table: str = "neighbours", dataset: str | None = None
):
    """The PiPa / SSR table (chapter 10): light-decoder mIoU per set of extra training terms and backbone.

    Left: mean ± std over seeds (error bars) of each (terms, backbone), every seed a dot. Right: the effect
    of each term, seed-paired, on each backbone: mIoU(decoder + terms, seed s) - mIoU(decoder alone, seed s),
    mean over the seeds both have finished, every seed a dot. Read from the cell JSONs alone.
    """
    import matplotlib.pyplot as plt

    from .experiments import mean_std, method_label

    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
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


__all__.append("neighbours_bars")
