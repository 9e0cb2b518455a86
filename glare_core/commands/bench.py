"""Benchmark the real training step on this machine (a benchmark, not a test; writes JSON).

Times glare_core.train.train_step, the function `glare pretrain` calls at every step, for a ViT-S at 224 px:
(a) the GLARE step in the precision `auto` picks here, (b) the DINO-only step (same precision), and (c) the
GLARE step forced to each precision this device offers (CPU: bf16 and fp32); and this machine's own matmul
throughput per precision (1024 x 1024 products), so each step's FLOP/s (counted with torch.utils.flop_counter)
is reported as a fraction of its own precision's peak measured in the same run. Each variant's peak memory and
FLOPs come from its own subprocess. On a processor without fast bf16 the forced-bf16 variant is slow (minutes
per step): leave it out with --variants glare dino_only glare_fp32. The book's benchmark (chapter 11) is the
same measurement run by `glare experiment efficiency`, which adds the git commit and writes
results/efficiency/bench.json.

Examples:
  glare bench --out runs/bench.json --steps 5
  glare bench --threads 1 --variants glare glare_trunk6 glare_trunk8 glare_trunk10   # the cached trunk
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
        default=None,
        metavar="VARIANT",
        help="which steps to measure: glare, dino_only, glare_bf16, glare_fp16 (GPU only), glare_fp32, or "
        "glare_trunk<n> (the cached frozen trunk of n blocks, e.g. glare_trunk8; its bank build is timed "
        "too) (default: every one of the first five this device offers)",
    )


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark

    result = benchmark(
        base=args.base,
        steps=args.steps,
        batch_size=args.batch_size,
        compile=args.compile,
        threads=args.threads,
        variants=tuple(args.variants) if args.variants else None,
        out=args.out,
    )
    for name, goal in result.get("goals", {}).items():
        print(f"{name}: {goal['value']:.3f} (goal {goal['goal']}): {'met' if goal['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0
