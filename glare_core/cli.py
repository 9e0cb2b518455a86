"""The ``glare`` command line (also ``python -m glare_core``).

Every module in :mod:`glare_core.commands` is one subcommand. A command module defines

* ``NAME``: the subcommand (``"weights"``, ``"pretrain"`` ...),
* ``HELP``: a one-line description,
* ``add_arguments(parser)``: its options (with ``--help`` text),
* ``run(args) -> int``: the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def command_modules() -> list:
    """The command modules, sorted by name."""
    mods = [
        importlib.import_module(f"{commands.__name__}.{m.name}")
        for m in pkgutil.iter_modules(commands.__path__)
    ]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glare",
        description="GLARE: continual self-supervised pre-training with UniAdapters, and segmentation "
        "evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"glare_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
