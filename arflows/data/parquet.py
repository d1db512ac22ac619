r"""Parquet files read in batches, for data with more rows than fit in memory.

A :class:`ParquetStream` holds a file's name and schema, never its rows: each pass reads the
file a record batch at a time, and a shuffling pass keeps at most ``buffer_rows`` rows (plus
one record batch) in memory. Splits into train, validation and test parts are decided row by
row from a seeded uniform number per row position, so a part's rows are the same on every
pass, in every process, whatever the batch sizes. :func:`arflows.fit` takes a stream (or a
``.parquet`` path) like an in-memory table; ``arflows fit data.parquet --stream`` does the
same from the command line.

Example:
    >>> import tempfile, pathlib, pandas as pd
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "rows.parquet"
    ...     pd.DataFrame({"a": range(1000), "b": [0.5] * 1000}).to_parquet(path)
    ...     stream = ParquetStream(path)
    ...     train, valid = stream.split([0.9, 0.1], seed=0)
    ...     sizes = [len(x) for x, _ in train.batches(256)]
    >>> stream.columns, stream.rows, train.rows + valid.rows, sum(sizes) == train.rows
    (['a', 'b'], 1000, 1000, True)
"""

from __future__ import annotations

__all__ = ["ParquetStream"]

import math
import os
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .columns import DataError, check_disjoint, check_names

# Rows per block of split uniforms: each block is drawn from its own seeded generator, so a
# row's part is found without drawing the numbers of all rows before it.
_BLOCK = 1 << 16


def _numeric(field: object) -> bool:
    import pyarrow as pa

    kind = field.type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


