"""Statistics of finished cells: mean and sample std over seeds, seed-paired differences, t-intervals.

Everything here is computed from cell JSONs (:mod:`glare_core.study.store`) or a benchmark file, never from
retyped numbers: :func:`summarise` (mean +- std per row and dataset), :func:`paired_difference` (row minus
reference, seed by seed), :func:`t_interval` (Student's t-interval of a mean, ``scipy.stats.t``) and
:func:`speedup_decomposition` (a measured speedup as peak ratio x efficiency ratio x FLOP ratio).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .store import fp32_variant, load_cells, results_path
from .tables import TABLES


def median(values: Sequence[float]) -> float | None:
    """The median of ``values`` (the mean of the middle two for an even count); None when empty."""
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for one value) of the non-None
    values, and their count."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None, 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return mean, std, len(v)


def t_interval(values: Iterable[float | None], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of the mean of the non-None ``values`` (n >= 2 of them):
    ``mean -+ t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)``, ``std`` the sample std (:func:`mean_std`).

    For seed-paired differences (:func:`paired_difference`'s ``diffs``) it is the interval chapter 9 reads: an
    interval that excludes zero is a difference the seeds do not explain. ``scipy.stats.t`` gives the
    quantile (12.71, 4.30, 3.18, 2.78 for 1-4 degrees of freedom at 95 %).

    Returns:
        ``(low, high)``, in the unit of ``values``.

    Raises:
        ValueError: fewer than two values (no spread to scale the interval by).
    """
    mean, std, n = mean_std(values)
    if mean is None or std is None:
        raise ValueError(f"a t-interval needs at least two values, got {n}")
    from scipy.stats import t  # scipy.stats takes a second to import; only the intervals need it

    half = float(t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def paired_t_mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, when the seed-to-seed standard deviation of the differences is ``sd``.

    Solves ``P(|T| > t_{1 - alpha/2, n-1}) = power`` for the effect, ``T`` noncentral t with ``n - 1`` degrees
    of freedom and noncentrality ``effect * sqrt(n) / sd`` (``scipy.stats.nct``; both tails counted).

    Returns:
        The effect, in the unit of ``sd``.
    """
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if n < 2 or sd <= 0:
        raise ValueError(f"a power calculation needs n >= 2 seeds and sd > 0, got n={n}, sd={sd}")
    crit = float(t.ppf(1 - alpha / 2, n - 1))

    def shortfall(effect: float) -> float:
        nc = effect * math.sqrt(n) / sd
        return float(nct.sf(crit, n - 1, nc) + nct.sf(crit, n - 1, -nc)) - power  # P(T > c) + P(T < -c)

    return float(brentq(shortfall, 1e-9 * sd, 100 * sd / math.sqrt(n)))  # noncentrality up to 100


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, family-wise error rate), in the order given: the k-th smallest p
    times (m - k + 1), made non-decreasing, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


#: Metrics summarised per (row, dataset): mean and std over seeds.
SUMMARY_METRICS = (
    "miou",
    "pixel_acc",
    "knn_top1",
    "trainable_params",
    "pretrain_minutes",
    "probe_seconds",
)


#: Extra metrics of segmentation-table cells (light decoder): summarised when present.
SEGMENTATION_METRICS = (
    "mean_acc",
    "inference_params",
    "training_only_params",
    "decoder_seconds_per_step",
    "decoder_train_seconds",
)


def _summary_metrics(cells: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    extra = tuple(m for m in SEGMENTATION_METRICS if any(m in c["metrics"] for c in cells))
    return SUMMARY_METRICS + extra


def table_summary(results_dir: str | Path, table: str) -> list[dict[str, Any]]:
    """:func:`summarise` of a table's cells, rows and datasets in the table definition's order (if known)."""
    cells = load_cells(results_dir, table)
    if table in TABLES:
        t = TABLES[table]()
        rows = {r.name: i for i, r in enumerate(t.rows)}
        datasets = {d.name: i for i, d in enumerate(t.datasets)}

        def order(c: dict[str, Any]) -> tuple[int, int, int]:
            return rows.get(c["row"], len(rows)), datasets.get(c["dataset"], len(datasets)), c["seed"]

        cells = sorted(cells, key=order)
    return summarise(cells)


def summarise(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (row, dataset), in first-seen order of rows and datasets.

    Returns:
        One dict per (row, dataset): ``row``, ``row_label``, ``row_group``, ``dataset``, ``dataset_label``,
        ``seeds`` (list), ``n``, then ``<metric>_mean`` and ``<metric>_std`` for :data:`SUMMARY_METRICS` (and
        for :data:`SEGMENTATION_METRICS` when cells have them), and ``per_class_iou_mean`` ({class: mean IoU
        or None}); cells of segmentation tables add ``terms`` and ``backbone``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["row"], c["dataset"]), []).append(c)
    metrics = _summary_metrics(cells)
    out = []
    for (row, ds), members in groups.items():
        first = members[0]
        entry: dict[str, Any] = {
            "row": row,
            "row_label": first.get("row_label", row),
            "row_group": first.get("row_group", ""),
            "dataset": ds,
            "dataset_label": first.get("dataset_label", ds),
            "seeds": sorted(c["seed"] for c in members),
            "n": len(members),
        }
        for k in ("terms", "backbone"):  # segmentation tables
            if k in first:
                entry[k] = first[k]
        for m in metrics:
            mean, std, _ = mean_std(c["metrics"].get(m) for c in members)
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean, std
        classes: list[str] = []
        for c in members:
            classes += [k for k in c["metrics"].get("per_class_iou", {}) if k not in classes]
        entry["per_class_iou_mean"] = {
            k: mean_std(c["metrics"].get("per_class_iou", {}).get(k) for c in members)[0] for k in classes
        }
        out.append(entry)
    return out


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
    results_dir = results_path(results_dir)
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
