"""Errors a user can fix, and the exit codes of the ``glare`` command.

A command that meets bad input (a missing or corrupt file, a wrong option, a run folder that is in the way)
raises :class:`InputError` (:class:`DataError` for a dataset), or a ``ValueError`` / ``OSError``, which the
command line treats the same way, with a message that names the file and the fix. :func:`glare_core.cli.main`
prints that message, without a traceback, and exits with :data:`EXIT_BAD_INPUT`. A run that diverges (NaN
losses or weights) exits with :data:`EXIT_DIVERGED`. Any other exception is a bug: Python prints its traceback
and exits with 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_OK = 0
"""Success."""
EXIT_BUG = 1
"""An unexpected exception (Python's own exit code for an uncaught exception): please report it."""
EXIT_BAD_INPUT = 2
"""Bad input the user can fix (also argparse's code for a wrong option)."""
EXIT_DIVERGED = 3
"""The numbers went wrong: a NaN / infinite loss, weights or gradients (lower the learning rate)."""


class InputError(ValueError):
    """Bad input a user can fix; the message names the file or option and the fix."""


class CheckpointError(InputError):
    """A checkpoint or stored result that cannot be loaded safely (corrupt, truncated, foreign or unsafe)."""


class RunFolderError(InputError):
    """The output folder is in the way: it holds another run, or it cannot be written."""


class ProvenanceError(InputError):
    """A confirmatory result would not identify its code: uncommitted changes, or no committed
    pre-registration."""


class DataError(InputError):
    """Bad or missing data. The message names the file (or folder) and says how to fix it.

    Attributes:
        path: the offending file or folder, when there is one.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None


class MissingSplitError(DataError):
    """The folder of a requested split does not exist (``glare check-data`` skips it unless asked)."""


class MissingLabelsError(DataError):
    """Labels were asked for, but the split has none (e.g. CamVid test offline, every official test split)."""


class NonFiniteError(ArithmeticError):
    """Numbers became NaN or infinite (a loss, weights, gradients); nothing already saved was overwritten."""


class Registry(dict[str, T]):
    """Named entries (the presets, the study's tables), in the order they were registered.

    ``@REGISTRY.register("name")`` above a function adds it; :meth:`lookup` finds one by name or raises a
    ``ValueError`` that names what was asked for and lists the choices. Otherwise a plain ``dict``.

    Args:
        what: what an entry is, for messages (``"preset"``, ``"table"``).
    """

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds its function under ``name`` (a name registered twice is a bug)."""

        def add(entry: T) -> T:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = entry
            return entry

        return add

    def lookup(self, name: str) -> T:
        """``self[name]``, or a ``ValueError`` listing the choices."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {sorted(self)}")
        return self[name]