class ParquetStream:
    r"""The rows of a Parquet file (or a seeded part of them), read a batch at a time.

    Args:
        path: The ``.parquet`` file.
        columns: The data columns; defaults to every numeric column that is not a context
            column.
        context_columns: The context columns; defaults to none.
        dtype: The floating point type of the batches (torch's default).
        chunk_rows: The rows of each record batch read from the file.
        buffer_rows: The rows a shuffling pass holds and mixes at once; more mixes better
            across the file's row groups, at the cost of memory.

    Attributes:
        path, columns, context_columns: As given (columns resolved).
        integer_columns: Indices into ``columns`` of the integer- or boolean-typed columns
            (candidates for dequantization; the schema decides, not the values).

    Raises:
        DataError: For a missing or unreadable file, unknown or non-numeric columns, or a file
            without rows.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        columns: Sequence[str] | None = None,
        context_columns: Sequence[str] | None = None,
        *,
        dtype: torch.dtype | None = None,
        chunk_rows: int = 65_536,
        buffer_rows: int = 262_144,
    ):
        for name, value in (("chunk_rows", chunk_rows), ("buffer_rows", buffer_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected an integer `{name} >= 1`, got {value!r}")
        self.path = Path(path)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        if not self.dtype.is_floating_point:
            raise TypeError(f"expected a floating point `dtype`, got {self.dtype}")
        self.chunk_rows, self.buffer_rows = chunk_rows, buffer_rows
        file = self._open()
        schema = file.schema_arrow
        available = list(schema.names)
        self.context_columns = [] if context_columns is None else list(context_columns)
        check_names(self.context_columns, available, "context", self.path)
        if columns is None:
            self.columns = [
                n for n in available if n not in self.context_columns and _numeric(schema.field(n))
            ]
        else:
            check_names(columns, available, "data", self.path)
            self.columns = list(columns)
            check_disjoint(self.columns, self.context_columns, self.path)
        if not self.columns:
            raise DataError(
                f"{self.path}: no numeric data columns (columns: {', '.join(available) or 'none'})"
            )
        for name in self.columns + self.context_columns:
            field = schema.field(name)
            if not _numeric(field):
                raise DataError(
                    f"{self.path}: column {name!r} is not numeric (its type is {field.type})"
                )
        self.integer_columns = [
            j for j, n in enumerate(self.columns) if not _floating(schema.field(n))
        ]
        metadata = file.metadata
        self.file_rows = metadata.num_rows
        if self.file_rows == 0:
            raise DataError(f"{self.path}: no rows of data")
        self._group_rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        # The part of the file's rows this stream holds: rows with lo <= u < hi.
        self._seed: int | None = None
        self._interval = (0.0, 1.0)

    def _open(self) -> object:
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError(
                "Parquet files need pyarrow: pip install 'arflows[parquet]'"
            ) from error
        if not self.path.exists():
            raise DataError(f"cannot read {self.path}: no such file")
        if self.path.is_dir():
            raise DataError(f"cannot read {self.path}: it is a directory, not a file")
        try:
            return pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow's errors have no common base with OSError
            raise DataError(
                f"cannot read {self.path} as Parquet: {type(error).__name__}: {error}"
            ) from error

    def __repr__(self) -> str:
        part = "" if self._seed is None else f", part {self._interval} of seed {self._seed}"
        return (
            f"ParquetStream({str(self.path)!r}, columns={self.columns}, "
            f"context_columns={self.context_columns}, rows={self.rows}{part})"
        )

    @property
    def features(self) -> int:
        """The number of data columns :math:`D`."""
        return len(self.columns)

    @property
    def context(self) -> int:
        """The number of context columns :math:`C` (0 without context)."""
        return len(self.context_columns)

    # --- splits ----------------------------------------------------------------------

    def _uniforms(self, block: int) -> Tensor:
        generator = torch.Generator().manual_seed((self._seed * 1_000_003 + block) % (1 << 63))
        return torch.rand(_BLOCK, generator=generator, dtype=torch.float64)

    def _mask(self, start: int, stop: int) -> Tensor | None:
        """Which of the file's rows ``start .. stop - 1`` belong to this part (``None``: all)."""
        if self._seed is None:
            return None
        first, last = start // _BLOCK, (stop - 1) // _BLOCK
        u = torch.cat([self._uniforms(b) for b in range(first, last + 1)])
        u = u[start - first * _BLOCK : stop - first * _BLOCK]
        lo, hi = self._interval
        return (u >= lo) & (u < hi)

    @cached_property
    def rows(self) -> int:
        """The number of rows of this stream (of its part of the file)."""
        if self._seed is None:
            return self.file_rows
        total = 0
        for start in range(0, self.file_rows, _BLOCK):
            total += int(self._mask(start, min(start + _BLOCK, self.file_rows)).sum())
        return total

    def __len__(self) -> int:
        return self.rows

    def split(self, fractions: Sequence[float], seed: int = 0) -> list[ParquetStream]:
        r"""Disjoint parts holding about these fractions of the rows, decided row by row.

        Row :math:`i` of the file goes to a part by a uniform number drawn for position
        :math:`i` from ``seed``; a part's rows are therefore the same on every pass and in
        every process. Parts of a part split it further.

        Args:
            fractions: Non-negative fractions that sum to 1, e.g. ``[0.8, 0.1, 0.1]``.
            seed: The seed of the row assignment.

        Returns:
            One stream per fraction.
        """
        fractions = [float(f) for f in fractions]
        if not fractions or any(not 0 <= f <= 1 for f in fractions):
            raise ValueError(f"expected fractions in [0, 1], got {fractions}")
        if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"expected fractions that sum to 1, got {fractions}")
        if self._seed is not None and seed != self._seed:
            raise ValueError(
                f"a part of a split (seed {self._seed}) splits further with the same seed, "
                f"got {seed}"
            )
        lo, hi = self._interval
        edges = np.concatenate([[0.0], np.cumsum(fractions)]) * (hi - lo) + lo
        edges[-1] = hi
        parts = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            part = ParquetStream.__new__(ParquetStream)
            part.__dict__.update({k: v for k, v in self.__dict__.items() if k != "rows"})
            part._seed, part._interval = seed, (float(a), float(b))
            parts.append(part)
        return parts

    # --- reading ---------------------------------------------------------------------

    def _values(self, batch: object, names: list[str], first_row: int) -> np.ndarray:
        """The named columns of a record batch as float64, with errors naming row and column."""
        values = np.empty((batch.num_rows, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            values[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values)
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            what = "NaN (a missing value?)" if np.isnan(values[i, j]) else f"{values[i, j]}"
            raise DataError(
                f"{self.path}: column {names[j]!r} holds {what} at row {first_row + i + 1}; "
                "remove or fill those rows"
            )
        return values

    def _chunks(self, groups: Sequence[int]) -> Iterator[tuple[Tensor, Tensor | None]]:
        """This part's rows of the given row groups, a record batch at a time."""
        file = self._open()
        starts = np.concatenate([[0], np.cumsum(self._group_rows)])
        names = self.columns + self.context_columns
        d = len(self.columns)
        for g in groups:
            start = int(starts[g])
            for batch in file.iter_batches(
                batch_size=self.chunk_rows, row_groups=[g], columns=names
            ):
                n = batch.num_rows
                values = torch.from_numpy(self._values(batch, names, start))
                mask = self._mask(start, start + n)
                start += n
                if mask is not None:
                    values = values[mask]
                values = values.to(self.dtype)
                yield values[:, :d], (values[:, d:] if self.context_columns else None)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        r"""One pass over the rows in batches of ``batch_size`` (the last one may be smaller).

        Args:
            batch_size: The rows of each batch.
            shuffle: Whether to visit the row groups in a random order and mix the rows of
                each ``buffer_rows`` read (a shuffle buffer); otherwise the file's order.
            generator: The random numbers of the shuffle (torch's global generator if
                ``None``); the same state gives the same batches.

        Yields:
            ``(x, c)``: the data, with shape :math:`(B, D)`, and the context, with shape
            :math:`(B, C)`, or ``None`` without context columns.

        Raises:
            DataError: At the first NaN or infinite value (naming its row and column).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"expected an integer `batch_size >= 1`, got {batch_size!r}")
        groups = list(range(len(self._group_rows)))
        if shuffle:
            groups = torch.randperm(len(groups), generator=generator).tolist()
        hold = self.buffer_rows if shuffle else batch_size
        pending: list[tuple[Tensor, Tensor | None]] = []
        held = 0

        def flush(final: bool) -> Iterator[tuple[Tensor, Tensor | None]]:
            nonlocal pending, held
            x = torch.cat([p[0] for p in pending])
            c = torch.cat([p[1] for p in pending]) if self.context_columns else None
            if shuffle:
                order = torch.randperm(len(x), generator=generator)
                x, c = x[order], None if c is None else c[order]
            end = len(x) if final else len(x) - len(x) % batch_size
            for i in range(0, end, batch_size):
                yield x[i : i + batch_size], None if c is None else c[i : i + batch_size]
            pending = [(x[end:], None if c is None else c[end:])]
            held = len(x) - end

        for chunk in self._chunks(groups):
            pending.append(chunk)
            held += len(chunk[0])
            if held >= hold:
                yield from flush(False)
        if held:
            yield from flush(True)


def _floating(field: object) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(field.type)
