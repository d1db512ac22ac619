r"""The ``arflows`` command line: ``fit``, ``sample``, ``score``, ``diagnose`` and ``demo``.

Each subcommand is a small function over the public API (:func:`arflows.fit`,
:func:`arflows.save` / :func:`arflows.load`, :mod:`arflows.data`, :mod:`arflows.diagnostics`).

Exit codes: 0 on success; 2 for a usage error (bad arguments, unreadable or invalid data, a
broken model directory, data that does not fit the model), reported as one line
``arflows: error: ...`` without a traceback; 1 for a failure at run time (training diverged,
a missing optional dependency, an output that cannot be written); 130 when interrupted.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import inspect
import json
import math
import os
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import flows as _flows
from ._version import __version__
from .data import (
    DataError,
    ParquetStream,
    Table,
    dequantize,
    discrete_log_prob,
    figure1,
    figure1_log_prob,
    load_dataset,
    read_table,
    split_indices,
)
from .data import write_table as _write_table
from .diagnostics import gaussianize, gaussianized_figure, joint_normality, normality, qq_figure
from .files import FileExists, atomic_path, check_new, is_device
from .flows import MAF, Flow
from .io import ModelError, is_model_dir, load, save
from .train import World, fit, init_from_env, shutdown

_CHUNK = 8192


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, text: str, examples: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(text, 79),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="arflows",
        description="Autoregressive normalizing flows for PyTorch: fit a density to a table, "
        "sample from it, score rows, check the fit.",
        epilog="Exit codes: 0 success, 2 usage or data error, 1 failure at run time.",
    )
    parser.add_argument("--version", action="version", version=f"arflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        commands,
        "fit",
        "fit a flow to a data file (or a built-in dataset) and save it",
        "Fits a normalizing flow by maximum likelihood to the rows of DATA (CSV with a header, "
        "NPY, NPZ or Parquet), holding out a validation split for early stopping and a test "
        "split for an honest score. Prints the train/valid/test average log-likelihood in "
        "nats per row, and writes the model directory (model.safetensors, config.json) with "
        "report.json, report.md and loss.png. Without DATA it fits the built-in figure-1 "
        "density of the MAF paper (or --dataset NAME). Data and context are standardised "
        "inside the model; integer-valued columns are dequantized (uniform noise) unless "
        "--dequantize none. With --stream a Parquet file is read in batches, never whole. "
        "Launched by torchrun, the processes train data-parallel (gloo on CPU, NCCL on GPUs) "
        "with --batch-size rows per step in all, and only rank 0 prints and writes.",
        "  arflows fit                                  # built-in figure-1 data -> model/\n"
        "  arflows fit data.csv --flow nsf -o model\n"
        "  arflows fit data.csv --columns x y --context-columns t --epochs 200 -o model\n"
        "  arflows fit big.parquet --stream --batch-size 4096 -o model\n"
        "  torchrun --nproc_per_node 4 -m arflows fit data.csv -o model   # data-parallel\n",
    )
    p.add_argument("data", nargs="?", type=Path, metavar="DATA", help="the data file")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="a built-in dataset instead of DATA: figure1 (default), moons, 8gaussians, "
        "checkerboard, pinwheel, spirals, rings, digits",
    )
    p.add_argument(
        "--points", type=_positive_int, metavar="N", help="rows drawn from a built-in dataset"
    )
    p.add_argument("--columns", nargs="+", metavar="NAME", help="data columns (default: all)")
    p.add_argument("--context-columns", nargs="+", metavar="NAME", help="columns to condition on")
    p.add_argument(
        "--flow",
        default="maf",
        metavar="NAME",
        help=f"the flow family: {', '.join(sorted(_flows.flow_classes()))} (maf)",
    )
    p.add_argument(
        "--transforms", type=_positive_int, default=5, metavar="K", help="flow layers (5)"
    )
    p.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=[64, 64],
        metavar="H",
        help="hidden widths of each layer's network (64 64)",
    )
    p.add_argument(
        "--bins", type=_positive_int, metavar="K", help="spline bins (nsf only; default 8)"
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=100, metavar="N", help="maximum epochs (100)"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=256, metavar="N", help="mini-batch rows (256)"
    )
    p.add_argument(
        "--lr", type=_positive_float, default=1e-3, metavar="LR", help="learning rate (1e-3)"
    )
    p.add_argument(
        "--patience",
        type=_positive_int,
        default=10,
        metavar="N",
        help="epochs without progress (10)",
    )
    p.add_argument(
        "--schedule", choices=("cosine", "plateau", "none"), help="learning-rate schedule"
    )
    p.add_argument(
        "--valid-fraction", type=_fraction, default=0.1, metavar="F", help="validation rows (0.1)"
    )
    p.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="held-out test rows (0.1; 0: none)",
    )
    p.add_argument(
        "--dequantize",
        choices=("auto", "none"),
        default="auto",
        help="auto: add U[0,1) noise to integer-valued columns (default); none: never",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the split, init and noise (0)"
    )
    p.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="torch device, e.g. cuda (cpu)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--stream",
        action="store_true",
        help="read a Parquet DATA file in batches instead of into memory (for more rows than "
        "fit in RAM); splits are drawn row by row, integer-typed columns are dequantized",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("model"),
        metavar="MODEL_DIR",
        help="the model directory to write (model); checkpoints go to MODEL_DIR.partial/ "
        "until it is written",
    )
    p.add_argument(
        "--bounds",
        nargs="+",
        type=_bound,
        metavar="COL=LOW:HIGH",
        help="bounded columns, e.g. income=0: share=0:1 (an empty side is unbounded); the "
        "model's support, so samples stay inside; data on or outside a bound is refused",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the fit from MODEL_DIR.partial/checkpoint.safetensors (same command "
        "otherwise); starts afresh without one",
    )
    _force_argument(p, "replace an existing model directory MODEL_DIR")
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="N",
        help="write the checkpoint every N steps (default: after each epoch)",
    )

    p = _command(
        commands,
        "sample",
        "draw samples from a saved model",
        "Draws N samples from the model in MODEL_DIR and writes them with the model's column "
        "names (.csv, .npy or .parquet by the suffix of -o; CSV to standard output without "
        "-o). A conditional model needs a context: one vector (--context) or a table of "
        "contexts (--context-file, N samples per row; its context columns lead each output "
        "row). Dequantized integer columns are floored back to integers unless --continuous.",
        "  arflows sample model -n 1000 -o samples.csv\n"
        "  arflows sample model -n 100 --context 0.5 -o samples.parquet\n"
        "  arflows sample model -n 10 --context-file contexts.csv -o samples.npy\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument(
        "-n", "--samples", type=_positive_int, required=True, metavar="N", help="samples to draw"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--context", type=float, nargs="+", metavar="V", help="a context vector")
    group.add_argument("--context-file", type=Path, metavar="FILE", help="a table of contexts")
    p.add_argument("--continuous", action="store_true", help="keep dequantized columns real")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: fresh randomness)")
    _output_argument(p)

    p = _command(
        commands,
        "score",
        "write the log-density of each row of a data file (anomaly scores)",
        "Computes log p(x) (natural log) of every row of DATA under the model in MODEL_DIR; "
        "low values flag unusual rows. Columns are picked by the names the model was fit on "
        "(NPY/NPZ by position); row i of the output scores row i of DATA. For integer "
        "columns the model dequantized, the score uses --draws seeded U[0,1) noise draws: one "
        "draw gives log p(k + u), as in the fit report; more estimate the log-probability "
        "log P(k) of the integer values.",
        "  arflows score model data.csv -o scores.csv\n"
        "  arflows score model data.parquet --draws 100 > scores.csv\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument("data", type=Path, metavar="DATA", help="the data file")
    p.add_argument(
        "--draws", type=_positive_int, default=1, metavar="S", help="noise draws per row (1)"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the dequantization noise (0)"
    )
    _output_argument(p)

    p = _command(
        commands,
        "diagnose",
        "check a model: map data to the base space and test its normality",
        "The MAF paper's diagnostic: maps DATA to the base space, z = f(x), where a good model "
        "gives standard normal z. Prints per-column KS statistic and p-value, skewness and "
        "excess kurtosis, and joint moment errors; writes normality.csv, diagnostics.json, "
        "qq.png (QQ plots, the least Gaussian columns first) and, for a 2-D unconditional "
        "model, gaussianized.png (data, model density, Gaussianised data). Without DATA it "
        "draws fresh rows of the built-in dataset the model was fit on (digits: the same "
        "1797 images).",
        "  arflows diagnose model data.csv -o diagnostics/\n  arflows diagnose model\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA", help="the data file")
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the dequantization noise (0)"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="DIR",
        help="output folder (default: MODEL_DIR/diagnostics)",
    )
    _force_argument(p, "replace diagnostics files already in the output folder")

    p = _command(
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
        "--points", type=_positive_int, metavar="N", default=20_000, help="training points"
    )
    p.add_argument("--epochs", type=_positive_int, default=60, help="maximum epochs")
    p.add_argument("--transforms", type=_positive_int, default=5, metavar="K", help="MAF layers")
    p.add_argument(
        "--hidden", type=_positive_int, nargs="+", default=[64, 64], help="MADE hidden widths"
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
    _force_argument(p, "replace PNGs already in the output folder")
    return parser


def _output_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="output file: .csv, .npy or .parquet, or - for CSV on standard output (the "
        "default); an existing file is replaced only with --force",
    )
    _force_argument(p, "replace an existing output file")


def _force_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=what)


def _bound(text: str) -> tuple[str, float | None, float | None]:
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


# --- helpers ---------------------------------------------------------------------------


def _flow_class(name: str) -> type[Flow]:
    found = _flows.flow_classes()
    cls = found.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown --flow {name!r}; available: {', '.join(sorted(found))}")
    return cls


def _build_flow(args: argparse.Namespace, data: _Splits) -> Flow:
    cls = _flow_class(args.flow)
    kwargs: dict = dict(
        features=len(data.columns),
        context=len(data.context_columns),
        transforms=args.transforms,
        hidden_features=tuple(args.hidden),
    )
    if args.bins is not None:
        kwargs["bins"] = args.bins
    if args.bounds:
        kwargs["support"] = _support(args.bounds, data)
    accepted = _accepted_arguments(cls)
    missing = [name for name in kwargs if name not in accepted]
    if missing:
        raise ValueError(
            f"--flow {args.flow} takes no {', '.join(missing)} argument "
            f"({'--bins is for spline flows' if 'bins' in missing else 'not a CLI flow'})"
        )
    return cls(**kwargs)


def _support(bounds: Sequence[tuple], data: _Splits) -> list[tuple | None]:
    """``support=`` of the flow from ``--bounds``, refusing rows on or outside a bound."""
    support: list[tuple | None] = [None] * len(data.columns)
    for name, lower, upper in bounds:
        if name not in data.columns:
            raise ValueError(
                f"--bounds names {name!r}, which is not a data column (data columns: "
                f"{_short(data.columns)})"
            )
        j = data.columns.index(name)
        if support[j] is not None:
            raise ValueError(f"--bounds gives column {name!r} twice")
        support[j] = (lower, upper)
        # Streamed rows are checked by the fit itself (their log-density would be -inf).
        parts = [p for p in (data.train, data.valid, data.test) if isinstance(p, tuple)]
        if not parts:
            continue
        x = torch.cat([p[0][:, j] for p in parts])
        # A dequantized integer k becomes k + u, u in [0, 1): it must fit in [k, k + 1).
        top = x + 1 if j in data.dequantize else x
        low = lower is not None and ((x < lower) if j in data.dequantize else (x <= lower))
        high = upper is not None and ((top > upper) if j in data.dequantize else (x >= upper))
        outside = torch.as_tensor(low) | torch.as_tensor(high)
        if bool(outside.any()):
            interval = f"({'-inf' if lower is None else f'{lower:g}'}, "
            interval += f"{'inf' if upper is None else f'{upper:g}'})"
            raise ValueError(
                f"--bounds {name}: {int(outside.sum())} of {len(x)} rows of column {name!r} "
                f"lie on or outside the open interval {interval} (values from "
                f"{x.min().item():g} to {x.max().item():g}); widen the bound"
            )
    return support


def _accepted_arguments(cls: type[Flow]) -> set[str]:
    # Subclasses often forward **kwargs to their parent: follow the MRO until one doesn't.
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available")
    return device


def _dequantized(x: Tensor, columns: Sequence[int], seed: int) -> Tensor:
    # A fixed draw of the uniform noise the model was trained with, so scores are repeatable.
    if not columns:
        return x
    return dequantize(x, list(columns), generator=torch.Generator().manual_seed(seed))


def _names(names: Sequence[str] | None, prefix: str, n: int) -> list[str]:
    return list(names) if names else [f"{prefix}{i}" for i in range(n)]


def _metadata(flow: Flow) -> dict:
    metadata = getattr(flow, "metadata", None) or {}
    columns = metadata.get("dequantized_columns", [])
    features = _dims(flow)[0]
    if not isinstance(columns, list) or not all(
        isinstance(j, int) and not isinstance(j, bool) and 0 <= j < features for j in columns
    ):
        raise ModelError(
            f"the model's metadata lists dequantized columns {columns!r}; expected column "
            f"indices in [0, {features})"
        )
    return metadata


def _dims(flow: Flow) -> tuple[int, int]:
    arguments = flow.config["arguments"]
    columns = getattr(flow, "columns", None)
    context_columns = getattr(flow, "context_columns", None)
    features = len(columns) if columns else int(arguments["features"])
    context = len(context_columns) if context_columns else int(arguments.get("context", 0))
    return features, context


def _read_for_model(path: Path, flow: Flow, model_dir: Path) -> Table:
    """Reads the model's columns from a data file, with errors that name both sides."""
    features, context = _dims(flow)
    columns = _names(getattr(flow, "columns", None), "x", features)
    context_columns = getattr(flow, "context_columns", None) or None
    expected = f"the model in {model_dir} was fit on columns {', '.join(columns)}" + (
        f" with context {', '.join(context_columns)}" if context_columns else ""
    )
    if path.suffix.lower() in (".npy", ".npz"):
        table = read_table(path)  # no names in the file: match by position
    else:
        try:
            table = read_table(path, columns=columns, context_columns=context_columns)
        except DataError as error:
            raise DataError(f"{error}; {expected}") from None
    d = table.x.shape[1]
    c = 0 if table.c is None else table.c.shape[1]
    if (d, c) != (features, context):
        raise DataError(
            f"{path} has {d} data and {c} context columns but {expected} "
            f"({features} data, {context} context)"
        )
    return table


