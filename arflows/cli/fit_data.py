"""What ``arflows fit`` fits: the rows of each split, the flow built for them, its options."""

from __future__ import annotations

__all__ = [
    "DEFAULT_COMPONENTS",
    "Splits",
    "build_flow",
    "grid_steps",
    "in_memory",
    "sizing",
    "streamed",
    "support_of",
    "training_options_for",
]

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import (
    ParquetStream,
    Table,
    check_rows,
    describe_ties,
    grid_columns,
    grid_origins,
    load_dataset,
    read_table,
)
from ..flows import MAF, Flow, build, flow_classes, flow_options
from ..train import Sizing, training_options
from .common import CHUNK, fractions, scores, short, split

# The most mixture components the default gmm base tries (chosen on the validation rows).
DEFAULT_COMPONENTS = 8



@dataclass
class Splits:
    """What a fit draws on: the rows of each split and how to score them."""

    source: str
    dataset: str | None
    rows: int
    columns: list[str]
    context_columns: list[str]
    dequantize: dict[int, float] | list[int]  # {column: grid step}, or integer columns
    train: object  # (x, c) tensors, or a ParquetStream part
    valid: object | None
    test: object | None
    counts: dict[str, int]
    score: Callable[[Flow, object, int], float]
    notes: list[str]
    origins: dict[int, float]


def load_data(args: argparse.Namespace) -> tuple[Table, str, str | None]:
    if args.data is not None:
        if args.dataset is not None or args.points is not None:
            raise ValueError("give either DATA or --dataset/--points, not both")
        table = read_table(args.data, columns=args.columns, context_columns=args.context_columns)
        return table, str(args.data), None
    if args.columns or args.context_columns:
        raise ValueError("--columns and --context-columns select columns of a DATA file")
    name = args.dataset or "figure1"
    table = load_dataset(name, args.points, seed=args.seed)
    return table, f"built-in dataset {name!r}", name


def in_memory(args: argparse.Namespace) -> Splits:
    """The rows of DATA (or a built-in dataset) in memory, split, with their notes."""
    table, source, dataset = load_data(args)
    x, c = table.x, table.c
    # Integer columns and other columns on a grid (multiples of 1000, of 0.5, ...) get noise
    # of their grid's step, so their cells are spread over, not spikes.
    cols = grid_columns(x) if args.dequantize == "auto" else {}
    ties = describe_ties(x, table.columns, dequantized=cols)
    notes = table.notes + check_rows(x, table.columns, dequantized=list(cols))
    notes += [f"column {t['column']!r}: {t['action']}" for t in ties]
    origins = grid_origins(x, cols)
    train, valid, test = split(len(x), args.valid_fraction, args.test_fraction, args.seed)

    def rows(idx: Tensor) -> tuple[Tensor, Tensor | None] | None:
        return (x[idx], None if c is None else c[idx]) if len(idx) else None

    def score(flow: Flow, part: tuple[Tensor, Tensor | None], seed: int) -> float:
        return scores(flow, *part, cols, draws=1, seed=seed).mean().item()

    counts = {"train": len(train), "valid": len(valid), "test": len(test)}
    return Splits(
        source, dataset, len(x), table.columns, table.context_columns, cols,
        rows(train), rows(valid), rows(test), counts, score, notes, origins,
    )  # fmt: skip


def streamed(args: argparse.Namespace) -> Splits:
    """The rows of a Parquet DATA file, split row by row, read in batches when used."""
    if args.data is None or args.data.suffix.lower() != ".parquet":
        raise ValueError(
            "--stream reads a Parquet file in batches: give a .parquet DATA file (without "
            f"--stream, other formats are read into memory), got {args.data or 'none'}"
        )
    stream = ParquetStream(args.data, args.columns, args.context_columns)
    cols = list(stream.integer_columns) if args.dequantize == "auto" else []
    parts = stream.split(fractions(args.valid_fraction, args.test_fraction), seed=args.seed)
    counts = dict(zip(("train", "valid", "test"), (p.rows for p in parts), strict=True))
    if counts["train"] < 2:
        raise ValueError(
            f"too few rows ({stream.rows}) for --valid-fraction {args.valid_fraction} and "
            f"--test-fraction {args.test_fraction}"
        )

    def score(flow: Flow, part: ParquetStream, seed: int) -> float:
        total, n = 0.0, 0
        for i, (x, c) in enumerate(part.batches(CHUNK)):
            lp = scores(flow, x, c, cols, draws=1, seed=(seed * 1_000_003 + i) % 2**62)
            total, n = total + lp.double().sum().item(), n + len(x)
        return total / n

    valid, test = (p if p.rows else None for p in parts[1:])
    return Splits(
        f"{args.data} (streamed)", None, stream.rows, stream.columns, stream.context_columns,
        cols, parts[0], valid, test, counts, score, [], {},
    )  # fmt: skip


# --- the flow -------------------------------------------------------------------------------


