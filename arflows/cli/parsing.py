"""The pieces every command's parser is made of: one-line errors, argument types, outputs."""

from __future__ import annotations

__all__ = [
    "Parser",
    "add_command",
    "bound",
    "force_argument",
    "fraction",
    "nonnegative_float",
    "nonnegative_int",
    "output_argument",
    "positive_float",
    "positive_int",
]

import argparse
import math
import textwrap
from collections.abc import Callable
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_command(
    commands: argparse._SubParsersAction, name: str, summary: str, text: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand's parser, with its description wrapped and its examples kept as written."""
    return commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(text, 79),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _number(text: str, kind: type, ok: Callable[[float], bool], what: str) -> float:
    """``text`` as a ``kind`` for which ``ok`` holds, else an error saying ``what`` it must be."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: v > 0, "a positive number")


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def bound(text: str) -> tuple[str, float | None, float | None]:
    """``COLUMN=LOW:HIGH``, either side empty (unbounded), as ``(column, low, high)``."""
    name, eq, interval = text.rpartition("=")
    low, colon, high = interval.partition(":")
    if not (eq and colon and name):
        raise argparse.ArgumentTypeError(
            f"expected COLUMN=LOW:HIGH with either side left empty (e.g. x=0: or p=0:1), got "
            f"{text!r}"
        )
    try:
        lower, upper = (float(v) if v.strip() else None for v in (low, high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in {text!r}") from None
    if (lower is None and upper is None) or math.isnan(lower or 0) or math.isnan(upper or 0):
        raise argparse.ArgumentTypeError(f"expected at least one numeric bound in {text!r}")
    if lower is not None and upper is not None and not lower < upper:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH in {text!r}")
    return name, lower, upper


def output_argument(p: argparse.ArgumentParser) -> None:
    """``-o FILE`` for a table (standard output by default) and ``--force``."""
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="output file: .csv, .npy or .parquet, or - for CSV on standard output (the "
        "default); an existing file is replaced only with --force",
    )
    force_argument(p, "replace an existing output file")


def force_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--force``: ``what`` it allows."""
    p.add_argument("--force", action="store_true", help=what)
