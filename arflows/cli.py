r"""The ``arflows`` command line."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .data import figure1, figure1_log_prob
from .flows import MAF
from .train import fit


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arflows", description="Autoregressive normalizing flows for PyTorch."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="fit a MAF to the MAF paper's figure-1 density and draw it",
        description=(
            "Fits a MAF to the 2-D density of the MAF paper's figure 1 (x2 ~ N(0, 4), "
            "x1 | x2 ~ N(x2^2 / 4, 1)), prints the held-out average log-likelihood next to "
            "the exact one, and saves a PNG of the data, the true and learned densities and "
            "samples."
        ),
    )
    demo.add_argument("--points", type=_positive_int, default=20_000, help="training points")
    demo.add_argument("--epochs", type=_positive_int, default=60, help="maximum epochs")
    demo.add_argument("--transforms", type=_positive_int, default=5, help="MAF layers")
    demo.add_argument(
        "--hidden", type=_positive_int, nargs="+", default=[64, 64], help="MADE hidden widths"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument(
        "-o", "--output", type=Path, default=Path("demo-output"), help="folder for the PNG"
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x = figure1(args.points, generator=generator)
    test = figure1(10_000, generator=generator)
    flow = MAF(2, transforms=args.transforms, hidden_features=tuple(args.hidden))
    print(
        f"fitting a MAF ({args.transforms} layers, hidden {tuple(args.hidden)}) to "
        f"{args.points} points of the MAF paper's figure-1 density"
    )
    start = time.perf_counter()
    history = fit(flow, x, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        learned = flow().log_prob(test).mean().item()
    exact = figure1_log_prob(test).mean().item()
    print(f"trained {len(history.train)} epochs in {seconds:.1f} s (best: {history.best_epoch})")
    print(f"held-out average log-likelihood: {learned:.4f} nats (10,000 test points)")
    print(f"exact average log-likelihood:    {exact:.4f} nats (the true density)")
    print(f"gap (an estimate of KL(p || q)):  {exact - learned:.4f} nats")

    from .plot import density_figure

    path = density_figure(
        flow,
        x,
        args.output / "figure1.png",
        true_log_prob=figure1_log_prob,
        title=f"MAF on the figure-1 density: test log-likelihood {learned:.3f} "
        f"(exact {exact:.3f})",
    )
    print(f"figure: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: The arguments, without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    args = _parser().parse_args(argv)
    return {"demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
