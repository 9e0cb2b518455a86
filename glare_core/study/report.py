"""Text from results: CSV and markdown tables, status lines, and the sentences chapter 9 prints.

* files: :func:`write_table_report` (``cells.csv``, ``summary.csv``, ``summary.md``, ``per_class_iou.csv``
  of one table), :func:`write_efficiency_markdown` (``efficiency/efficiency.md``) and :func:`write_report`
  (all of them, rebuilt from the cell JSONs alone);
* markdown: :func:`markdown_table`, :func:`fmt_mean_std`, :func:`summary_markdown`,
  :func:`segmentation_markdown`, :func:`results_markdown`, :func:`efficiency_markdown`,
  :func:`machines_markdown`;
* status: :func:`status_lines` (``glare experiment list``), :func:`table_status` (done / pending / stale
  cells, commits, machines), :func:`comparison_lines` (seed-paired differences as sentences).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .stats import (
    SEGMENTATION_METRICS,
    SUMMARY_METRICS,
    mean_std,
    paired_difference,
    summarise,
    table_summary,
)
from .store import (
    bench_files,
    bench_is_earlier,
    bf16_variant,
    cell_done,
    efficiency_dir,
    fp32_variant,
    load_cells,
    read_bench,
    read_cell,
    results_path,
    stale_reason,
)
from .tables import TABLES, get_table, table_kind


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


#: How a segmentation row's extra terms read in tables and figures.
TERM_LABELS = {
    (): "light decoder (CE)",
    ("pixel_contrast", "patch_consistency"): "+ PiPa (pixel contrast + patch consistency)",
    ("pixel_contrast",): "+ PiPa pixel contrast",
    ("patch_consistency",): "+ PiPa patch consistency",
    ("ssr",): "+ SSR branch (training only)",
}


#: Short names for figure ticks.
TERM_SHORT_LABELS = {
    (): "decoder alone",
    ("pixel_contrast", "patch_consistency"): "+ PiPa",
    ("ssr",): "+ SSR",
}


def method_label(terms: Sequence[str], short: bool = False) -> str:
    """The readable name of a set of extra decoder terms (``"+ SSR branch (training only)"``; short:
    ``"+ SSR"``)."""
    labels = TERM_SHORT_LABELS if short else TERM_LABELS
    return labels.get(tuple(terms), "+ " + " + ".join(terms))


CELL_COLUMNS = (
    "table",
    "row",
    "dataset",
    "seed",
    "miou",
    "pixel_acc",
    "mean_acc",
    "knn_top1",
    "knn_top5",
    "trainable_params",
    "pretrain_minutes",
    "pretrain_seconds_per_step",
    "probe_seconds",
    "knn_seconds",
    "wall_time_s",
    "git_commit",
    "cpu",
    "smoke",
)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def cells_csv(cells: Sequence[dict[str, Any]]) -> str:
    """One CSV line per cell (:data:`CELL_COLUMNS`)."""

    def line(c: dict[str, Any]) -> list[Any]:
        m = c["metrics"]
        extra = {
            "table": c["table"],
            "row": c["row"],
            "dataset": c["dataset"],
            "seed": c["seed"],
            "wall_time_s": c.get("wall_time_s"),
            "git_commit": c["git_commit"],
            "cpu": c["machine"].get("cpu"),
            "smoke": c.get("smoke", False),
        }
        return [extra[k] if k in extra else m.get(k) for k in CELL_COLUMNS]

    return _csv_text(CELL_COLUMNS, (line(c) for c in cells))


def summary_csv(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as CSV: row, dataset, n, seeds, then mean and std of each metric."""
    head = ["row", "row_label", "dataset", "n", "seeds"]
    metrics = SUMMARY_METRICS + tuple(
        m for m in SEGMENTATION_METRICS if summary and f"{m}_mean" in summary[0]
    )
    head += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    rows = [[e[k] if k != "seeds" else " ".join(map(str, e["seeds"])) for k in head] for e in summary]
    return _csv_text(head, rows)


def per_class_csv(summary: Sequence[dict[str, Any]]) -> str:
    """Mean per-class IoU per (row, dataset), one line per class and (row, dataset) pair."""
    rows = [[e["row"], e["dataset"], k, v] for e in summary for k, v in e["per_class_iou_mean"].items()]
    return _csv_text(["row", "dataset", "class", "iou_mean"], rows)


