"""The pre-registered analysis of the study (``results/study/PREREGISTRATION.md``, sections 3-5), as code.

Every endpoint is a seed-paired difference of two arms' cells (:data:`ENDPOINTS`): per seed the arm's value
minus the reference's, over the seeds both have finished. Per endpoint: the differences, their mean, sample
sd, the 95 % t-interval, the Bonferroni interval of its family (confidence 1 - 0.05 / m), the two-sided paired
t-test's p (``scipy.stats.ttest_1samp`` of the differences, which is ``ttest_rel`` of the pairs) and Holm's
adjusted p within the family (:func:`glare_core.study.stats.holm`). Beside them: McNemar's exact test per seed
for the k-NN endpoints (the same 2,020 queries), the control-block check and the dose-response.

An endpoint with fewer seeds than its design is marked ``interim``: its numbers describe the cells finished so
far and are not the pre-registered result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import holm, mean_std, t_interval
from .store import load_cells, results_path

#: The family-wise level of every family.
ALPHA = 0.05


@dataclass(frozen=True)
class Endpoint:
    """One pre-registered difference: ``arm`` minus ``reference`` (each ``table/row``), per seed.

    Attributes:
        key: E1, R1, S1 ... (the pre-registration's names).
        label: what it asks.
        family: ``primary``, ``replication``, ``secondary`` or ``neighbours`` (Holm and Bonferroni within a
            family).
        arm, reference: ``"table/row"`` of the two arms.
        dataset: the cells' dataset (``camvid``, ``idd_lite367``).
        value: what is compared: ``"last"`` / ``"best"`` (a probe readout's mIoU, points), ``"decoder"`` (a
            light-decoder cell's mIoU, points), ``"knn"`` (k-NN top-1, points), ``"transfer:camvid"`` (the
            arm's probe on CamVid, the reference's CamVid cell).
        seeds: the design's seeds.
    """

    key: str
    label: str
    family: str
    arm: str
    reference: str
    dataset: str
    value: str = "last"
    seeds: tuple[int, ...] = tuple(range(6))


_P, _S, _N = "study", "study_secondary", "study_neighbours"
_SEC3 = (0, 1, 2)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("E1", "DINO-only adapter - base", "primary", f"{_P}/dino_adapter", f"{_P}/base", "camvid"),
    Endpoint("E2", "GLARE - DINO-only adapter", "primary", f"{_P}/glare", f"{_P}/dino_adapter", "camvid"),
    Endpoint(
        "R1", "DINO-only adapter - base", "replication", f"{_P}/dino_adapter", f"{_P}/base", "idd_lite367"
    ),
    Endpoint(
        "R2", "GLARE - DINO-only adapter", "replication", f"{_P}/glare", f"{_P}/dino_adapter", "idd_lite367"
    ),
    Endpoint("S1", "GLARE - base", "secondary", f"{_P}/glare", f"{_P}/base", "camvid"),
    Endpoint("S2", "GLARE - base", "secondary", f"{_P}/glare", f"{_P}/base", "idd_lite367"),
    Endpoint(
        "S3", "DINO-only - base, block 9", "secondary", f"{_P}/dino_adapter", f"{_P}/base", "camvid", "best"
    ),
    Endpoint("S4", "GLARE - base, block 9", "secondary", f"{_P}/glare", f"{_P}/base", "camvid", "best"),
    Endpoint("S5", "G+L - DINO-only", "secondary", f"{_S}/G_L", f"{_P}/dino_adapter", "camvid", seeds=_SEC3),
    Endpoint("S6", "G+R - DINO-only", "secondary", f"{_S}/G_R", f"{_P}/dino_adapter", "camvid", seeds=_SEC3),
    Endpoint("S7", "GLARE - G+L", "secondary", f"{_P}/glare", f"{_S}/G_L", "camvid", seeds=_SEC3),
    Endpoint("S8", "GLARE - G+R", "secondary", f"{_P}/glare", f"{_S}/G_R", "camvid", seeds=_SEC3),
    Endpoint("S9", "LoRA - base", "secondary", f"{_S}/dino_lora", f"{_P}/base", "camvid", seeds=_SEC3),
    Endpoint(
        "S10", "full fine-tuning - base", "secondary", f"{_S}/dino_full", f"{_P}/base", "camvid", seeds=_SEC3
    ),
    Endpoint(
        "S11",
        "DINO-only pre-trained on IDD-Lite, on CamVid - base",
        "secondary",
        f"{_P}/dino_adapter",
        f"{_P}/base",
        "idd_lite367",
        "transfer:camvid",
    ),
    Endpoint(
        "S12",
        "GLARE pre-trained on IDD-Lite, on CamVid - base",
        "secondary",
        f"{_P}/glare",
        f"{_P}/base",
        "idd_lite367",
        "transfer:camvid",
    ),
    Endpoint(
        "S13",
        "k-NN top-1: DINO-only - base",
        "secondary",
        f"{_P}/dino_adapter",
        f"{_P}/base",
        "camvid",
        "knn",
    ),
    Endpoint("S14", "k-NN top-1: GLARE - base", "secondary", f"{_P}/glare", f"{_P}/base", "camvid", "knn"),
    Endpoint(
        "N1",
        "PiPa - decoder alone, base",
        "neighbours",
        f"{_N}/pipa_base",
        f"{_N}/decoder_base",
        "camvid",
        "decoder",
        _SEC3,
    ),
    Endpoint(
        "N2",
        "SSR - decoder alone, base",
        "neighbours",
        f"{_N}/ssr_base",
        f"{_N}/decoder_base",
        "camvid",
        "decoder",
        _SEC3,
    ),
    Endpoint(
        "N3",
        "PiPa - decoder alone, GLARE",
        "neighbours",
        f"{_N}/pipa_glare",
        f"{_N}/decoder_glare",
        "camvid",
        "decoder",
        _SEC3,
    ),
    Endpoint(
        "N4",
        "SSR - decoder alone, GLARE",
        "neighbours",
        f"{_N}/ssr_glare",
        f"{_N}/decoder_glare",
        "camvid",
        "decoder",
        _SEC3,
    ),
    Endpoint(
        "N5",
        "decoder alone: GLARE - base",
        "neighbours",
        f"{_N}/decoder_glare",
        f"{_N}/decoder_base",
        "camvid",
        "decoder",
        _SEC3,
    ),
)


def _cells(results_dir: Path) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """{(table, row, dataset, seed): record} of both study tables (missing tables: none)."""
    out = {}
    for table in (_P, _S, _N):
        for c in load_cells(results_dir, table):
            out[(table, c["row"], c["dataset"], int(c["seed"]))] = c
    return out


def _value(cells: dict, side: str, dataset: str, seed: int, value: str, reference: bool) -> float | None:
    """The compared number of one side of an endpoint in one seed (points), or None when not there."""
    table, row = side.split("/")
    if value.startswith("transfer:"):
        target = value.split(":", 1)[1]
        if reference:  # the reference's own cell on the target dataset
            cell = cells.get((table, row, target, seed))
            return 100 * cell["metrics"]["miou"] if cell else None
        cell = cells.get((table, row, dataset, seed))
        scores = (cell or {}).get("transfer", {}).get(target)
        return 100 * scores["miou"] if scores else None
    cell = cells.get((table, row, dataset, seed))
    if cell is None:
        return None
    if value == "decoder":  # a light-decoder cell (segmentation table): its own mIoU
        return 100 * cell["metrics"]["miou"]
    if value == "knn":
        top1 = cell["metrics"].get("knn_top1")
        return 100 * top1 if top1 is not None else None
    return 100 * cell["readouts"][value]["miou"]


def mcnemar(arm: str, reference: str) -> dict[str, Any]:
    """McNemar's exact test of two per-query correctness strings (``"1"`` right) over the same queries:
    ``gained`` (reference wrong, arm right), ``lost`` and the two-sided p of ``binomtest(gained, gained +
    lost, 0.5)``."""
    from scipy.stats import binomtest

    if len(arm) != len(reference):
        raise ValueError(f"McNemar needs the same queries: {len(arm)} vs {len(reference)} answers")
    gained = sum(a == "1" and r == "0" for a, r in zip(arm, reference, strict=True))
    lost = sum(a == "0" and r == "1" for a, r in zip(arm, reference, strict=True))
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": float(p)}


def evaluate_endpoint(cells: dict, e: Endpoint, m: int) -> dict[str, Any]:
    """One endpoint's numbers over the seeds both sides have (see the module docstring); ``m`` is the size of
    its family (for the Bonferroni interval)."""
    from scipy.stats import ttest_1samp

    seeds, diffs = [], []
    for s in e.seeds:
        a = _value(cells, e.arm, e.dataset, s, e.value, reference=False)
        b = _value(cells, e.reference, e.dataset, s, e.value, reference=True)
        if a is not None and b is not None:
            seeds.append(s)
            diffs.append(a - b)
    mean, sd, n = mean_std(diffs)
    out: dict[str, Any] = {
        **{k: getattr(e, k) for k in ("key", "label", "family", "arm", "reference", "dataset", "value")},
        "design_seeds": list(e.seeds),
        "seeds": seeds,
        "diffs": diffs,
        "n": n,
        "mean": mean,
        "sd": sd,
        "interim": n < len(e.seeds),
        "ci95": None,
        "ci_bonferroni": None,
        "p": None,
    }
    if n >= 2 and sd is not None:
        out["ci95"] = list(t_interval(diffs, 0.95))
        out["ci_bonferroni"] = list(t_interval(diffs, 1 - ALPHA / m))
        out["p"] = float(ttest_1samp(diffs, 0.0).pvalue) if sd > 0 else (0.0 if mean else 1.0)
    if e.value == "knn":
        out["mcnemar"] = {}
        for s in seeds:
            a = cells[(*e.arm.split("/"), e.dataset, s)]["knn"]["top1_correct"]
            b = cells[(*e.reference.split("/"), e.dataset, s)]["knn"]["top1_correct"]
            out["mcnemar"][str(s)] = mcnemar(a, b)
    return out


def control_check(cells: dict) -> dict[str, Any]:
    """Adapted cells whose control-block confusion matrix differs from the base's of the same dataset and
    seed.

    The control block lies inside the frozen trunk, but its readout, like every readout, passes through the
    model's final LayerNorm (DINOv2's normed intermediate tokens). Adapters and LoRA leave that norm frozen,
    so their control readout must be the base's bit for bit; full fine-tuning trains it with the later blocks
    (:func:`glare_core.tuning.configure_tuning`), so its control readout moves with it. ``final_norm`` lists
    the differing cells of runs that train the final norm; a difference anywhere else is a bug.

    Returns:
        ``checked`` (adapted cells with a control readout), ``differ`` (their names, every difference as the
        pre-registration counts it), ``final_norm`` (those of them whose run trains the final norm).
    """
    checked, differ, final_norm = 0, [], []
    for (table, row, dataset, seed), cell in sorted(cells.items()):
        base = cells.get((_P, "base", dataset, seed))
        if row == "base" or base is None or not cell.get("readouts") or "control" not in cell["readouts"]:
            continue
        checked += 1
        if cell["readouts"]["control"]["confusion_matrix"] != base["readouts"]["control"]["confusion_matrix"]:
            differ.append(f"{table}/{row}__{dataset}__seed{seed}")
            if ((cell.get("config") or {}).get("train") or {}).get("tuning") == "full":
                final_norm.append(differ[-1])
    return {"checked": checked, "differ": differ, "final_norm": final_norm}


def control_reason(control: dict[str, Any]) -> str:
    """The cause of :func:`control_check`'s differences, to follow its count: ``""`` when none differs,
    else ``" (3 full fine-tuning cells, whose run trains the final LayerNorm the readout passes through;
    none unexplained)"``."""
    n, explained = len(control["differ"]), len(control.get("final_norm", []))
    if n == 0:
        return ""
    bug = f"{n - explained} unexplained: a bug" if n > explained else "none unexplained"
    if not explained:
        return f" ({bug})"
    norm = "whose run trains the final LayerNorm the readout passes through"
    cells = "cell" if explained == 1 else "cells"
    return f" ({explained} full fine-tuning {cells}, {norm}; {bug})"


