"""One module per ``glare`` subcommand (see :mod:`glare_core.cli`)."""

from __future__ import annotations

import argparse

PRECISION_HELP = (
    "autocast precision: auto (default: bf16 where the CPU or GPU multiplies bf16 natively, measured once "
    "per machine; fp16 on a GPU without bf16; else fp32; `glare system` shows the choice), or bf16, "
    "fp16 (GPU only), fp32"
)


def add_precision_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """The ``--precision {auto,bf16,fp16,fp32}`` option every command shares."""
    from ..precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=default, help=PRECISION_HELP)
