"""The ``glare`` command line (also ``python -m glare_core``).

Every module in :mod:`glare_core.commands` is one subcommand. A command module defines

* ``NAME``: the subcommand (``"weights"``, ``"pretrain"`` ...),
* ``HELP``: a one-line description,
* ``add_arguments(parser)``: its options (with ``--help`` text),
* ``run(args) -> int``: the exit code.

Exit codes (:mod:`glare_core.errors`): 0 success, 2 bad input (a wrong option, a missing or corrupt file, a
run folder in the way: the message names it and the fix, no traceback), 3 a run whose numbers went NaN, 130
interrupted; anything else is a bug and prints its traceback (exit code 1). ``GLARE_DEBUG=1`` shows the
traceback of bad-input errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import EXIT_BAD_INPUT, EXIT_DIVERGED, NonFiniteError


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
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, OSError) as e:  # InputError, DataError, CheckpointError, FileNotFoundError ...
        if os.environ.get("GLARE_DEBUG"):
            raise
        where = (
            f" ({e.filename})"
            if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e)
            else ""
        )
        print(f"error: {e}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
