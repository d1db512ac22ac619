r"""Tables of data and context columns, read from and written to CSV, NPY/NPZ and Parquet.

:func:`read_table` reads a whole file into memory (nothing is unpickled) and notes what was
odd about its columns; :func:`write_table` writes one atomically. Files with more rows than
fit in memory are streamed instead (:class:`~arflows.data.ParquetStream`).
"""

from __future__ import annotations

__all__ = ["Table", "read_table", "write_table"]

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .columns import DataError, check_disjoint, check_names


@dataclass
class Table:
    r"""Data columns, optional context columns and their names.

    Args:
        x: The data, with shape :math:`(N, D)`, in torch's default floating point type.
        c: The context, with shape :math:`(N, C)`, or ``None``.
        columns: The names of the :math:`D` data columns.
        context_columns: The names of the :math:`C` context columns (empty without context).
        integer_columns: The indices into ``columns`` of the columns whose values are all
            integers (candidates for dequantization).
        notes: What was odd about the file, in plain words, one finding each: the column,
            what is odd about it and what was done (e.g. ``"column 'name' holds text: left
            out"``). Empty when nothing was.
    """

    x: Tensor
    c: Tensor | None = None
    columns: list[str] = field(default_factory=list)
    context_columns: list[str] = field(default_factory=list)
    integer_columns: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _integer_columns(x: np.ndarray) -> list[int]:
    return [j for j in range(x.shape[1]) if bool(np.all(x[:, j] == np.round(x[:, j])))]


_READ_SUFFIXES = (".csv", ".npy", ".npz", ".parquet")
_WRITE_SUFFIXES = (".csv", ".npy", ".parquet")


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise ImportError("Parquet files need pyarrow: pip install 'arflows[parquet]'") from error


def _frame(path: Path) -> tuple[object, list[str]]:
    """The file as a DataFrame with string column names, and its default context columns."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in _READ_SUFFIXES:
        raise DataError(
            f"cannot read {path}: unknown format {path.suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(_READ_SUFFIXES)}"
        )
    if not path.exists():
        raise DataError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise DataError(f"cannot read {path}: it is a directory, not a file")
    if suffix == ".parquet":
        _need_pyarrow()
    context: list[str] = []
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
            if len(frame.columns) and all(_is_number(name) for name in frame.columns):
                raise DataError(
                    f"{path}: the first line looks like data, not a header; CSV files need a "
                    "header row naming the columns"
                )
        elif suffix == ".parquet":
            frame = pd.read_parquet(path, engine="pyarrow")
        elif suffix == ".npy":
            frame = _array_frame(np.load(path, allow_pickle=False), "x", path)
        else:
            with np.load(path, allow_pickle=False) as arrays:
                names = list(arrays.keys())
                if "x" not in names and len(names) != 1:
                    raise DataError(
                        f"{path}: expected an array named 'x' (and optionally 'c' for the "
                        f"context) or a single array, found {', '.join(names) or 'none'}"
                    )
                frame = _array_frame(arrays["x" if "x" in names else names[0]], "x", path)
                if "c" in names and "x" in names:
                    c = _array_frame(arrays["c"], "c", path)
                    if len(c) != len(frame):
                        raise DataError(f"{path}: 'x' has {len(frame)} rows but 'c' has {len(c)}")
                    context = list(c.columns)
                    frame = pd.concat([frame, c], axis=1)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        kind = "empty file" if isinstance(error, pd.errors.EmptyDataError) else error
        raise DataError(f"cannot read {path}: {kind}") from error
    except Exception as error:  # pyarrow and zip errors have no common base
        raise DataError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    frame.columns = [str(name) for name in frame.columns]
    return frame, context


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _array_frame(array: np.ndarray, prefix: str, path: Path) -> object:
    import pandas as pd

    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(f"{path}: expected an array with shape (rows, columns), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return pd.DataFrame(array, columns=[f"{prefix}{j}" for j in range(array.shape[1])])


def _kind(series: object) -> str:
    """``"numeric"``, ``"text"`` (no value is a number) or ``"mixed"`` (some values are)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    values = series.dropna()
    numbers = pd.to_numeric(values, errors="coerce").notna()
    return "mixed" if numbers.any() else "text"


# What pandas names the column of a saved index that had no name.
_UNNAMED = re.compile(r"Unnamed: \d+")


