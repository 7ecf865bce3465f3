"""Bad input a user can fix, and the one way every command line answers it.

Every CLI (``pipeline.datasets.manifest``, ``pipeline.features.import_features``, ``flows.*``) checks its
arguments and input files before any heavy work and answers bad input with one line,
``error: <file>[, line N]: <what is wrong>``, and exit status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_BAD_INPUT = 2


class UserError(ValueError):
    """Input a user can fix; the message reads ``<file>[, line N]: <what is wrong>``."""


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--debug`` flag: show tracebacks instead of one ``error:`` line."""
    parser.add_argument("--debug", action="store_true", help="show a traceback instead of one error line")


@contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Turn a :class:`UserError` raised inside into ``error: <message>`` on stderr and exit status 2.

    With ``debug`` the exception propagates unchanged (traceback).
    """
    try:
        yield
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path`; raises :class:`UserError` when it is not an existing regular file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected a {what})")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the {what} is empty (0 bytes)")
    return path


def require_dir(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """``path`` as a :class:`Path`; raises :class:`UserError` when it is not an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such {what}" if not path.exists() else f"{path}: not a folder (expected a {what})")
    return path


def require_positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Raise :class:`UserError` (``--name: ...``) when ``value`` is not positive (or non-negative)."""
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@contextmanager
def named_errors(where: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a ``ValueError`` or ``TypeError`` from a settings constructor as a :class:`UserError` naming ``where``."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {' '.join(str(exc).split())}") from None
