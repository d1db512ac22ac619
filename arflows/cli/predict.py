"""``arflows predict``: conditional quantiles (and means) of a model's targets, per row."""

from __future__ import annotations

__all__ = ["add_parser", "predict"]

import argparse
import math
from pathlib import Path

import torch

from ..data import floor_to_grid
from ..flows import mean, quantiles
from ..io import load
from .common import (
    dims,
    grid,
    model_metadata,
    names,
    output_path,
    read_contexts,
    summary_stream,
    write,
)
from .parsing import add_command, output_argument, positive_int

# The quantiles written when --quantiles is not given.
_DEFAULT = (0.05, 0.5, 0.95)


def _probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(
            f"expected a probability strictly between 0 and 1, got {text}"
        )
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``predict`` to the subcommands."""
    p = add_command(
        commands,
        "predict",
        "write conditional quantiles (and means) of a conditional model's targets per row",
        "Probabilistic regression with a conditional model: for every row of DATA (read for "
        "the model's context columns; NPY/NPZ by position) writes the quantiles of each "
        "target's conditional distribution p(y_j | context), one column per target and "
        "quantile (y_q0.05, y_q0.5, ...), and with --mean the conditional mean (y_mean). Row i "
        "of the output predicts row i of DATA. A model of one target gets exact quantiles (the "
        "base's quantile through the flow's inverse; normal, Gaussian, GMM and MoG bases); a "
        "model of several targets gets each target's empirical quantiles of --samples draws "
        "per row, and the mean is always the "
        "average of --samples draws (Monte Carlo: its error shrinks as 1/sqrt(N)). Dequantized "
        "targets (integers, values on a grid) are predicted from the continuous density of "
        "the dequantized values and put back onto their grid (the quantile of the grid "
        "values; the mean of the draws put on the grid) unless --continuous.",
        "  arflows predict model data.csv -o predictions.csv\n"
        "  arflows predict model data.csv --quantiles 0.1 0.5 0.9 --mean > predictions.csv\n"
        "  arflows predict model contexts.parquet --mean --quantiles -o means.parquet\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved conditional model")
    p.add_argument("data", type=Path, metavar="DATA", help="a table with the context columns")
    p.add_argument(
        "--quantiles",
        type=_probability,
        nargs="*",
        default=list(_DEFAULT),
        metavar="Q",
        help="probabilities strictly between 0 and 1 (default: 0.05 0.5 0.95); none with "
        "--mean for the mean only",
    )
    p.add_argument(
        "--mean",
        action="store_true",
        help="also write each target's conditional mean (Monte Carlo, from --samples draws)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=1000,
        metavar="N",
        help="draws per row for the mean and for the quantiles of a model of several "
        "targets (1000)",
    )
    p.add_argument(
        "--continuous", action="store_true", help="keep dequantized targets off their grid"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the draws (0)")
    output_argument(p)
    p.set_defaults(run=predict)


def _header(columns: list[str], probs: list[float], with_mean: bool) -> list[str]:
    """``a_q0.05, a_q0.5, a_mean, b_q0.05, ...``: target by target."""
    suffixes = [f"_q{q:.10g}" for q in probs] + (["_mean"] if with_mean else [])
    return [name + suffix for name in columns for suffix in suffixes]


def predict(args: argparse.Namespace) -> int:
    """Runs ``arflows predict``."""
    probs = list(args.quantiles)
    if not probs and not args.mean:
        raise ValueError("nothing to predict: give --quantiles Q [Q ...] and/or --mean")
    if len(set(probs)) != len(probs):
        raise ValueError(f"--quantiles repeats a probability: {' '.join(map(str, probs))}")
    output = output_path(args)
    flow = load(args.model)
    features, context = dims(flow)
    if context == 0:
        raise ValueError(
            f"the model in {args.model} is unconditional: predict needs a model fit with "
            "--context-columns; draw from this one with `arflows sample`"
        )
    columns = names(flow.columns, "x", features)
    c = read_contexts(args.data, names(flow.context_columns, "c", context), args.model)
    c = c.to(next(flow.parameters()).dtype)
    steps, origins = grid(model_metadata(flow))
    on_grid = bool(steps) and not args.continuous
    flow.cpu().eval()
    parts = []  # (N, k, D) each
    if probs:
        x = quantiles(flow, probs, c, samples=args.samples,
                      generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
        parts.append(floor_to_grid(x, steps, origins) if on_grid else x)
    if args.mean:
        apply = (lambda draws: floor_to_grid(draws, steps, origins)) if on_grid else None
        m = mean(flow, c, samples=args.samples, apply=apply,
                 generator=torch.Generator().manual_seed(args.seed + 1))  # fmt: skip
        parts.append(m[:, None])
    values = torch.cat(parts, 1).transpose(1, 2).reshape(len(c), -1)  # target by target
    write(output, values, _header(columns, probs, args.mean))
    summary = f"predicted {len(values)} rows ({features} target{'s' * (features > 1)})"
    print(summary + (f", written to {output}" if output else ""), file=summary_stream(output))
    return 0