@torch.no_grad()
def _log_prob(
    flow: Flow, x: Tensor, c: Tensor | None, columns: Sequence[int], *, draws: int, seed: int
) -> Tensor:
    """The log-density of each row, on the CPU; integer ``columns`` get ``draws`` noise draws."""
    flow.cpu().eval()
    dtype = next(flow.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, len(x), _CHUNK):
        dist = flow(None if c is None else c[i : i + _CHUNK].to(dtype))
        xb = x[i : i + _CHUNK].to(dtype)
        if columns:
            # One draw is the density at k + u; more estimate log P(k) (dequantize.py).
            xb = discrete_log_prob(dist, xb, list(columns), samples=draws, generator=generator)
            parts.append(xb)
        else:
            parts.append(dist.log_prob(xb))
    return torch.cat(parts) if parts else torch.zeros(0)


_TABLE_SUFFIXES = (".csv", ".npy", ".parquet")


def _output(args: argparse.Namespace) -> Path | None:
    """The output file of ``-o`` (``None``: standard output), refused before any work."""
    path = args.output
    if path is None or str(path) == "-":
        return None
    if is_device(path):  # /dev/null, /dev/stdout, a named pipe: written in place as CSV
        return path
    check_new(path, force=args.force)
    if path.suffix.lower() not in _TABLE_SUFFIXES:
        raise ValueError(
            f"cannot write {path}: unknown format {path.suffix or '(no suffix)'!r}; expected "
            f"one of {', '.join(_TABLE_SUFFIXES)}, or - for standard output"
        )
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: no folder {path.parent}")
    return path


