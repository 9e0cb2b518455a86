"""Evaluate a backbone on semantic segmentation with the frozen-feature linear probe (and optionally k-NN
forgetting).

The protocol (``glare_core.evaluation``): images resized to --size (default 448x336, W x H, rounded to the
patch multiple), frozen patch tokens of the last block (--layers last4: the last four, concatenated), cached
on disk; a BatchNorm + 1x1 conv head (--head decoder: a light conv decoder) trained on the training split for
--steps steps with a fixed --seed; mIoU, per-class IoU and pixel accuracy on the validation split at full
label resolution (--inference slide: probe-sized windows slid over each image, logits averaged). Every
compared backbone must use the same options.

Examples:
  glare evaluate --base dinov2_vits14_imgfocus --dataset camvid --out results/base.json
  glare evaluate --base dinov2_vits14_imgfocus --adapter runs/glare/adapter.safetensors --dataset camvid --knn
  glare evaluate --base random:test_vit --dataset synthetic --steps 50 --size 112x84
  glare evaluate --dataset camvid --inference slide --slide-scale 1.5   # windows over 720x540 frames
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import add_precision_argument

NAME = "evaluate"
HELP = "linear-probe segmentation mIoU of a base model (+ adapter), optional k-NN forgetting"


def _default(name: str) -> str:
    """``"default <value>"`` of a probe option, read from :class:`~glare_core.evaluation.ProbeConfig` (the one
    place the protocol's defaults live), with the smoke preset's value when ``GLARE_SMOKE=1`` changes it."""
    from glare_core.evaluation import ProbeConfig

    def show(value: object) -> str:
        if isinstance(value, tuple):
            return "x".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    full, smoke = getattr(ProbeConfig(), name), getattr(ProbeConfig.smoke(), name)
    return f"default {show(full)}" + ("" if smoke == full else f"; {show(smoke)} in smoke mode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--base", default="dinov2_vits14_imgfocus", help="base model name or weight file")
    parser.add_argument(
        "--adapter", default=None, help="adapter-only export (.safetensors) to add to the base"
    )
    parser.add_argument("--dataset", default="camvid", help="dataset name (camvid, idd_lite, synthetic, ...)")
    parser.add_argument(
        "--root", default=None, help="dataset folder (default: searched under the data roots)"
    )
    parser.add_argument("--train-split", default="train", help="split the probe trains on")
    parser.add_argument("--val-split", default="val", help="split the probe is scored on")
    parser.add_argument("--limit", type=int, default=None, help="use N training images (fixed --seed)")
    parser.add_argument("--val-limit", type=int, default=None, help="use N validation images (fixed --seed)")
    parser.add_argument(
        "--layers", default=None, help=f"last, last4, or block indices such as 9 ({_default('layers')})"
    )
    parser.add_argument(
        "--head", choices=("linear", "decoder"), default=None, help=f"probe head ({_default('head')})"
    )
    parser.add_argument("--size", default=None, help=f"probe input WxH ({_default('size')})")
    parser.add_argument("--steps", type=int, default=None, help=f"probe training steps ({_default('steps')})")
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"probe batch size ({_default('batch_size')})"
    )
    parser.add_argument("--lr", type=float, default=None, help=f"probe peak learning rate ({_default('lr')})")
    parser.add_argument("--seed", type=int, default=None, help=f"probe seed ({_default('seed')})")
    parser.add_argument(
        "--label-scale",
        type=float,
        default=None,
        help="training-loss resolution relative to the probe input, 1.0 for full resolution "
        f"({_default('label_scale')}); 0.5 costs about a quarter of 1.0 per step on a CPU",
    )
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation of the probe")
    parser.add_argument(
        "--inference",
        choices=("resize", "slide"),
        default=None,
        help="validation prediction: resize the whole image or slide probe-sized windows over it "
        f"({_default('inference')})",
    )
    parser.add_argument(
        "--slide-scale",
        type=float,
        default=None,
        help="slide: image resized to its label resolution times this factor first "
        f"({_default('slide_scale')})",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    parser.add_argument(
        "--knn", action="store_true", help="also measure k-NN top-1 on Tiny-ImageNet (forgetting)"
    )
    parser.add_argument("--knn-root", default=None, help="Tiny-ImageNet parquet folder")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    add_precision_argument(parser)


def _config(args: argparse.Namespace):
    from glare_core.evaluation import ProbeConfig
    from glare_core.features import parse_size

    overrides = {}
    if args.layers is not None:
        overrides["layers"] = args.layers
    if args.head is not None:
        overrides["head"] = args.head
    if args.size is not None:
        overrides["size"] = parse_size(args.size)
    for name in ("steps", "batch_size", "lr", "seed", "label_scale", "inference", "slide_scale"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides["precision"] = args.precision
    if args.no_flip:
        overrides["flip"] = False
    if args.no_cache:
        overrides["cache"] = False
    return ProbeConfig.default(**overrides)


def check_output_file(path: str) -> None:
    """Refuse an output file that cannot be written (a folder, or in an unwritable place), before any work.

    Raises:
        RunFolderError: naming the path and the fix.
    """
    from glare_core.errors import RunFolderError
    from glare_core.runs import check_writable

    out = Path(path)
    if out.is_dir():
        raise RunFolderError(f"--out {out} is a folder; give a file name such as {out / 'result.json'}")
    check_writable(out.parent)


def run(args: argparse.Namespace) -> int:
    from glare_core.data import build_dataset
    from glare_core.evaluation import (
        apply_adapter_and_record,
        evaluate_backbone,
        format_result,
        load_backbone,
        save_result,
    )

    try:
        cfg = _config(args)
        if args.out:  # found now, not after the whole probe has run
            check_output_file(args.out)
        start = time.perf_counter()
        backbone = load_backbone(args.base)
        adapter = apply_adapter_and_record(backbone, args.adapter, base=args.base) if args.adapter else None
        seed = cfg.seed
        train_ds = build_dataset(args.dataset, args.train_split, root=args.root, limit=args.limit, seed=seed)
        val_ds = build_dataset(args.dataset, args.val_split, root=args.root, limit=args.val_limit, seed=seed)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"glare evaluate: {err}", file=sys.stderr)
        return 2
    print(
        f"base {args.base}"
        + (f" + {adapter['mode']} r={adapter['rank']} from {args.adapter}" if adapter else "")
    )
    print(f"{train_ds!r} -> {val_ds!r}")
    result = evaluate_backbone(backbone, train_ds, val_ds, cfg)
    result["base"] = args.base
    result["adapter"] = adapter
    if args.knn:
        from glare_core.knn import knn_forgetting

        try:
            result["knn"] = knn_forgetting(
                backbone,
                root=args.knn_root,
                cache=cfg.cache,
                progress=cfg.progress,
                precision=cfg.precision,
            )
        except FileNotFoundError as err:
            print(f"glare evaluate: {err}", file=sys.stderr)
            return 2
    result["timings"]["command_s"] = time.perf_counter() - start
    print(format_result(result))
    t = result["timings"]
    print(
        f"features {t['train_features_s']:.1f} s train + {t['val_features_s']:.1f} s val"
        f"{' (cached)' if t['train_features_cached'] and t['val_features_cached'] else ''}, "
        f"probe {t['probe_train_s']:.1f} s train + {t['probe_eval_s']:.1f} s eval"
        + (f", k-NN {result['knn']['seconds']:.1f} s" if "knn" in result else "")
    )
    if args.out:
        print(f"wrote {save_result(result, args.out)}")
    return 0
