"""Benchmark the training step on this machine (a benchmark, not a test; writes JSON).

Measures, in one run, for a ViT-S at 224 px: images/s, peak memory and achieved FLOP/s of (a) the GLARE step
(bf16 autocast), (b) the DINO-only continual pre-training step, (c) a naive fp32 eager GLARE step; and this
machine's own bf16 and fp32 matmul throughput (2048 x 2048), so the step's FLOP/s (counted with
torch.utils.flop_counter) is reported as a fraction of a peak measured in the same run. Each step variant runs
in its own subprocess (its own peak memory). Takes a few minutes on 2 CPU cores with --steps 3. The book's
benchmark (chapter 11) is the same measurement run by `glare experiment efficiency`, which adds the git commit
and writes results/efficiency/bench.json.

Example:
  glare bench --out runs/bench.json --steps 5
"""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "benchmark the GLARE training step (img/s, memory, FLOP/s vs measured matmul peak) -> JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--out", default="runs/bench.json", help="JSON output file (default: runs/bench.json)"
    )
    parser.add_argument(
        "--base",
        default="dinov2_vits14_imgfocus",
        help="base model (default: the offline DINOv2 ViT-S/14; the weights do not change speed, e.g. "
        "random:vit_small_patch16_224 needs no files)",
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per variant (after warm-up; default 3)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the GLARE and DINO-only variants"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default, one per core)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["glare", "dino_only", "naive_fp32"],
        choices=["glare", "dino_only", "naive_fp32"],
        help="which steps to measure (default: all three)",
    )


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark

    result = benchmark(
        base=args.base,
        steps=args.steps,
        batch_size=args.batch_size,
        compile=args.compile,
        threads=args.threads,
        variants=tuple(args.variants),
        out=args.out,
    )
    for name, goal in result.get("goals", {}).items():
        print(f"{name}: {goal['value']:.3f} (goal {goal['goal']}): {'met' if goal['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0
