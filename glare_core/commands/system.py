"""Describe this machine as the project sees it: processor, torch CPU capability, cores and threads, torch and
timm versions, the GPU if any, the measured float32 and bf16 matmul GFLOP/s, the precision that
`--precision auto` picks here and why, and the data roots and caches found. Paste it into a bug report.

Examples:
  glare system
  glare system --json
  glare system --refresh     measure the matmul throughput again (it is cached per machine)
"""

from __future__ import annotations

import argparse
import json

NAME = "system"
HELP = "describe this machine: processor, threads, versions, matmul GFLOP/s, the precision auto picks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of aligned lines")
    parser.add_argument(
        "--refresh", action="store_true", help="measure the matmul throughput again instead of the cache"
    )


def run(args: argparse.Namespace) -> int:
    from ..system import format_report, system_report

    report = system_report(refresh=args.refresh)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
