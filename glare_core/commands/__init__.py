"""One module per ``glare`` subcommand (see :mod:`glare_core.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

PRECISION_HELP = (
    "autocast precision: auto (default: bf16 where the CPU or GPU multiplies bf16 natively, measured once "
    "per machine; fp16 on a GPU without bf16; else fp32; `glare system` shows the choice), or bf16, "
    "fp16 (GPU only), fp32"
)


def add_precision_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """The ``--precision {auto,bf16,fp16,fp32}`` option every command shares."""
    from ..precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=default, help=PRECISION_HELP)


def add_backbone_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that train a head on a frozen backbone (``evaluate``, ``compare``): the
    backbone (``--base``, ``--adapter``) and the two splits (``--dataset``, ``--root``, ``--train-split``,
    ``--val-split``, ``--limit``, ``--val-limit``)."""
    parser.add_argument("--base", default="dinov2_vits14_imgfocus", help="base model name or weight file")
    parser.add_argument(
        "--adapter", default=None, help="adapter-only export (.safetensors) to add to the base"
    )
    parser.add_argument("--dataset", default="camvid", help="dataset name (camvid, idd_lite, synthetic, ...)")
    parser.add_argument(
        "--root", default=None, help="dataset folder (default: searched under the data roots)"
    )
    parser.add_argument("--train-split", default="train", help="split the head trains on")
    parser.add_argument("--val-split", default="val", help="split the head is scored on")
    parser.add_argument("--limit", type=int, default=None, help="use N training images (fixed --seed)")
    parser.add_argument("--val-limit", type=int, default=None, help="use N validation images (fixed --seed)")


def load_backbone_and_splits(args: argparse.Namespace, seed: int) -> tuple[Any, dict | None, Any, Any]:
    """What :func:`add_backbone_and_data_arguments` names: the backbone (with the adapter applied), the
    adapter's record (None without one), and the training and validation splits (reduced with ``seed``)."""
    from ..data import build_dataset
    from ..evaluation import apply_adapter_and_record, load_backbone

    backbone = load_backbone(args.base)
    adapter = apply_adapter_and_record(backbone, args.adapter, base=args.base) if args.adapter else None
    train_ds = build_dataset(args.dataset, args.train_split, root=args.root, limit=args.limit, seed=seed)
    val_ds = build_dataset(args.dataset, args.val_split, root=args.root, limit=args.val_limit, seed=seed)
    return backbone, adapter, train_ds, val_ds
