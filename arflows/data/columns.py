r"""Column checks shared by the readers: names, data vs context, columns without density.

:class:`DataError` is what every reader raises for data it cannot use;
:func:`check_names` and :func:`check_disjoint` serve :func:`~arflows.data.read_table` and
:class:`~arflows.data.ParquetStream` alike; :func:`check_rows` refuses data columns that have
no density before a fit.
"""

from __future__ import annotations

__all__ = ["DataError", "check_disjoint", "check_names", "check_rows"]

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """A data file or dataset that cannot be used: unreadable, non-numeric, NaN/inf, empty."""

    # Its public name: tracebacks and pickles say arflows.data.DataError.
    __module__ = "arflows.data"


def check_names(names: Sequence[str], available: list[str], what: str, path: Path) -> None:
    """Refuses names not in ``available``; ``what`` is ``"data"`` or ``"context"``."""
    if isinstance(names, str):
        argument = "columns" if what == "data" else "context_columns"
        raise TypeError(f"expected `{argument}` to be a list of column names, got {names!r}")
    unknown = [name for name in names if name not in available]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise DataError(
            f"{path}: unknown {what} column{s} {', '.join(map(repr, unknown))}; available "
            f"columns: {', '.join(available) or 'none'}"
        )


def check_disjoint(columns: list[str], context: list[str], path: Path) -> None:
    """Refuses columns named as both data and context columns."""
    both = [name for name in columns if name in context]
    if len(both) == 1:
        raise DataError(f"{path}: column {both[0]!r} is both a data column and a context column")
    if both:
        raise DataError(
            f"{path}: columns {', '.join(map(repr, both))} are both data and context columns"
        )


def check_rows(
    x: Tensor,
    columns: Sequence[str] | None = None,
    *,
    dequantized: Sequence[int] | Mapping[int, float] = (),
    share: float = 0.5,
) -> list[str]:
    r"""Refuses data columns that have no density; notes columns that are mostly one value.

    A column holding one value in every row has no density: all of its probability sits on
    a point, so no log-density is finite, and a flow fitted to it narrows onto the value
    without end (the log-likelihood keeps growing while samples keep a spread). A column
    that takes one value in most rows (a point mass, e.g. zero-inflated data) can be fitted,
    but only as a sharp peak, with large log-densities there; the note says so, and what to
    do instead. Dequantized columns get :math:`h \cdot U[0, 1)` noise first (:math:`h`
    their step, 1 for indices), so they hold no point mass: a constant one becomes uniform
    on :math:`[v, v + h)` and is only noted.

    Args:
        x: The data, with shape :math:`(N, D)`.
        columns: The names of the :math:`D` columns, for the messages; ``None``: their
            indices.
        dequantized: The columns that are dequantized before fitting: indices (step 1) or
            ``{column: step}``.
        share: The fraction of the rows, at least one half, above which a single value is
            noted.

    Returns:
        Notes in plain words, one per odd column: the column, what is odd, what was done.

    Raises:
        DataError: For fewer than 2 rows, or columns holding one value in every row (the
            message names them and their values, or says that all rows are identical).

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [1.5, 4.0]])
        >>> print(*check_rows(x, ["rain", "t"]))  # doctest: +NORMALIZE_WHITESPACE
        column 'rain' takes the value 0 in 75% of the rows (a point mass, e.g. zero-inflated
        data): kept as is, but a density can only follow it with a sharp peak, so
        log-densities at 0 come out large and the rest of the column is learned beside a
        spike; if its values lie on a grid (e.g. whole numbers), dequantize it by the grid
        step, otherwise consider a transform that spreads the point (e.g. adding noise of a
        known width) or leaving the column out
        >>> check_rows(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), ["rain", "t"])
        Traceback (most recent call last):
        ...
        arflows.data.DataError: column 'rain' holds the value 0 in every row: a constant has no density, so no log-density is finite (all of its probability sits on one point); leave the column out
    """  # noqa: E501
    if x.dim() != 2:
        raise ValueError(f"expected `x` with shape (rows, columns), got {tuple(x.shape)}")
    n, d = x.shape
    labels = [str(j) for j in range(d)] if columns is None else [repr(c) for c in columns]
    if len(labels) != d:
        raise ValueError(f"expected {d} names in `columns` for {d} columns, got {len(labels)}")
    if not 0.5 <= share < 1:
        raise ValueError(f"expected `share` in [0.5, 1), got {share!r}")
    if n < 2:
        raise DataError(f"only {n} row{'' if n == 1 else 's'} of data: a density needs 2 or more")
    first = x[0].tolist()
    steps = (
        {j % d: float(h) for j, h in dequantized.items()}
        if isinstance(dequantized, Mapping)
        else dict.fromkeys((j % d for j in dequantized), 1.0)
    )
    noised = torch.zeros(d, dtype=torch.bool)
    noised[list(steps)] = True
    constant = (x == x[:1]).all(0).cpu()
    refused = (constant & ~noised).nonzero().flatten().tolist()
    why = (
        "a constant has no density, so no log-density is finite (all of its probability sits "
        "on one point)"
    )
    if len(refused) == d:
        values = ", ".join(f"{label}: {v:g}" for label, v in zip(labels, first, strict=True))
        raise DataError(f"all {n} rows are identical ({values}): {why}")
    if len(refused) == 1:
        j = refused[0]
        raise DataError(
            f"column {labels[j]} holds the value {first[j]:g} in every row: {why}; leave the "
            "column out"
        )
    if refused:
        listing = ", ".join(f"{labels[j]} ({first[j]:g})" for j in refused)
        raise DataError(
            f"columns {listing} hold one value each in every row: {why}; leave these columns out"
        )
    notes = [
        f"column {labels[j]} holds the value {first[j]:g} in every row: dequantized, it is "
        f"uniform on [{first[j]:g}, {first[j] + steps[j]:g}) and tells the model nothing; "
        "consider leaving it out"
        for j in (constant & noised).nonzero().flatten().tolist()
    ]
    # A value held by more than half of the rows is the median, found quicker than the mode.
    common = x.median(0).values  # (D,)
    shares = (x == common).sum(0).cpu() / n
    for j in ((shares > share) & ~constant & ~noised).nonzero().flatten().tolist():
        v = f"{common[j].item():g}"
        notes.append(
            f"column {labels[j]} takes the value {v} in {shares[j].item():.0%} of the rows (a "
            "point mass, e.g. zero-inflated data): kept as is, but a density can only follow "
            f"it with a sharp peak, so log-densities at {v} come out large and the rest of the "
            "column is learned beside a spike; if its values lie on a grid (e.g. whole "
            "numbers), dequantize it by the grid step, otherwise consider a transform that "
            "spreads the point (e.g. adding noise of a known width) or leaving the column out"
        )
    return notes
