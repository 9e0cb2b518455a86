"""Validate a dataset folder before training on it.

Decodes every image and label map of the chosen splits and prints, per split: the number of images and of
labelled images, the image sizes, and the class histogram (pixel share per class, ignore included). Every bad
file is listed with what is wrong and how to fix it: corrupt or truncated images, image/label size mismatches,
label ids outside the class set, images without a label map.

Exit codes: 0 all good; 1 bad files found (all listed); 2 the dataset cannot be opened (unknown name, folder
not found, a named split missing, or --labels yes on a split without labels).

Examples:
  glare check-data camvid
  glare check-data idd_lite --split val
  glare check-data ade20k --root /content/data/ADEChallengeData2016 --limit 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NAME = "check-data"
HELP = "validate a dataset folder: counts, image sizes, class histogram, every bad file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glare_core.data import DATASETS

    parser.add_argument("dataset", help=f"dataset name: {', '.join(sorted(DATASETS))}")
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (default: search data roots)")
    parser.add_argument(
        "--split", action="append", default=None, help="split to check (repeatable; default: all found)"
    )
    parser.add_argument(
        "--labels",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: labels where a split has them; yes: a split without labels is an error; no: images only",
    )
    parser.add_argument("--limit", type=int, default=None, help="check only N images per split (seeded)")
    parser.add_argument("--max-classes", type=int, default=40, help="show at most N classes (largest)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from glare_core.data import DataError
    from glare_core.data.check import check_dataset, format_report

    start = time.perf_counter()
    try:
        reports = check_dataset(
            args.dataset,
            root=args.root,
            splits=args.split,
            labels=args.labels,
            limit=args.limit,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except DataError as e:
        print(f"check-data: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"{args.dataset}: {reports[0].folder}")
    for report in reports:
        print(format_report(report, max_classes=args.max_classes))
    n_bad = sum(len(r.bad) for r in reports)
    n_img = sum(r.images for r in reports)
    verdict = "OK" if n_bad == 0 else f"{n_bad} BAD FILE(S)"
    print(f"{verdict}: {n_img} images in {len(reports)} split(s) checked in {elapsed:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        splits = [r.to_dict() for r in reports]
        payload = {"dataset": args.dataset, "seconds": round(elapsed, 2), "splits": splits}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if n_bad == 0 else 1