def _saved_index(series: object, name: str, first: bool) -> str | None:
    """Why a column looks like a row index that pandas saved with the data, or ``None``.

    Candidates are columns pandas calls ``Unnamed: <k>`` and a first column named ``index``
    or nothing. They count when their values number the rows, 0 or 1 up; an ``Unnamed``
    column also when its values are distinct whole numbers (the index of filtered or
    shuffled rows).
    """
    unnamed = _UNNAMED.fullmatch(name) is not None
    if not (unnamed or (first and name.strip().lower() in ("", "index"))):
        return None
    if _kind(series) != "numeric":
        return None
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    n = len(values)
    for start in (0, 1):
        if np.array_equal(values, np.arange(start, start + n)):
            return f"({_count_up(start, n)})"
    if unnamed and np.all(values == np.round(values)) and len(np.unique(values)) == n:
        return f"(distinct whole numbers {values.min():g} to {values.max():g})"
    return None


def _count_up(start: int, n: int) -> str:
    """``"0, 1, ..., N-1"`` for rows numbered from ``start``."""
    if n <= 3:
        return ", ".join(str(start + i) for i in range(n))
    return f"{start}, {start + 1}, ..., {start + n - 1}"


def _data_columns(
    frame: object, columns: Sequence[str] | None, context: list[str], path: Path
) -> tuple[list[str], list[str]]:
    """The data columns to read, and notes on what was odd about the file's columns."""
    available = list(frame.columns)
    notes = []
    if columns is not None:
        check_names(columns, available, "data", path)
        names = list(columns)
        check_disjoint(names, context, path)
        for name in names:
            why = _saved_index(frame[name], name, available.index(name) == 0)
            if why is not None:
                notes.append(
                    f"column {name!r} looks like a saved row index {why}: kept, as it was "
                    "named as a data column"
                )
        return names, notes
    names = []
    for k, name in enumerate(available):
        if name in context:
            continue
        series = frame[name]
        if _kind(series) == "text":
            example = series.dropna()
            value = f" (e.g. {example.iloc[0]!r})" if len(example) else ""
            notes.append(
                f"column {name!r} holds text{value}: left out; only columns of numbers are "
                "modelled"
            )
            continue
        why = _saved_index(series, name, k == 0)
        if why is not None:
            notes.append(
                f"column {name!r} looks like a saved row index {why}: left out; name the data "
                "columns to keep it"
            )
            continue
        names.append(name)
    return names, notes


