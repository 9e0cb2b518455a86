"""Markdown tables of the engine pilot in results/tuning/engine_pilot/ (runs and tune_val probes).

Usage: python tools/pilot_table.py [results/tuning/engine_pilot]   (run from the repository root)

Reads every run folder's ``summary.json`` and every probe JSON in ``probes/``; prints one table of the probes
(mIoU on tune_val, paired with the base probe of the same probe seed) and one of the runs' telemetry. Every
number comes from those files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def probe_rows(root: Path) -> list[str]:
    probes = {p.stem: load(p) for p in sorted((root / "probes").glob("*.json"))}
    base = {int(p["config"]["seed"]): p["miou"] for name, p in probes.items() if name.startswith("base_last")}
    lines = [
        "| probe | readout | probe seed | mIoU tune_val | minus base (last block, same seed) |",
        "|---|---|---|---|---|",
    ]
    for name, p in probes.items():
        seed = int(p["config"]["seed"])
        layers = p["config"].get("layers", "last")
        diff = 100 * (p["miou"] - base[seed]) if seed in base and not name.startswith("base_last") else None
        lines.append(
            f"| `{name}` | {layers} | {seed} | {100 * p['miou']:.2f} | "
            + (f"{diff:+.2f}" if diff is not None else "-")
            + " |"
        )
    return lines


def seed_rows(root: Path) -> list[str]:
    """Arms with more than one seed: the mean difference from the base (same probe seed), its sample standard
    deviation over seeds and a 95 % t-interval (``glare_core.study.stats.t_interval``)."""
    from glare_core.study.stats import mean_std, t_interval

    probes = {p.stem: load(p) for p in sorted((root / "probes").glob("*.json"))}
    base = {int(p["config"]["seed"]): p["miou"] for name, p in probes.items() if name.startswith("base_last")}
    arms: dict[str, list[float]] = {}
    for name, p in probes.items():
        run, _, export = name.partition("__")
        arm, sep, seed = run.rpartition("_s")
        if name.startswith("base") or not sep or not seed.isdigit() or export not in ("student", "teacher"):
            continue
        arms.setdefault(f"{arm}__{export}", []).append(100 * (p["miou"] - base[int(seed)]))
    lines = [
        "| arm (export) | seeds | differences from the base | mean | sd | 95 % t-interval |",
        "|---|---|---|---|---|---|",
    ]
    for arm, diffs in sorted(arms.items()):
        if len(diffs) < 2:
            continue
        mean, sd, n = mean_std(diffs)
        low, high = t_interval(diffs)
        lines.append(
            f"| `{arm}` | {n} | {', '.join(f'{d:+.2f}' for d in diffs)} | {mean:+.2f} | {sd:.2f} | "
            f"[{low:+.2f}, {high:+.2f}] |"
        )
    return lines


def run_rows(root: Path) -> list[str]:
    lines = [
        "| run | steps | minutes | final L_G (ln K) | target entropy | KL(mean, uniform) | "
        "adapter share, blocks 8-11 (student) | token change student / teacher | "
        "non-affine share student / teacher |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary_path in sorted(root.glob("*/summary.json")):
        s = load(summary_path)
        t = s.get("telemetry", {})
        st, te = t.get("student", {}), t.get("teacher", {})
        share = ", ".join(f"{100 * v:.1f}" for v in st.get("adapter_share", []) if v is not None)
        terms = s.get("final_terms", {})
        lines.append(
            f"| `{summary_path.parent.name}` | {s['steps']} | {s['minutes']:.1f} | "
            f"{terms.get('loss_global', float('nan')):.2f} ({s.get('ln_k', float('nan')):.2f}) | "
            f"{terms.get('teacher_entropy_global', float('nan')):.2f} | "
            f"{terms.get('teacher_kl_uniform_global', float('nan')):.2f} | {share} % | "
            f"{100 * st.get('token_change', float('nan')):.1f} / "
            f"{100 * te.get('token_change', float('nan')):.1f} % | "
            f"{100 * st.get('token_non_affine_share', float('nan')):.1f} / "
            f"{100 * te.get('token_non_affine_share', float('nan')):.1f} % |"
        )
    return lines


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path("results/tuning/engine_pilot")
    print("\n".join(probe_rows(root)))
    print()
    print("\n".join(seed_rows(root)))
    print()
    print("\n".join(run_rows(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
