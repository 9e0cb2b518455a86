"""The study's power calculation, from the seed noise measured in the engine pilot (tuning split).

Usage: python tools/study_power.py [results/tuning/engine_pilot]   (run from the repository root)

Reads the pilot's probe files (``probes/*.json``, mIoU on tune_val) and, for the two primary endpoints of
``results/study/PREREGISTRATION.md``, the seed-paired differences the pilot measured (probe seeds 0-2):

* E1, DINO-only adapter - base: ``dino_lr1e-3_s<k>__student`` - ``base_last_s<k>``;
* E2, GLARE - DINO-only adapter: ``glare_mask_tquery_s<k>__student`` - ``dino_lr1e-3_s<k>__student``.

Prints their standard deviation over seeds, the expected half-width of a 95 % t-interval and the smallest
effect a paired t-test detects with 80 % power (``glare_core.study.stats.paired_t_mde``) for 3, 6 and 10
seeds, at alpha 0.05 and at Holm's first-step level 0.025 (two endpoints). Every number comes from those
files.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from scipy.stats import t

from glare_core.study.stats import mean_std, paired_t_mde

ENDPOINTS = {
    "E1: DINO-only adapter - base": ("dino_lr1e-3_s{}__student", "base_last_s{}"),
    "E2: GLARE - DINO-only adapter": ("glare_mask_tquery_s{}__student", "dino_lr1e-3_s{}__student"),
}


def differences(root: Path, arm: str, reference: str, seeds=(0, 1, 2)) -> list[float]:
    """Seed-paired mIoU differences (points) of two probe files per seed."""
    miou = {p.stem: json.loads(p.read_text())["miou"] for p in (root / "probes").glob("*.json")}
    return [100 * (miou[arm.format(s)] - miou[reference.format(s)]) for s in seeds]


def main(root: Path) -> None:
    print(
        "| endpoint | pilot differences (seeds 0-2) | sd | seeds | 95 % half-width | MDE, alpha 0.05 | "
        "MDE, alpha 0.025 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (arm, reference) in ENDPOINTS.items():
        diffs = differences(root, arm, reference)
        _, sd, _ = mean_std(diffs)
        for n in (3, 6, 10):
            half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
            print(
                f"| {name} | {', '.join(f'{d:+.2f}' for d in diffs)} | {sd:.2f} | {n} | {half:.2f} | "
                f"{paired_t_mde(sd, n, 0.05):.2f} | {paired_t_mde(sd, n, 0.025):.2f} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/tuning/engine_pilot"))
