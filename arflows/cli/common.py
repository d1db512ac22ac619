"""What the commands share: the model's columns, scoring, splits, writing tables and JSON."""

from __future__ import annotations

__all__ = [
    "CHUNK",
    "dims",
    "fingerprint",
    "finite",
    "fmt",
    "fractions",
    "grid",
    "model_metadata",
    "names",
    "output_path",
    "read_contexts",
    "read_for_model",
    "scores",
    "short",
    "split",
    "summary_stream",
    "write",
]

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..data import DataError, Table, discrete_log_prob, read_table, split_indices, write_table
from ..files import check_new, is_device
from ..flows import Flow, log_prob
from ..io import ModelError

# Rows per batch when reading a stream or drawing samples.
CHUNK = 8192


def names(given: Sequence[str] | None, prefix: str, n: int) -> list[str]:
    """``given``, or ``prefix0, prefix1, ...`` when the model has no names."""
    return list(given) if given else [f"{prefix}{i}" for i in range(n)]


def dims(flow: Flow) -> tuple[int, int]:
    """The model's numbers of data and context columns."""
    return flow.features, flow.context


def grid(metadata: dict) -> tuple[dict[int, float], dict[int, float]]:
    """The dequantized columns' grid steps and origins (older models: steps 1, origins 0)."""
    columns = metadata.get("dequantized_columns", [])
    steps = {int(j): float(h) for j, h in (metadata.get("grid_steps") or {}).items()}
    origins = {int(j): float(v) for j, v in (metadata.get("grid_origins") or {}).items()}
    return {j: steps.get(j, 1.0) for j in columns}, {j: origins.get(j, 0.0) for j in columns}


def model_metadata(flow: Flow) -> dict:
    """The saved model's metadata, its list of dequantized columns checked."""
    metadata = flow.metadata or {}
    columns = metadata.get("dequantized_columns", [])
    if not isinstance(columns, list) or not all(
        isinstance(j, int) and not isinstance(j, bool) and 0 <= j < flow.features for j in columns
    ):
        raise ModelError(
            f"the model's metadata lists dequantized columns {columns!r}; expected column "
            f"indices in [0, {flow.features})"
        )
    return metadata


def read_contexts(path: Path, columns: list[str], model_dir: Path) -> Tensor:
    """The context columns of a table (an NPZ's context array, an NPY's columns by position).

    Args:
        path: The table.
        columns: The model's context column names, :math:`C` of them.
        model_dir: The model's folder, for errors.

    Returns:
        The contexts, with shape :math:`(N, C)`.

    Raises:
        DataError: For an unreadable table, missing columns (named with the model's), or an
            array with another number of columns.
    """
    if path.suffix.lower() in (".npy", ".npz"):
        table = read_table(path)
        values = table.x if table.c is None else table.c
    else:
        try:
            values = read_table(path, columns=columns).x
        except DataError as error:
            raise DataError(
                f"{error}; the model in {model_dir} takes context {', '.join(columns)}"
            ) from None
    if values.shape[1] != len(columns):
        raise DataError(
            f"{path} has {values.shape[1]} columns but the model in {model_dir} takes "
            f"{len(columns)} context columns ({', '.join(columns)})"
        )
    return values


def read_for_model(path: Path, flow: Flow, model_dir: Path) -> Table:
    """Reads the model's columns from a data file, with errors that name both sides."""
    features, context = dims(flow)
    columns = names(flow.columns, "x", features)
    context_columns = flow.context_columns or None
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


def scores(
    flow: Flow,
    x: Tensor,
    c: Tensor | None,
    columns: Mapping[int, float] | Sequence[int],
    *,
    draws: int,
    seed: int,
) -> Tensor:
    r"""The log-density of each row, on the CPU; grid ``columns`` get ``draws`` noise draws.

    For a column on a grid of step :math:`h`, one draw gives the density at :math:`v + h u`
    (the density the fit reports); more draws estimate the log of the mean density over the
    cell, :math:`\log P(\text{cell}) - \sum \log h`, on the same scale (a density of the
    dequantized values, comparable with any density of the same columns).
    """
    flow.cpu().eval()
    if not columns:
        return log_prob(flow, x, c)
    generator = torch.Generator().manual_seed(seed)
    steps = dict(columns) if isinstance(columns, Mapping) else dict.fromkeys(columns, 1.0)
    cell = sum(math.log(h) for h in steps.values())

    def discrete(dist: torch.distributions.Distribution, xb: Tensor) -> Tensor:
        # log P(cell) includes the cell's volume; the density scale leaves it out.
        lp = discrete_log_prob(dist, xb, steps=steps, samples=draws, generator=generator)
        return lp - cell

    return log_prob(flow, x, c, score=discrete)


def fractions(valid: float, test: float) -> list[float]:
    """The train, valid and test fractions, refused when nothing is left to train on."""
    if valid + test >= 1:
        raise ValueError(
            f"--valid-fraction {valid} and --test-fraction {test} add up to {valid + test:g}, "
            "leaving no rows to train on; they must add up to less than 1"
        )
    return [1 - valid - test, valid, test]


def split(n: int, valid: float, test: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The train, valid and test row indices of a fit (the same for the same arguments)."""
    fractions(valid, test)
    n_test = round(test * n)
    n_valid = max(1, round(valid * n)) if valid > 0 else 0
    if n - n_test - n_valid < 2:
        raise ValueError(
            f"too few rows ({n}) for --valid-fraction {valid} and --test-fraction {test}"
        )
    sizes = (n_test, n_valid, n - n_test - n_valid)
    test_rows, valid_rows, train_rows = split_indices(
        n, sizes, torch.Generator().manual_seed(seed)
    )
    return train_rows, valid_rows, test_rows


def fingerprint(path: Path) -> dict:
    """What tells whether a data file changed since a fit: its size and modification time."""
    stat = path.stat()
    return {"bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


_TABLE_SUFFIXES = (".csv", ".npy", ".parquet")


def output_path(args: argparse.Namespace) -> Path | None:
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


def summary_stream(output: Path | None) -> object:
    """Where to say what was written: standard error when the table is on standard output."""
    return sys.stdout if output is not None and not is_device(output) else sys.stderr


def write(path: Path | None, values: Tensor, columns: Sequence[str]) -> None:
    """Writes a table to a file (atomically, by suffix), a device or standard output (CSV)."""
    if path is not None and not is_device(path):
        write_table(path, values, columns)
        return
    import pandas

    frame = pandas.DataFrame(values.detach().cpu().numpy(), columns=list(columns))
    if path is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        with open(path, "w") as file:
            frame.to_csv(file, index=False)


def finite(value: object) -> object:
    """``value`` with NaN and infinities (which JSON lacks) as ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def short(columns: Sequence[str], most: int = 8) -> str:
    """Column names for a message, the first ``most`` and a count when there are more."""
    if len(columns) <= most:
        return ", ".join(columns)
    return f"{', '.join(columns[:most])}, ... ({len(columns)} columns)"


def fmt(value: float | None) -> str:
    """A score for a message: 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