def dose_response(cells: dict) -> list[dict[str, Any]]:
    """Mean last-block mIoU (points) of each pre-trained arm's student after 100, 200 and 300 steps (CamVid
    cells with snapshots), with the seeds it averages."""
    out = []
    for table, row in ((_P, "dino_adapter"), (_P, "glare")):
        members = [c for (t, r, d, _), c in sorted(cells.items()) if (t, r, d) == (table, row, "camvid")]
        members = [c for c in members if c.get("snapshots")]
        if not members:
            continue
        steps = sorted({int(s) for c in members for s in c["snapshots"]})
        means = {str(s): mean_std(100 * c["snapshots"][str(s)]["miou"] for c in members)[0] for s in steps}
        final = members[0]["config"]["train"]["steps"]
        means[str(final)] = mean_std(100 * c["readouts"]["last"]["miou"] for c in members)[0]
        out.append({"arm": f"{table}/{row}", "seeds": [c["seed"] for c in members], "miou_by_step": means})
    return out


def analyse(results_dir: str | Path | None = None) -> dict[str, Any]:
    """The whole pre-registered analysis from the cell JSONs: ``endpoints`` (with Holm-adjusted p per family),
    ``control``, ``dose_response``, ``cells`` (how many were read)."""
    results_dir = results_path(results_dir)
    cells = _cells(results_dir)
    families: dict[str, list[Endpoint]] = {}
    for e in ENDPOINTS:
        families.setdefault(e.family, []).append(e)
    endpoints = []
    for members in families.values():
        rows = [evaluate_endpoint(cells, e, len(members)) for e in members]
        tested = [r for r in rows if r["p"] is not None]
        for r, p in zip(tested, holm([r["p"] for r in tested]), strict=True):
            r["p_holm"] = p
        endpoints += rows
    return {
        "endpoints": endpoints,
        "control": control_check(cells),
        "dose_response": dose_response(cells),
        "cells": len(cells),
    }


