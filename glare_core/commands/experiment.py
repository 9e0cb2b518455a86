"""Run an experiment table, resumably, or list / report the results.

A table is rows x datasets x seeds (glare_core.study.tables): each cell pre-trains one row on one dataset's
unlabelled train images (run folder runs/experiments/<table>/<cell>/, git-ignored) and evaluates it with the
table's linear probe (and k-NN forgetting for the main table). Each finished cell is one JSON file in
results/<table>/cells/; a cell whose JSON exists is skipped, an interrupted pre-training resumes from its
checkpoint. Stop with Ctrl-C at any time and run the same command again to continue.

Tables: main (5 rows x CamVid, IDD-Lite-367 x 3 seeds), ablations (12 rows x CamVid x 1 seed), efficiency
(glare bench -> results/efficiency/bench.json), neighbours (a light decoder alone, + PiPa's losses, + SSR's
training-only branch, on the base and on the GLARE-adapted backbone x CamVid x 3 seeds; the adapted backbone
of seed k is the main table's glare cell of seed k, reused from runs/experiments/main/ or pre-trained there),
scale and steps (the main table's DINO-only adapter and GLARE rows pre-trained on 224 px views, the probe's
pixel scale, or for 400 steps instead of 100, x CamVid x 3 seeds); the pre-registered study
(results/study/PREREGISTRATION.md): study (base, DINO-only adapter, GLARE x CamVid, IDD-Lite-367 x 6 seeds on
the cached trunk, three probe readouts, k-NN, snapshots, transfer), study_secondary (G+L, G+R, LoRA, full
fine-tuning x CamVid x 3 seeds) and study_neighbours (the neighbours' six rows, the adapted backbone being the
study's GLARE cell of the same seed, x CamVid x 3 seeds); their cells refuse to start while glare_core/ or the
pre-registration has uncommitted changes.

Examples:
  glare experiment list                           # every table's cells and which are done
  glare experiment main --dry-run                 # the plan, with times estimated from measured ones
  glare experiment main --measure                 # time 4 pre-training steps per distinct row setting
  nohup glare experiment main > runs/main.log &   # run (or continue) the main table in the background
  glare experiment main --only base__camvid       # just the matching cells
  glare experiment report                         # tables (CSV, markdown) and PNG figures from results/
  glare experiment ablations --smoke              # the whole table in seconds, into a temporary folder
  glare experiment neighbours --measure           # time 20 light-decoder steps per term set (base features)
  glare experiment neighbours --dry-run           # plan: which adapters are reused, decoder time per cell
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import add_precision_argument

NAME = "experiment"
HELP = "run an experiment table (resumable) into results/, or list / report the results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table",
        help="main, ablations, efficiency, neighbours, scale, steps, study, study_secondary; "
        "or 'list' / 'report'",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and estimated times only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="smoke settings (random test_vit, synthetic data) into a temporary results folder",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder (default: $GLARE_RESULTS_DIR, else the checkout's results/)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="run folders (default: runs/experiments/ beside the results folder, git-ignored)",
    )
    parser.add_argument(
        "--only", action="append", default=None, help="run only cells whose name contains this (repeatable)"
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="time a few pre-training steps per distinct row setting (neighbours: light-decoder steps per "
        "term set) into results/timings.json, then stop",
    )
    parser.add_argument(
        "--measure-steps", type=int, default=None, help="steps per --measure run (default 4; neighbours 20)"
    )
    parser.add_argument("--no-figures", action="store_true", help="report: CSV and markdown only")
    add_precision_argument(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for pre-training, probe and k-NN (default 1: a shared 2-core machine; 2 if idle)",
    )


def run(args: argparse.Namespace) -> int:
    from glare_core import paths
    from glare_core.study import figures, report, runner, tables, timing

    smoke = args.smoke
    try:
        results = args.results
        if results is None:
            results = (
                Path(tempfile.mkdtemp(prefix="glare-experiment-smoke-")) if smoke else paths.results_dir()
            )
        if args.table == "list":
            print("\n".join(report.status_lines(results)))
            return 0
        if args.table == "report":
            written = report.write_report(results)
            if not args.no_figures:
                written.update(figures.write_figures(results))
            for path in written.values():
                print(f"wrote {path}")
            if not written:
                print(f"no results under {results}")
            return 0
        # Smoke runs never share run folders with real ones.
        runs = args.runs or (results / "runs" if smoke else paths.runs_dir())
        table = tables.get_table(args.table)
        if smoke:
            table = tables.smoke_table(table)
        if args.threads:
            table = tables.with_threads(table, args.threads)
        if args.precision != "auto":
            table = tables.with_precision(table, args.precision)
        if args.dry_run:
            print(timing.plan(table, results, smoke, runs_dir=runs))
            return 0
        if args.measure:
            if table.kind == "segmentation":
                steps = args.measure_steps or 20
                times = timing.measure_segmentation_times(table, results, steps=steps, smoke=smoke)
            else:
                times = timing.measure_step_times(table, results, steps=args.measure_steps or 4, smoke=smoke)
            for key, sec in times.items():
                print(f"{key}: {sec:.2f} s/step")
            return 0
        records = runner.run_table(
            table, results, runs, smoke=smoke, only=args.only, figures=not args.no_figures
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"glare experiment: {err}", file=sys.stderr)
        return 2
    print(f"{len(records)} cell(s) run now; results in {results / table.name}")
    return 0