def _values(frame: object, names: list[str], path: Path) -> np.ndarray:
    """The named columns as a float64 array, with errors naming row and column."""
    import pandas as pd

    line = " (line {} of the file)" if path.suffix.lower() == ".csv" else ""
    for name in names:
        series = frame[name]
        if _kind(series) == "numeric":
            continue
        bad = series.notna() & pd.to_numeric(series, errors="coerce").isna()
        i = int(np.argmax(bad.to_numpy())) if bad.any() else 0
        value = series.iloc[i]
        raise DataError(
            f"{path}: column {name!r} is not numeric: row {i + 1}{line.format(i + 2)} holds "
            f"{value!r}"
        )
    # A copy: pandas may hand out a read-only view, which torch warns about.
    values = np.array(frame[names].to_numpy(dtype=np.float64, na_value=np.nan))
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        what = "NaN (a missing value?)" if np.isnan(values[i, j]) else f"{values[i, j]}"
        more = f"; {int(bad.sum())} non-finite values in all" if bad.sum() > 1 else ""
        raise DataError(
            f"{path}: column {names[j]!r} holds {what} at row {i + 1}{line.format(i + 2)}{more}; "
            "remove or fill those rows"
        )
    return values


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    context_columns: Sequence[str] | None = None,
) -> Table:
    r"""Reads data (and context) columns from a CSV, NPY, NPZ or Parquet file.

    Formats, by suffix: ``.csv`` (a header row names the columns), ``.npy`` (a 2-D array,
    columns named ``x0 .. x{D-1}``), ``.npz`` (the array ``x``, or the only array, and an
    optional context array ``c`` with columns ``c0 ..``), ``.parquet`` (needs pyarrow:
    ``pip install 'arflows[parquet]'``). Nothing is unpickled. Rows are numbered from 1 in
    error messages (the header is not a row).

    Args:
        path: The file.
        columns: The data columns; defaults to every numeric column that is not a context
            column, leaving out columns of text and a row index that pandas saved with the
            data (a column ``Unnamed: 0``, or a first column ``index``, numbering the rows),
            each with a note in :attr:`Table.notes`.
        context_columns: The context columns; defaults to none (to ``c``'s columns for NPZ).

    Returns:
        The table; its data in torch's default floating point type, and in ``notes`` what
        was odd about the file's columns and what was done about it.

    Raises:
        DataError: For a missing or unreadable file, an unknown format, unknown column names
            (the message lists the available ones), a column named as both data and
            context, a non-numeric column, NaN or infinite values (the message names the
            row and column) or no data.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "saved.csv"
        ...     _ = path.write_text(",a,label\n0,1.5,x\n1,2.5,y\n2,0.5,x\n")
        ...     table = read_table(path)
        >>> table.columns
        ['a']
        >>> print(*table.notes, sep="\n")  # doctest: +NORMALIZE_WHITESPACE
        column 'Unnamed: 0' looks like a saved row index (0, 1, 2): left out; name the data
        columns to keep it
        column 'label' holds text (e.g. 'x'): left out; only columns of numbers are modelled
    """
    path = Path(path)
    frame, default_context = _frame(path)
    if len(frame) == 0:
        raise DataError(f"{path}: no rows of data")
    available = list(frame.columns)
    context = list(default_context if context_columns is None else context_columns)
    check_names(context, available, "context", path)
    names, notes = _data_columns(frame, columns, context, path)
    if not names:
        why = "".join(f"; {note}" for note in notes)
        raise DataError(
            f"{path}: no numeric data columns (columns: {', '.join(available) or 'none'}){why}"
        )
    x = _values(frame, names, path)
    c = _tensor(_values(frame, context, path), context, path) if context else None
    return Table(_tensor(x, names, path), c, names, context, _integer_columns(x), notes)


def _tensor(values: np.ndarray, names: list[str], path: Path) -> Tensor:
    """Finite float64 values in torch's default dtype, refusing those it cannot hold."""
    dtype = torch.get_default_dtype()
    tensor = torch.as_tensor(values, dtype=dtype)
    bad = ~torch.isfinite(tensor)
    if bad.any():  # finite in float64, beyond the range of float32 (or float16)
        i, j = (int(k) for k in bad.nonzero()[0])
        line = f" (line {i + 2} of the file)" if path.suffix.lower() == ".csv" else ""
        raise DataError(
            f"{path}: column {names[j]!r} holds {values[i, j]:g} at row {i + 1}{line}, too "
            f"large for {str(dtype).removeprefix('torch.')}; rescale the column"
        )
    return tensor


def write_table(
    path: str | os.PathLike, values: Tensor | np.ndarray, columns: Sequence[str]
) -> None:
    r"""Writes a table atomically (a temporary file, then a rename) as CSV, NPY or Parquet.

    Args:
        path: The file; its suffix (``.csv``, ``.npy``, ``.parquet``) picks the format.
        values: The values, with shape :math:`(N, D)`.
        columns: The :math:`D` column names (not stored in NPY files).
    """
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_SUFFIXES:
        raise ValueError(
            f"cannot write {path}: unknown format {path.suffix or '(no suffix)'!r}; expected "
            f"one of {', '.join(_WRITE_SUFFIXES)}"
        )
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    columns = [str(name) for name in columns]
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise ValueError(
            f"expected `values` with shape (rows, {len(columns)}) for {len(columns)} columns, "
            f"got {values.shape}"
        )
    if len(set(columns)) != len(columns):
        raise ValueError(f"expected distinct column names, got {columns}")
    if not path.parent.is_dir():
        raise DataError(f"cannot write {path}: no directory {path.parent}")
    if suffix == ".parquet":
        _need_pyarrow()
    # Same directory, so the rename is atomic; an open mode "x" file keeps default permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if suffix == ".npy":
            with open(tmp, "xb") as file:
                np.save(file, values)
        else:
            frame = pd.DataFrame(values, columns=columns)
            with open(tmp, "xb") as file:
                if suffix == ".csv":
                    frame.to_csv(file, index=False)
                else:
                    frame.to_parquet(file, index=False, engine="pyarrow")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