def summary_markdown(summary: Sequence[dict[str, Any]], title: str = "") -> str:
    """The summary as a markdown table: one line per row, mIoU mean +- std per dataset, then the row's
    trainable parameters, pre-training minutes and k-NN top-1 (averaged over datasets and seeds)."""
    datasets: list[tuple[str, str]] = []
    rows: list[tuple[str, str]] = []
    for e in summary:
        if (e["dataset"], e["dataset_label"]) not in datasets:
            datasets.append((e["dataset"], e["dataset_label"]))
        if (e["row"], e["row_label"]) not in rows:
            rows.append((e["row"], e["row_label"]))
    by = {(e["row"], e["dataset"]): e for e in summary}
    headers = ["method"] + [f"{lab} mIoU %" for _, lab in datasets]
    headers += ["trainable params", "pre-training min", "k-NN top-1 %", "seeds"]
    lines = []
    for r, label in rows:
        cells = [by.get((r, d)) for d, _ in datasets]
        present = [c for c in cells if c]
        line = [label] + [fmt_mean_std(c["miou_mean"], c["miou_std"], 100) if c else "-" for c in cells]
        params = present[0]["trainable_params_mean"] if present else None
        line.append("0" if not params else f"{params / 1e6:.2f} M")
        minutes = [c["pretrain_minutes_mean"] for c in present if c["pretrain_minutes_mean"] is not None]
        line.append(f"{sum(minutes) / len(minutes):.1f}" if minutes else "-")
        knn = mean_std(c["knn_top1_mean"] for c in present)[0]
        line.append("-" if knn is None else f"{100 * knn:.1f}")
        line.append("/".join(str(c["n"]) for c in present))
        lines.append(line)
    text = markdown_table(headers, lines)
    return (f"**{title}**\n\n" if title else "") + text + "\n"


def segmentation_markdown(summary: Sequence[dict[str, Any]], title: str = "") -> str:
    """A segmentation table's summary as markdown: one line per set of extra terms, mIoU mean +- std on the
    base and on the adapted backbone, their difference of means, the parameters used at inference and in
    training only, the decoder's seconds per step and the seeds done."""
    methods: list[tuple[str, ...]] = []
    by: dict[tuple[tuple[str, ...], str], dict[str, Any]] = {}
    for e in summary:
        terms = tuple(e.get("terms", ()))
        if terms not in methods:
            methods.append(terms)
        by[(terms, e.get("backbone", "base"))] = e
    headers = ["training terms", "base mIoU %", "GLARE-adapted mIoU %", "adapted - base"]
    headers += ["inference params", "training-only params", "decoder s / step", "seeds (base / adapted)"]
    lines = []
    for terms in methods:
        b, a = by.get((terms, "base")), by.get((terms, "adapted"))
        diff = "-"
        if a and b and a["miou_mean"] is not None and b["miou_mean"] is not None:
            diff = f"{100 * (a['miou_mean'] - b['miou_mean']):+.1f}".replace("-0.0", "+0.0")
        any_e = a or b
        inf, extra = any_e.get("inference_params_mean"), any_e.get("training_only_params_mean")
        steps = [
            e["decoder_seconds_per_step_mean"] for e in (b, a) if e and e.get("decoder_seconds_per_step_mean")
        ]
        lines.append(
            [
                method_label(terms),
                fmt_mean_std(b["miou_mean"], b["miou_std"], 100) if b else "-",
                fmt_mean_std(a["miou_mean"], a["miou_std"], 100) if a else "-",
                diff,
                "-" if inf is None else f"{inf / 1e6:.2f} M",
                "-" if extra is None else ("0" if not extra else f"{extra / 1e3:.0f} k"),
                f"{sum(steps) / len(steps):.2f}" if steps else "-",
                f"{b['n'] if b else 0} / {a['n'] if a else 0}",
            ]
        )
    text = markdown_table(headers, lines)
    return (f"**{title}**\n\n" if title else "") + text + "\n"