def _fmt(x: float | None, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def resolved(r: dict[str, Any]) -> bool:
    """Whether an endpoint of :func:`analyse` is resolved: Holm's adjusted p below :data:`ALPHA`."""
    return r["p_holm"] is not None and r["p_holm"] < ALPHA


def claim(condition: bool, statement: str) -> None:
    """Stop a page whose text says ``statement`` when the analysis no longer supports it (the book writes
    its readings of the study next to these checks, so recomputed cells cannot leave the prose behind)."""
    if not condition:
        raise AssertionError(f"the text says: {statement!r}, and the analysis no longer does; rewrite it")


def verdict(r: dict[str, Any]) -> str:
    """One endpoint of :func:`analyse` in a line: the estimate, its 95 % interval, Holm's adjusted p and
    whether the family's correction resolves it at :data:`ALPHA`; ``(interim)`` while seeds are missing."""
    head = f"{r['key']} {r['label']} ({r['dataset']}"
    if r["n"] < 2:
        return f"{head}): {r['n']} of {len(r['design_seeds'])} seeds, no verdict yet"
    low, high = r["ci95"]
    return (
        f"{head}, {r['value']}): {r['mean']:+.2f} points, 95 % CI [{low:+.2f}, {high:+.2f}], "
        f"Holm p = {r['p_holm']:.2g}: {'resolved' if resolved(r) else 'not resolved'}"
        + (" (interim)" if r["interim"] else "")
    )


def analysis_markdown(result: dict[str, Any], checks: bool = True) -> str:
    """The analysis as markdown: one table of endpoints, then (with ``checks``) the control check and the
    dose-response."""
    lines = [
        "| endpoint | difference (points) | dataset | readout | seeds | per seed | mean | sd | 95 % CI | "
        "Bonferroni CI | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["endpoints"]:
        ci = "[" + ", ".join(_fmt(v) for v in r["ci95"]) + "]" if r["ci95"] else "-"
        bci = "[" + ", ".join(_fmt(v) for v in r["ci_bonferroni"]) + "]" if r["ci_bonferroni"] else "-"
        seeds = f"{r['n']} of {len(r['design_seeds'])}" + (" (interim)" if r["interim"] else "")
        p = f"{r['p']:.3g}" if r["p"] is not None else "-"
        ph = f"{r['p_holm']:.3g}" if r.get("p_holm") is not None else "-"
        lines.append(
            f"| {r['key']} | {r['label']} | {r['dataset']} | {r['value']} | {seeds} | "
            f"{', '.join(_fmt(d) for d in r['diffs']) or '-'} | {_fmt(r['mean'])} | {_fmt(r['sd'], False)} | "
            f"{ci} | {bci} | {p} | {ph} |"
        )
    if not checks:
        return "\n".join(lines) + "\n"
    c = result["control"]
    lines += [
        "",
        f"Control block: {c['checked']} adapted cells checked, {len(c['differ'])} differ from the base"
        + control_reason(c)
        + ".",
    ]
    for d in result["dose_response"]:
        steps = ", ".join(f"{s} steps {_fmt(v, False)}" for s, v in d["miou_by_step"].items())
        lines.append(f"Dose-response, {d['arm']} (seeds {d['seeds']}): {steps} mIoU.")
    return "\n".join(lines) + "\n"


def write_analysis(results_dir: str | Path | None = None) -> dict[str, Any]:
    """:func:`analyse` into ``<results>/study/analysis.json`` and ``analysis.md``; returns the result."""
    from .store import save_record

    results_dir = results_path(results_dir)
    result = analyse(results_dir)
    save_record(result, results_dir / _P / "analysis.json")
    (results_dir / _P / "analysis.md").write_text(analysis_markdown(result))
    return result


if __name__ == "__main__":  # python -m glare_core.study.analysis [results]
    import sys

    print(json.dumps(write_analysis(sys.argv[1] if len(sys.argv) > 1 else None)["control"]))
