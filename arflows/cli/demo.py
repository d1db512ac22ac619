"""``arflows demo``: fit a MAF to the MAF paper's figure-1 density and draw it."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import time
from pathlib import Path

import torch

from ..data import figure1, figure1_log_prob
from ..diagnostics import gaussianized_figure
from ..files import check_new
from ..flows import MAF
from ..train import fit
from .parsing import add_command, force_argument, positive_int

_FIGURES = ("figure1.png", "gaussianized.png")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``demo`` to the subcommands."""
    p = add_command(
        commands,
        "demo",
        "fit a MAF to the MAF paper's figure-1 density and draw it",
        "Fits a MAF to the 2-D density of the MAF paper's figure 1 (x2 ~ N(0, 4), "
        "x1 | x2 ~ N(x2^2 / 4, 1)), prints the held-out average log-likelihood next to the "
        "exact one, and saves PNGs of the data, the true and learned densities, samples and "
        "the Gaussianised data.",
        "  arflows demo -o demo-output\n",
    )
    p.add_argument(
        "--points", type=positive_int, metavar="N", default=20_000, help="training points"
    )
    p.add_argument("--epochs", type=positive_int, default=60, help="maximum epochs")
    p.add_argument("--transforms", type=positive_int, default=5, metavar="K", help="MAF layers")
    p.add_argument(
        "--hidden", type=positive_int, nargs="+", default=[64, 64], help="MADE hidden widths"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("demo-output"),
        metavar="DIR",
        help="folder for the PNGs (demo-output)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    force_argument(p, "replace PNGs already in the output folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``arflows demo``."""
    from ..plot import density_figure, save_figure

    figures = [check_new(args.output / n, force=args.force) for n in _FIGURES]
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
    flow.eval()
    with torch.no_grad():
        learned = flow().log_prob(test).mean().item()
    exact = figure1_log_prob(test).mean().item()
    print(f"trained {len(history.train)} epochs in {seconds:.1f} s (best: {history.best_epoch})")
    print(f"held-out average log-likelihood: {learned:.4f} nats (10,000 test points)")
    print(f"exact average log-likelihood:    {exact:.4f} nats (the true density)")
    print(f"gap (an estimate of KL(p || q)):  {exact - learned:.4f} nats")
    path = density_figure(
        flow,
        x,
        figures[0],
        true_log_prob=figure1_log_prob,
        title=f"MAF on the figure-1 density: test log-likelihood {learned:.3f} "
        f"(exact {exact:.3f})",
    )
    print(f"figure: {path}")
    fig = gaussianized_figure(flow, test, true_log_prob=figure1_log_prob)
    print(f"figure: {save_figure(fig, figures[1])}")
    return 0