def write_table_report(results_dir: str | Path, table: str) -> dict[str, Path]:
    """Rebuild ``cells.csv``, ``summary.csv``, ``summary.md`` and ``per_class_iou.csv`` of one table from its
    cell JSONs alone (:func:`glare_core.study.figures.table_figures` draws its PNGs). Returns {name: path};
    empty when the table has no finished cell."""
    results_dir = Path(results_dir)
    cells = load_cells(results_dir, table)
    folder = results_dir / table
    written: dict[str, Path] = {}
    if not cells:
        return written
    summary = table_summary(results_dir, table)
    title = TABLES[table]().title if table in TABLES else table
    segmentation = table_kind(table) == "segmentation"
    markdown = segmentation_markdown(summary, title) if segmentation else summary_markdown(summary, title)
    for name, text in (
        ("cells.csv", cells_csv(cells)),
        ("summary.csv", summary_csv(summary)),
        ("per_class_iou.csv", per_class_csv(summary)),
        ("summary.md", markdown),
    ):
        (folder / name).write_text(text)
        written[name] = folder / name
    return written


def result_tables(results_dir: str | Path | None = None) -> list[str]:
    """The tables with a ``cells/`` folder under ``results_dir``, in name order.

    Raises:
        FileNotFoundError: ``results_dir`` does not exist, with the fix.
    """
    results_dir = results_path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} not found. Fix: run a table first.")
    return sorted(p.name for p in results_dir.iterdir() if (p / "cells").is_dir())


def write_report(results_dir: str | Path | None = None) -> dict[str, Path]:
    """Regenerate every table's CSV and markdown (and ``efficiency/efficiency.md``) from the result files
    alone. Returns {"<table>/<file>": path}."""
    results_dir = results_path(results_dir)
    written: dict[str, Path] = {}
    for table in result_tables(results_dir):
        for k, v in write_table_report(results_dir, table).items():
            written[f"{table}/{k}"] = v
    if (efficiency_dir(results_dir) / "bench.json").exists():
        written["efficiency/efficiency.md"] = write_efficiency_markdown(results_dir)
    return written


def status_lines(results_dir: str | Path | None = None) -> list[str]:
    """``glare experiment list``: every table, its cells and which are done."""
    results_dir = results_path(results_dir)
    lines = []
    for name in TABLES:
        t = get_table(name)
        if t.kind in ("cells", "segmentation"):
            cells = t.cells()
            done = [c for c in cells if cell_done(c, results_dir)]
            lines.append(
                f"{name}: {t.title} -- {len(t.rows)} rows x {len(t.datasets)} datasets x {len(t.seeds)} seeds"
                f" = {len(cells)} cells, {len(done)} done"
            )
            if t.note:
                lines.append(f"  ({t.note})")
            for c in cells:
                reason = stale_reason(c, results_dir) if c in done else None
                mark = "x" if c in done else " "
                lines.append(f"  [{mark}] {c.key}" + (f"  (STALE: {reason})" if reason else ""))
        else:  # bench
            done = (results_dir / name / "bench.json").exists()
            lines.append(f"{name}: {t.title} -- [{'x' if done else ' '}] bench.json")
    return lines


def table_status(results_dir: str | Path | None = None, table: str = "main") -> dict[str, Any]:
    """Which cells of a table are finished, pending or stale, and where the finished ones were computed.

    Returns:
        ``total`` (number of cells), ``done`` and ``pending`` (cell keys in run order), ``stale`` ({key:
        reason} of finished cells that no longer match the table's definition), ``commits`` ({git commit:
        number of cells}), ``machines`` ({"cpu, N cores, torch T, K threads": number of cells}),
        ``first_start`` and ``last_finish`` (ISO times, or None) and ``smoke`` (keys of smoke-run cells).
    """
    results_dir = results_path(results_dir)
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
    results_dir = results_path(results_dir)
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


def kernels_label(machine: dict[str, Any]) -> str:
    """torch's CPU capability, and the kernel limits set to emulate a lesser processor, if any."""
    text = machine.get("cpu_capability", "?")
    limits = machine.get("kernel_limits") or {}
    if limits:
        text += " limited to " + "/".join(sorted({str(x).upper() for x in limits.values()}))
    return text


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
    path = efficiency_dir(results_dir) / "efficiency.md"
    text = efficiency_markdown(results_dir)
    if len(bench_files(results_dir)) > 1:
        text += "\nEvery benchmark file of this folder:\n\n" + machines_markdown(results_dir) + "\n"
    path.write_text(text)
    return path
