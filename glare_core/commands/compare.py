"""Compare PiPa's and SSR's training-only terms with the plain light decoder, on one frozen backbone.

Every variant trains the same light decoder (``glare_core.neighbours.segmentation``) on the same cached frozen
features, with the same seed, resolution and steps; only the extra training terms differ, and every variant
predicts with the decoder alone (no inference overhead):

  decoder     cross-entropy only
  pipa        + PiPa pixel contrast (0.1) + patch consistency (0.01)
  pixel       + PiPa pixel contrast only
  patch       + PiPa patch consistency only
  ssr         + SSR fusion branch from a frozen encoder (--ssr-encoder: the frozen base by default, the
              stand-in for SAM; or a SAM ViT-B checkpoint file)
  all         pipa + ssr

Examples:
  glare compare --dataset camvid --variants decoder,pipa,ssr --out results/compare_camvid_seed0.json
  glare compare --dataset camvid --limit 40 --val-limit 20 --steps 100 --size 224x168
  glare compare --base random:test_vit --dataset synthetic --steps 20 --size 64x64
"""

from __future__ import annotations

import argparse
import sys
import time

from . import add_backbone_and_data_arguments, add_precision_argument, load_backbone_and_splits

NAME = "compare"
HELP = "light-decoder segmentation with PiPa / SSR training-only terms vs. the plain decoder"

VARIANTS = {
    "decoder": (),
    "pipa": ("pixel_contrast", "patch_consistency"),
    "pixel": ("pixel_contrast",),
    "patch": ("patch_consistency",),
    "ssr": ("ssr",),
    "all": ("pixel_contrast", "patch_consistency", "ssr"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_backbone_and_data_arguments(parser)
    parser.add_argument(
        "--variants",
        default="decoder,pipa,ssr",
        help=f"comma list of {', '.join(VARIANTS)} (%(default)s)",
    )
    parser.add_argument(
        "--ssr-encoder",
        default="base",
        help="SSR's frozen encoder: 'base' (the frozen --base without adapter, default), 'backbone' (the "
        "evaluated backbone itself) or a SAM checkpoint file (timm samvit_base_patch16)",
    )
    parser.add_argument("--size", default=None, help="input WxH (default 448x336; 112x84 in smoke mode)")
    parser.add_argument("--steps", type=int, default=None, help="decoder training steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=None, help="feature maps per step (default 8)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    parser.add_argument("--label-scale", type=float, default=None, help="CE resolution factor (default 1.0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    parser.add_argument("--out", default=None, help="write {variant: result} JSON here")
    add_precision_argument(parser)


def _config(args: argparse.Namespace):
    from glare_core.features import parse_size
    from glare_core.neighbours.segmentation import SegTrainConfig

    overrides = {}
    if args.size is not None:
        overrides["size"] = parse_size(args.size)
    for name in ("steps", "batch_size", "lr", "seed", "label_scale"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_cache:
        overrides["cache"] = False
    overrides["precision"] = overrides["train_precision"] = args.precision
    return SegTrainConfig.default(**overrides)


def run(args: argparse.Namespace) -> int:
    import torch

    from glare_core.evaluation import load_backbone, save_result
    from glare_core.neighbours.segmentation import train_segmentation

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"glare compare: unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    try:
        cfg = _config(args)
        start = time.perf_counter()
        backbone, adapter, train_ds, val_ds = load_backbone_and_splits(args, cfg.seed)
        encoder = None
        if any("ssr" in VARIANTS[v] for v in variants):
            if args.ssr_encoder == "base":
                encoder = load_backbone(args.base) if adapter else None  # without adapter: the same features
            elif args.ssr_encoder != "backbone":
                from glare_core.neighbours.ssr import load_sam_encoder

                encoder = load_sam_encoder(args.ssr_encoder)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"glare compare: {err}", file=sys.stderr)
        return 2
    print(f"base {args.base}" + (f" + adapter {args.adapter}" if adapter else ""))
    print(f"{train_ds!r} -> {val_ds!r}")
    results = {}
    print(f"{'variant':<10} {'mIoU %':>7} {'pix acc %':>9} {'s/step':>7} {'train s':>8}")
    for v in variants:
        r = train_segmentation(backbone, train_ds, val_ds, cfg, extra_terms=VARIANTS[v], ssr_encoder=encoder)
        r.update(variant=v, base=args.base, adapter=adapter)
        results[v] = r
        t = r["timings"]
        scores = f"{100 * r['miou']:7.1f} {100 * r['pixel_acc']:9.1f}"
        print(f"{v:<10} {scores} {t['step_s']:7.3f} {t['train_s']:8.1f}")
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.out:
        print(f"wrote {save_result(results, args.out)}")
    return 0
