r"""The ``arflows`` command line: fit, sample, score, predict, diagnose and demo.

Each subcommand is a small function over the public API (:func:`arflows.fit`,
:func:`arflows.save` / :func:`arflows.load`, :mod:`arflows.data`, :mod:`arflows.diagnostics`),
in its own module: :mod:`~arflows.cli.fit`, :mod:`~arflows.cli.model` (sample, score,
diagnose), :mod:`~arflows.cli.predict` and :mod:`~arflows.cli.demo`; each adds its parser
with ``add_parser``.

Exit codes: 0 on success; 2 for a usage error (bad arguments, unreadable or invalid data, a
broken model directory, data that does not fit the model), reported as one line
``arflows: error: ...`` without a traceback; 1 for a failure at run time (training diverged,
a missing optional dependency, an output that cannot be written); 130 when interrupted.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..data import DataError
from ..io import ModelError
from . import demo, fit, model, predict
from .parsing import Parser


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="arflows",
        description="Autoregressive normalizing flows for PyTorch: fit a density to a table, "
        "sample from it, score rows, check the fit.",
        epilog="Exit codes: 0 success, 2 usage or data error, 1 failure at run time.",
    )
    parser.add_argument("--version", action="version", version=f"arflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit.add_parser(commands)
    model.add_parsers(commands)
    predict.add_parser(commands)
    demo.add_parser(commands)
    return parser


def _fail(error: BaseException, code: int) -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"arflows: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: The arguments, without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit code: 0 success, 2 usage or data error, 1 failure at run time, 130
        interrupted. Errors are reported as one line on standard error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    args.argv = argv
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader went away (`arflows sample m -n 100000 | head -2`): stop quietly. Standard
        # output is pointed at /dev/null so the flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DataError, ModelError, ValueError) as error:
        return _fail(error, 2)
    except (FloatingPointError, ImportError, OSError) as error:
        return _fail(error, 1)
    except KeyboardInterrupt:
        print("arflows: interrupted", file=sys.stderr)
        return 130