def _summary_stream(output: Path | None) -> object:
    # With the table on standard output (or a device such as /dev/stdout), say it on stderr.
    return sys.stdout if output is not None and not is_device(output) else sys.stderr


def _write(path: Path | None, values: Tensor, columns: Sequence[str]) -> None:
    """Writes a table to a file (atomically, by suffix), a device or standard output (CSV)."""
    if path is not None and not is_device(path):
        _write_table(path, values, columns)
        return
    import pandas

    frame = pandas.DataFrame(values.detach().cpu().numpy(), columns=list(columns))
    if path is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        with open(path, "w") as file:
            frame.to_csv(file, index=False)


def _finite(value: object) -> object:
    # JSON has no NaN or infinity: store them as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _short(names: Sequence[str], most: int = 8) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])}, ... ({len(names)} columns)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- fit ---------------------------------------------------------------------------------


def _load_data(args: argparse.Namespace) -> tuple[Table, str, str | None]:
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


def _fractions(valid: float, test: float) -> list[float]:
    """The train, valid and test fractions, refused when nothing is left to train on."""
    if valid + test >= 1:
        raise ValueError(
            f"--valid-fraction {valid} and --test-fraction {test} add up to {valid + test:g}, "
            "leaving no rows to train on; they must add up to less than 1"
        )
    return [1 - valid - test, valid, test]


