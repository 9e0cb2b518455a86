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
from typing import Any

from . import add_backbone_and_data_arguments, add_precision_argument, load_backbone_and_splits

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


def _probe_option(parser: argparse.ArgumentParser, name: str, help: str, **kw: Any) -> None:
    """``--<name>`` for the :class:`~glare_core.evaluation.ProbeConfig` field ``name``: None unless given (the
    config's default then applies), the help ending with that default (:func:`_default`)."""
    parser.add_argument("--" + name.replace("_", "-"), default=None, help=f"{help} ({_default(name)})", **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_backbone_and_data_arguments(parser)
    _probe_option(parser, "layers", "last, last4, or block indices such as 9")
    _probe_option(parser, "head", "probe head", choices=("linear", "decoder"))
    _probe_option(parser, "size", "probe input WxH")
    _probe_option(parser, "steps", "probe training steps", type=int)
    _probe_option(parser, "batch_size", "probe batch size", type=int)
    _probe_option(parser, "lr", "probe peak learning rate", type=float)
    _probe_option(parser, "seed", "probe seed", type=int)
    _probe_option(
        parser,
        "label_scale",
        "training-loss resolution relative to the probe input, 1.0 for full resolution; 0.5 costs about a "
        "quarter of 1.0 per step on a CPU",
        type=float,
    )
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation of the probe")
    _probe_option(
        parser,
        "inference",
        "validation prediction: resize the whole image or slide probe-sized windows over it",
        choices=("resize", "slide"),
    )
    _probe_option(
        parser,
        "slide_scale",
        "slide: image resized to its label resolution times this factor first",
        type=float,
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
    from glare_core.evaluation import evaluate_backbone, format_result, save_result

    try:
        cfg = _config(args)
        if args.out:  # found now, not after the whole probe has run
            check_output_file(args.out)
        start = time.perf_counter()
        backbone, adapter, train_ds, val_ds = load_backbone_and_splits(args, cfg.seed)
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