def build_flow(args: argparse.Namespace, data: Splits) -> Flow:
    """The flow of ``--flow`` with the options given or sized to the data."""
    if args.flow.lower() not in flow_classes():
        available = ", ".join(sorted(flow_classes()))
        raise ValueError(f"unknown --flow {args.flow!r}; available: {available}")
    hidden = args.hidden or sizing(data).hidden_features
    options: dict = dict(transforms=args.transforms, hidden_features=tuple(hidden))
    if args.bins is not None:
        options["bins"] = args.bins
    options.update(_base_options(args, data))
    if args.bounds:
        options["support"] = support_of(args.bounds, data)
    accepted = flow_options(args.flow)
    missing = [name for name in options if name not in accepted]
    if missing:
        raise ValueError(
            f"--flow {args.flow} takes no {', '.join(missing)} argument "
            f"({'--bins is for spline flows' if 'bins' in missing else 'not a CLI flow'})"
        )
    if data.context_columns and flow_classes()[args.flow.lower()] is MAF:
        # The context's direct path to the first layer's shifts holds the regression start
        # (arflows.flows.initialize_): the untrained flow is the linear-Gaussian regression.
        options["skip"] = True
    return build(args.flow, len(data.columns), len(data.context_columns), **options)


def sizing(data: Splits) -> Sizing:
    """The training options sized to the training rows (:func:`arflows.train.training_options`)."""
    return training_options(
        data.counts["train"], len(data.columns), context=len(data.context_columns)
    )


def _base_options(args: argparse.Namespace, data: Splits) -> dict:
    """The base and marginal options: a fitted mixture start where the family takes one."""
    accepted = flow_options(args.flow)
    explicit = {
        "base": args.base,
        "components": args.components,
        "marginals": args.marginals,
    }
    for name, value in explicit.items():
        if value is not None and name not in accepted:
            raise ValueError(f"--flow {args.flow} takes no --{name} option")
    if "base" not in accepted:
        return {}
    base = args.base or "gmm"
    options: dict = {"base": base}
    if base == "gmm" or (base == "mog" and args.components is not None):
        options["components"] = args.components or DEFAULT_COMPONENTS
    marginals = args.marginals
    if marginals is None:  # Gaussianised columns help the fitted Gaussian or mixture
        marginals = base in ("gmm", "gaussian") and not args.stream and "marginals" in accepted
    if marginals:
        options["marginals"] = True
    return options


def support_of(bounds: Sequence[tuple], data: Splits) -> list[tuple | None]:
    """``support=`` of the flow from ``--bounds``, refusing rows on or outside a bound."""
    support: list[tuple | None] = [None] * len(data.columns)
    for name, lower, upper in bounds:
        if name not in data.columns:
            raise ValueError(
                f"--bounds names {name!r}, which is not a data column (data columns: "
                f"{short(data.columns)})"
            )
        j = data.columns.index(name)
        if support[j] is not None:
            raise ValueError(f"--bounds gives column {name!r} twice")
        support[j] = (lower, upper)
        _check_inside(name, j, lower, upper, data)
    return support


def _check_inside(
    name: str, j: int, lower: float | None, upper: float | None, data: Splits
) -> None:
    # Streamed rows are checked by the fit itself (their log-density would be -inf).
    parts = [p for p in (data.train, data.valid, data.test) if isinstance(p, tuple)]
    if not parts:
        return
    x = torch.cat([p[0][:, j] for p in parts])
    # A dequantized value v becomes v + h u, u in [0, 1): its cell [v, v + h) must fit.
    step = grid_steps(data).get(j)
    top = x if step is None else x + step
    low = lower is not None and ((x <= lower) if step is None else (x < lower))
    high = upper is not None and ((x >= upper) if step is None else (top > upper))
    outside = torch.as_tensor(low) | torch.as_tensor(high)
    if bool(outside.any()):
        interval = f"({'-inf' if lower is None else f'{lower:g}'}, "
        interval += f"{'inf' if upper is None else f'{upper:g}'})"
        raise ValueError(
            f"--bounds {name}: {int(outside.sum())} of {len(x)} rows of column {name!r} "
            f"lie on or outside the open interval {interval} (values from "
            f"{x.min().item():g} to {x.max().item():g}); widen the bound"
        )

def training_options_for(args: argparse.Namespace, data: Splits) -> dict:
    """The training options: those given on the command line, the rest sized to the data."""
    sized = sizing(data).as_dict()
    for name in ("epochs", "batch_size", "patience", "weight_decay", "warmup"):
        if getattr(args, name) is not None:
            sized[name] = getattr(args, name)
    return sized


def grid_steps(data: Splits) -> dict[int, float]:
    """``{column: grid step}`` of the dequantized columns (integer columns: step 1)."""
    cols = data.dequantize
    return dict(cols) if isinstance(cols, dict) else dict.fromkeys(cols, 1.0)