def _split(n: int, valid: float, test: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    _fractions(valid, test)
    n_test = round(test * n)
    n_valid = max(1, round(valid * n)) if valid > 0 else 0
    if n - n_test - n_valid < 2:
        raise ValueError(
            f"too few rows ({n}) for --valid-fraction {valid} and --test-fraction {test}"
        )
    sizes = (n_test, n_valid, n - n_test - n_valid)
    test, valid, train = split_indices(n, sizes, torch.Generator().manual_seed(seed))
    return train, valid, test


def _quiet(*args: object, **kwargs: object) -> None:
    pass


def _fit(args: argparse.Namespace) -> int:
    # Under torchrun, every process runs this; they train together and rank 0 writes.
    world, device = init_from_env(_device(args.device))
    try:
        code = _fit_in(world, device, args)
    except BaseException:
        shutdown(wait=False)  # the other processes may be anywhere: no barrier
        raise
    shutdown()
    return code


@dataclass
class _Splits:
    """What a fit draws on: the rows of each split and how to score them."""

    source: str
    dataset: str | None
    rows: int
    columns: list[str]
    context_columns: list[str]
    dequantize: list[int]
    train: object  # (x, c) tensors, or a ParquetStream part
    valid: object | None
    test: object | None
    counts: dict[str, int]
    score: Callable[[Flow, object, int], float]


def _in_memory(args: argparse.Namespace) -> _Splits:
    table, source, dataset = _load_data(args)
    x, c = table.x, table.c
    cols = list(table.integer_columns) if args.dequantize == "auto" else []
    train, valid, test = _split(len(x), args.valid_fraction, args.test_fraction, args.seed)

    def rows(idx: Tensor) -> tuple[Tensor, Tensor | None] | None:
        return (x[idx], None if c is None else c[idx]) if len(idx) else None

    def score(flow: Flow, part: tuple[Tensor, Tensor | None], seed: int) -> float:
        return _log_prob(flow, *part, cols, draws=1, seed=seed).mean().item()

    counts = {"train": len(train), "valid": len(valid), "test": len(test)}
    return _Splits(
        source, dataset, len(x), table.columns, table.context_columns, cols,
        rows(train), rows(valid), rows(test), counts, score,
    )  # fmt: skip


def _streamed(args: argparse.Namespace) -> _Splits:
    if args.data is None or args.data.suffix.lower() != ".parquet":
        raise ValueError(
            "--stream reads a Parquet file in batches: give a .parquet DATA file (without "
            f"--stream, other formats are read into memory), got {args.data or 'none'}"
        )
    stream = ParquetStream(args.data, args.columns, args.context_columns)
    cols = list(stream.integer_columns) if args.dequantize == "auto" else []
    parts = stream.split(_fractions(args.valid_fraction, args.test_fraction), seed=args.seed)
    counts = dict(zip(("train", "valid", "test"), (p.rows for p in parts), strict=True))
    if counts["train"] < 2:
        raise ValueError(
            f"too few rows ({stream.rows}) for --valid-fraction {args.valid_fraction} and "
            f"--test-fraction {args.test_fraction}"
        )

    def score(flow: Flow, part: ParquetStream, seed: int) -> float:
        total, n = 0.0, 0
        for i, (x, c) in enumerate(part.batches(_CHUNK)):
            lp = _log_prob(flow, x, c, cols, draws=1, seed=(seed * 1_000_003 + i) % 2**62)
            total, n = total + lp.double().sum().item(), n + len(x)
        return total / n

    valid, test = (p if p.rows else None for p in parts[1:])
    return _Splits(
        f"{args.data} (streamed)", None, stream.rows, stream.columns, stream.context_columns,
        cols, parts[0], valid, test, counts, score,
    )  # fmt: skip


def _fit_in(world: World, device: torch.device, args: argparse.Namespace) -> int:
    say = print if world.main else _quiet
    target, checkpoint = _fit_target(args)  # before any work: refuse to replace a model
    data = _streamed(args) if args.stream else _in_memory(args)
    torch.manual_seed(args.seed)
    flow = _build_flow(args, data).to(device)
    cols = data.dequantize
    say(
        f"data: {data.source}, {data.rows} rows, columns {_short(data.columns)}"
        + (f", context {_short(data.context_columns)}" if data.context_columns else "")
        + (f", dequantized {len(cols)} integer column(s)" if cols else "")
    )
    say("split: " + ", ".join(f"{n} {name}" for name, n in data.counts.items()) + " rows")
    say(f"flow: {type(flow).__name__} {flow.config['arguments']}")
    if world.active:
        say(f"processes: {world.size} (data-parallel, {device.type})")
    if args.resume:
        say(
            f"resuming from {checkpoint}"
            if checkpoint.is_file()
            else f"no checkpoint at {checkpoint}: starting afresh"
        )
    options: dict = {}
    if cols:
        options["dequantize"] = cols
    if args.schedule is not None:
        options["schedule"] = None if args.schedule == "none" else args.schedule
    if isinstance(data.train, tuple):
        x_train, c_train = data.train
        valid = data.valid if data.valid is None or data.valid[1] is not None else data.valid[0]
    else:
        x_train, c_train, valid = data.train, None, data.valid
    history = fit(
        flow,
        x_train,
        c_train,
        valid=valid,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        **options,
    )
    if not world.main:
        return 0  # rank 0 scores and writes
    stopped = getattr(history, "stopped_nonfinite", None)
    if stopped:
        print(f"warning: {stopped}", file=sys.stderr)

    scores: dict[str, float | None] = {}
    for i, name in enumerate(("train", "valid", "test")):
        part = getattr(data, name)
        # Fixed, split-specific noise: the scores are repeatable and independent of training.
        scores[name] = None if part is None else data.score(flow, part, args.seed + 1 + i)
    print(
        "average log-likelihood (nats per row): "
        + ", ".join(f"{name} {_fmt(value)}" for name, value in scores.items())
    )

    command = "arflows " + shlex.join(args.argv)
    metadata = {
        "data": data.source,
        "dataset": data.dataset,
        "dequantized_columns": cols,
        "scores": scores,
        "rows": data.counts,
        "seed": args.seed,
        "command": command,
    }
    if args.data is not None:  # diagnose finds the held-out rows again from these
        metadata["data_file"] = str(args.data.resolve())
        metadata["data_fingerprint"] = _fingerprint(args.data)
        metadata["split"] = {
            "valid_fraction": args.valid_fraction,
            "test_fraction": args.test_fraction,
            "seed": args.seed,
            "stream": bool(args.stream),
        }
    # The model and its report are assembled beside MODEL_DIR and renamed into place
    # together, so MODEL_DIR is never half-written, even when the process is killed.
    save(
        flow.cpu(),
        target,
        columns=data.columns,
        context_columns=data.context_columns or None,
        metadata=_finite(metadata),
        extras=lambda folder: _write_report(folder, command, flow, history, metadata),
        overwrite=True,  # refused up front (_fit_target) unless --force or --resume
    )
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    print(f"model: {target}")
    return 0


def _fit_target(args: argparse.Namespace) -> tuple[Path, Path]:
    """The model directory and checkpoint of a fit, refused before training if taken."""
    target = Path(args.output)
    checkpoint = target.with_name(target.name + ".partial") / "checkpoint.safetensors"
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot write the model to {target}: it is a file; choose another -o")
    if target.is_dir() and any(target.iterdir()):
        if not is_model_dir(target):
            raise ValueError(
                f"cannot write the model to {target}: it exists and is not an arflows model "
                "directory; choose another -o"
            )
        if not (args.force or args.resume):
            raise FileExists(
                f"a model is already in {target}; add --force to replace it (or choose "
                "another -o)"
            )
    if checkpoint.is_file() and not (args.force or args.resume):
        raise FileExists(
            f"{checkpoint} holds an interrupted fit; add --resume to continue it or --force "
            "to start afresh"
        )
    return target, checkpoint


def _write_report(out: Path, command: str, flow: Flow, history: object, metadata: dict) -> None:
    train = list(getattr(history, "train", []))
    valid = list(getattr(history, "valid", []))
    fields = ("best_epoch", "stopped_early", "stopped_nonfinite", "seconds", "lr")
    report = {
        "arflows_version": __version__,
        "command": command,
        "flow": flow.config,
        **metadata,
        "history": {"train": train, "valid": valid}
        | {name: getattr(history, name) for name in fields if hasattr(history, name)},
    }
    (out / "report.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    best = getattr(history, "best_epoch", -1)
    seconds = getattr(history, "seconds", None)
    rows = metadata["rows"]
    lines = [
        "# arflows fit report",
        "",
        f"Command: `{command}` (arflows {__version__})",
        "",
        f"Data: {metadata['data']}",
        "",
        "| split | rows | average log-likelihood (nats per row) |",
        "|---|---:|---:|",
        *(
            f"| {name} | {rows[name]} | {_fmt(value)} |"
            for name, value in metadata["scores"].items()
        ),
        "",
        f"Flow: `{flow.config['flow']}` with `{json.dumps(flow.config['arguments'])}`",
        "",
        f"Training: {len(train)} epochs, best epoch {best + 1}"
        + (", stopped early" if getattr(history, "stopped_early", False) else "")
        + (f", {seconds:.1f} s" if isinstance(seconds, float) else ""),
        "",
    ]
    try:
        from .plot import loss_figure, save_figure

        save_figure(loss_figure(train, valid, best_epoch=best), out / "loss.png")
        lines += ["![training curves](loss.png)", ""]
    except ImportError as error:
        print(f"warning: no loss.png: {error}", file=sys.stderr)
    (out / "report.md").write_text("\n".join(lines))


# --- sample, score, diagnose -------------------------------------------------------------


def _sample(args: argparse.Namespace) -> int:
    output = _output(args)
    flow = load(args.model)
    features, context = _dims(flow)
    columns = _names(getattr(flow, "columns", None), "x", features)
    context_columns = _names(getattr(flow, "context_columns", None), "c", context)
    if context == 0 and (args.context is not None or args.context_file is not None):
        raise ValueError(f"the model in {args.model} is unconditional: drop --context")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    n = args.samples
    with torch.no_grad():
        flow.eval()
        if context == 0:
            values = torch.cat([flow().sample((len(r),)) for r in torch.arange(n).split(_CHUNK)])
            names = columns
        else:
            if args.context is not None:
                if len(args.context) != context:
                    raise ValueError(
                        f"--context has {len(args.context)} values but the model in "
                        f"{args.model} takes {context} ({', '.join(context_columns)})"
                    )
                contexts = torch.tensor([args.context])
            elif args.context_file is not None:
                contexts = _read_contexts(args.context_file, context_columns, args.model)
            else:
                raise ValueError(
                    f"the model in {args.model} is conditional on "
                    f"{', '.join(context_columns)}: give --context or --context-file"
                )
            contexts = contexts.to(next(flow.parameters()).dtype)
            drawn = flow(contexts).sample((n,)).transpose(0, 1)  # (M, n, D): rows by context
            values = torch.cat([contexts[:, None, :].expand(-1, n, -1), drawn], dim=-1).reshape(
                -1, context + features
            )
            names = context_columns + columns
    cols = _metadata(flow).get("dequantized_columns", [])
    if cols and not args.continuous:
        shift = len(names) - features
        values[:, [shift + j for j in cols]] = values[:, [shift + j for j in cols]].floor()
    _write(output, values, names)
    if output is not None:
        print(f"wrote {len(values)} samples to {output}", file=_summary_stream(output))
    return 0


def _read_contexts(path: Path, names: list[str], model_dir: Path) -> Tensor:
    if path.suffix.lower() in (".npy", ".npz"):
        table = read_table(path)
    else:
        try:
            table = read_table(path, columns=names)
        except DataError as error:
            raise DataError(
                f"{error}; the model in {model_dir} takes context {', '.join(names)}"
            ) from None
    if table.x.shape[1] != len(names):
        raise DataError(
            f"{path} has {table.x.shape[1]} columns but the model in {model_dir} takes "
            f"{len(names)} context columns ({', '.join(names)})"
        )
    return table.x


def _score(args: argparse.Namespace) -> int:
    output = _output(args)
    flow = load(args.model)
    table = _read_for_model(args.data, flow, args.model)
    cols = _metadata(flow).get("dequantized_columns", [])
    scores = _log_prob(flow, table.x, table.c, cols, draws=args.draws, seed=args.seed)
    _write(output, scores[:, None], ["log_prob"])
    summary = f"scored {len(scores)} rows: average log-likelihood {scores.mean().item():.4f} nats"
    print(summary + (f", written to {output}" if output else ""), file=_summary_stream(output))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    flow = load(args.model)
    metadata = _metadata(flow)
    features, context = _dims(flow)
    out = args.output if args.output is not None else args.model / "diagnostics"
    two_d = features == 2 and context == 0
    names = ["normality.csv", "diagnostics.json", "qq.png"] + (["gaussianized.png"] * two_d)
    paths = [check_new(out / name, force=args.force) for name in names]
    table, rows = _diagnose_rows(args, flow, metadata)
    columns = _names(getattr(flow, "columns", None), "x", features)
    x = _dequantized(table.x, metadata.get("dequantized_columns", []), args.seed)
    z = gaussianize(flow, x, table.c)
    result = normality(z, columns)
    joint = joint_normality(z)
    out.mkdir(parents=True, exist_ok=True)
    with _pandas_options():
        print(f"normality of z = f(x) on {len(z)} {rows} (a good model gives N(0, 1)):")
        print(result.to_string(float_format=lambda v: f"{v:.4g}"))
    print("joint: " + ", ".join(f"{k} {v:.4g}" for k, v in joint.items()))
    with atomic_path(paths[0]) as tmp:
        result.to_csv(tmp)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(json.dumps(_finite(joint), indent=2) + "\n")
    from .plot import save_figure

    save_figure(qq_figure(z, columns), paths[2])
    if two_d:
        save_figure(gaussianized_figure(flow, x), paths[3])
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _diagnose_rows(args: argparse.Namespace, flow: Flow, metadata: dict) -> tuple[Table, str]:
    """The rows to diagnose: DATA, else the fit's own test rows, else fresh built-in rows."""
    if args.data is not None:
        return _read_for_model(args.data, flow, args.model), "rows"
    if metadata.get("dataset"):
        # Fresh rows (a different seed) of the distribution the model was fit to.
        table = load_dataset(metadata["dataset"], seed=int(metadata.get("seed", 0)) + 1)
        if _dims(flow) != (table.x.shape[1], 0):
            raise ValueError(
                f"the built-in dataset {metadata['dataset']!r} does not fit the model in "
                f"{args.model}; give DATA"
            )
        return table, f"fresh rows of {metadata['dataset']!r}"
    split = metadata.get("split")
    if not isinstance(split, dict) or not metadata.get("data_file"):
        raise ValueError(
            f"the model in {args.model} does not record the file it was fit on: give DATA"
        )
    path = Path(metadata["data_file"])
    if not path.is_file():
        raise ValueError(
            f"the model in {args.model} was fit on {path}, which is no longer there: give DATA"
        )
    if _fingerprint(path) != metadata.get("data_fingerprint"):
        raise ValueError(
            f"{path} changed since the model in {args.model} was fit on it, so its test rows "
            "are unknown: give DATA"
        )
    part = "test" if split["test_fraction"] > 0 else "valid"
    if split.get("stream"):
        stream = ParquetStream(path, flow.columns, flow.context_columns or None)
        parts = stream.split(_fractions(split["valid_fraction"], split["test_fraction"]),
                             seed=split["seed"])  # fmt: skip
        chunks = list(parts[2 if part == "test" else 1].batches(_CHUNK))
        x = torch.cat([xb for xb, _ in chunks])
        c = torch.cat([cb for _, cb in chunks]) if flow.context_columns else None
        table = Table(x, c, list(flow.columns), list(flow.context_columns or []))
    else:
        table = _read_for_model(path, flow, args.model)
        idx = _split(len(table.x), split["valid_fraction"], split["test_fraction"],
                     split["seed"])[2 if part == "test" else 1]  # fmt: skip
        table = Table(table.x[idx], None if table.c is None else table.c[idx],
                      table.columns, table.context_columns)  # fmt: skip
    return table, f"held-out {part} rows of {path}"


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


def _pandas_options() -> object:
    import pandas

    return pandas.option_context("display.max_rows", 200, "display.width", 120)


# --- demo --------------------------------------------------------------------------------


_DEMO_FIGURES = ("figure1.png", "gaussianized.png")


def _demo(args: argparse.Namespace) -> int:
    from .plot import density_figure, save_figure

    figures = [check_new(args.output / n, force=args.force) for n in _DEMO_FIGURES]
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


# --- entry point -------------------------------------------------------------------------

_COMMANDS = {
    "fit": _fit,
    "sample": _sample,
    "score": _score,
    "diagnose": _diagnose,
    "demo": _demo,
}


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
        return _COMMANDS[args.command](args)
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


if __name__ == "__main__":
    sys.exit(main())
