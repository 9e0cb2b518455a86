"""GLARE continual self-supervised pre-training: train a frozen base ViT's UniAdapters on unlabelled images.

Writes to the output folder: config.json (the full configuration), metrics.jsonl (one line per step: losses,
lr, weight decay, EMA momentum, images/s), checkpoint.pt (every --set checkpoint_every steps, written
atomically), adapter.safetensors (the trained tensors only, a few MB) and summary.json.

Examples:
  glare pretrain --preset smoke                  # seconds: random test_vit on synthetic scenes
  glare pretrain --preset cpu                    # offline DINOv2 ViT-S/14 on CamVid, ~15 min on 2 cores
  glare pretrain --preset cpu --set objective.lambda_local=0.5 --set batch_size=32
  glare pretrain --preset cpu --out runs/cpu-1 --resume  # continue an interrupted run exactly
  glare pretrain --preset cpu --out runs/cpu-1 --overwrite  # replace that run (refused without it)

Under torchrun (torchrun --nproc_per_node 2 -m glare_core pretrain ...) the global batch is split over the
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..errors import EXIT_BAD_INPUT
from . import add_precision_argument

NAME = "pretrain"
HELP = "continual self-supervised pre-training (GLARE) of a base ViT's UniAdapters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import PRESETS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--preset",
        default="cpu",
        choices=sorted(PRESETS),
        help="starting configuration: smoke (seconds, synthetic), demo (~5 min CPU), cpu (~15 min, 2 cores), "
        "colab_t4 (16 GB T4, fp16), paper (full recipe). Default: cpu.",
    )
    parser.add_argument(
        "--base", help="base model (dinov2_vits14_imgfocus, dino_vits16, random:test_vit ...)"
    )
    parser.add_argument(
        "--dataset", help="target-domain dataset name (camvid, idd_lite, cityscapes, ade20k ...)"
    )
    parser.add_argument(
        "--root", help="dataset folder (default: found under ../shared/data or $GLARE_DATA_DIR)"
    )
    parser.add_argument("--out", help="output folder (default: runs/<preset>-<timestamp>)")
    parser.add_argument(
        "--steps", type=int, help="number of optimiser steps (overrides the preset's steps/epochs)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, nested with dots, typed from the config "
        "(e.g. --set batch_size=32 --set objective.lambda_local=0.5 --set heads.out_dim=4096); repeatable",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt with OUT/config.json (needs --out); same result as an "
        "uninterrupted run",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its config, metrics, checkpoint, adapter and summary); "
        "without it such a folder is refused",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    add_precision_argument(parser, default=None)  # None: the preset's (auto in every preset)


def build_config(args: argparse.Namespace):
    """The configuration from --preset, the shortcut options and --set (in that order)."""
    from ..config import TrainConfig, apply_overrides, preset

    recorded = Path(args.out) / "config.json" if args.out else None
    if args.resume and recorded is not None and recorded.exists():
        cfg = TrainConfig.load(recorded)
    elif args.resume and recorded is not None and (recorded.parent / "checkpoint.pt").exists():
        from ..runs import load_checkpoint  # config.json lost: the checkpoint records the config too

        cfg = TrainConfig.from_dict(load_checkpoint(recorded.parent / "checkpoint.pt")["config"])
    else:
        cfg = preset(args.preset)
    for key in ("base", "dataset", "root", "steps", "precision"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    apply_overrides(cfg, args.overrides)
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    import sys

    if args.resume and not args.out:
        print("--resume needs --out pointing at the interrupted run's folder", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.resume and args.overwrite:
        print("--resume and --overwrite contradict each other; choose one", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg = build_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    out = Path(args.out or cfg.output_dir or f"runs/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg.output_dir = str(out)

    from ..distributed import cleanup
    from ..train import pretrain

    try:  # bad input (a folder in the way, a corrupt checkpoint ...) and NaN runs: glare_core.cli.main
        summary = pretrain(cfg, out, resume=args.resume, overwrite=args.overwrite)
    finally:
        cleanup()  # the process group, when launched by torchrun
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"done: {summary['steps']} steps, {summary['minutes']:.1f} min, {summary['images_per_s']:.1f} img/s, "
        f"final loss {summary['final_loss']}; wrote {out}"
    )
    return 0
