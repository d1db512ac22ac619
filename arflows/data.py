r"""Built-in datasets (figure 1 of the MAF paper, 2-D toys, digits) and data files.

Every generator has the form ``f(n, *, generator=None, dtype=None) -> Tensor (n, 2)``; the
toys follow the FFJORD paper's scales (most points within :math:`[-4, 4]^2`).
:func:`read_table` and :func:`write_table` read and write CSV, NPY/NPZ and Parquet files;
:func:`check_rows` refuses data columns that have no density before a fit.

Example:
    >>> x = figure1(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, figure1_log_prob(x).shape
    (torch.Size([1000, 2]), torch.Size([1000]))
    >>> table = load_dataset("moons", 500)
    >>> table.x.shape, table.columns, table.c is None
    (torch.Size([500, 2]), ['x0', 'x1'], True)
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT",
    "DataError",
    "Table",
    "check_rows",
    "checkerboard",
    "digits",
    "digits_splits",
    "eight_gaussians",
    "figure1",
    "figure1_log_prob",
    "load_dataset",
    "moons",
    "pinwheel",
    "read_table",
    "rings",
    "spirals",
    "write_table",
]

import math
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

Generator = torch.Generator | None


class DataError(ValueError):
    """A data file or dataset that cannot be used: unreadable, non-numeric, NaN/inf, empty."""


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected `n >= 1` points, got {n!r}")


def figure1(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Samples the 2-D density of the MAF paper's figure 1.

    .. math:: x_2 \sim \mathcal{N}(0, 4), \qquad x_1 \mid x_2 \sim \mathcal{N}(x_2^2 / 4, 1).

    A single autoregressive affine layer in the order :math:`(x_1, x_2)` cannot fit it (the
    mean of :math:`x_1` depends on the later :math:`x_2`); the reversed order or a stack of
    layers can.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points :math:`(x_1, x_2)`, with shape :math:`(n, 2)`.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057
    """
    _check_n(n)
    noise = torch.randn(n, 2, generator=generator, dtype=dtype)
    x2 = 2.0 * noise[:, 1]
    x1 = x2.square() / 4.0 + noise[:, 0]
    return torch.stack((x1, x2), dim=-1)


def figure1_log_prob(x: Tensor) -> Tensor:
    r"""The exact log-density of :func:`figure1`.

    .. math:: \log p(x) = \log \mathcal{N}(x_2; 0, 4) + \log \mathcal{N}(x_1; x_2^2 / 4, 1).

    Args:
        x: The points, with shape :math:`(*, 2)`.

    Returns:
        The log-densities, with shape :math:`(*)`.
    """
    if x.shape[-1:] != (2,):
        raise ValueError(f"expected points with shape (*, 2), got {tuple(x.shape)}")
    x1, x2 = x.unbind(-1)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_p2 = -0.5 * (x2 / 2.0).square() - math.log(2.0) - half_log_2pi
    log_p1 = -0.5 * (x1 - x2.square() / 4.0).square() - half_log_2pi
    return log_p1 + log_p2


# --- 2-D toys (the FFJORD paper's set; formulas re-derived, scales kept) ----------------


def moons(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Two interleaved half circles with Gaussian noise (std 0.1 before scaling by 2).

    Upper moon :math:`(\cos t, \sin t)`, lower moon :math:`(1 - \cos t, 1/2 - \sin t)`,
    :math:`t \sim U(0, \pi)`, each point's moon a fair coin; then :math:`2x - (1, 0.2)`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    t = math.pi * torch.rand(n, generator=generator, dtype=dtype)
    lower = torch.rand(n, generator=generator, dtype=dtype) < 0.5
    x = torch.where(lower, 1 - t.cos(), t.cos())
    y = torch.where(lower, 0.5 - t.sin(), t.sin())
    points = torch.stack((x, y), -1) + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)
    return 2 * points - points.new_tensor([1.0, 0.2])


def eight_gaussians(
    n: int, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Eight Gaussians of std :math:`0.5/\sqrt 2` centred on a circle of radius :math:`2\sqrt 2`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    k = torch.randint(8, (n,), generator=generator)
    angle = (k * (math.pi / 4)).to(dtype or torch.get_default_dtype())
    centres = 4 * torch.stack((angle.cos(), angle.sin()), -1)
    points = centres + 0.5 * torch.randn(n, 2, generator=generator, dtype=dtype)
    return points / math.sqrt(2)


def checkerboard(
    n: int, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Uniform on the black squares of a 4 x 4 checkerboard on :math:`[-4, 4]^2`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    x = 4 * torch.rand(n, generator=generator, dtype=dtype) - 2
    row = torch.randint(2, (n,), generator=generator).to(x.dtype)
    # Each column x in [j, j + 1) has its black squares shifted by j mod 2.
    y = torch.rand(n, generator=generator, dtype=dtype) - 2 * row + x.floor().remainder(2)
    return 2 * torch.stack((x, y), -1)


def pinwheel(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Five curved arms: radial std 0.3, tangential std 0.1, each arm bent by its radius.

    A point of arm :math:`k` is :math:`r = 1 + 0.3 \epsilon_1`, :math:`s = 0.1 \epsilon_2`,
    rotated by :math:`2\pi k / 5 + e^{r} / 4`, then scaled by 2.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    eps = torch.randn(n, 2, generator=generator, dtype=dtype)
    r, s = 1 + 0.3 * eps[:, 0], 0.1 * eps[:, 1]
    arm = torch.randint(5, (n,), generator=generator).to(r.dtype)
    angle = 2 * math.pi * arm / 5 + 0.25 * r.exp()
    cos, sin = angle.cos(), angle.sin()
    return 2 * torch.stack((cos * r - sin * s, sin * r + cos * s), -1)


def spirals(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Two interleaved spirals of 1.5 turns, :math:`\pm(-t \cos t, t \sin t) / 3` plus noise.

    :math:`t = 3\pi \sqrt{u}`, :math:`u \sim U(0, 1)`, uniform jitter of 0.5 before scaling
    and Gaussian noise of std 0.1 after.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    t = 3 * math.pi * torch.rand(n, generator=generator, dtype=dtype).sqrt()
    jitter = 0.5 * torch.rand(n, 2, generator=generator, dtype=dtype)
    arm = torch.stack((-t.cos() * t, t.sin() * t), -1) + jitter
    sign = torch.where(torch.rand(n, 1, generator=generator, dtype=dtype) < 0.5, -1.0, 1.0)
    return sign * arm / 3 + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)


def rings(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Four concentric circles of radii 0.75, 1.5, 2.25, 3 with Gaussian noise (std 0.08).

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    ring = torch.randint(4, (n,), generator=generator)
    radius = 0.75 * (1 + ring).to(dtype or torch.get_default_dtype())
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype)
    points = radius[:, None] * torch.stack((angle.cos(), angle.sin()), -1)
    return points + 0.08 * torch.randn(n, 2, generator=generator, dtype=dtype)


# --- digits --------------------------------------------------------------------------------

DIGITS_SPLIT = (1257, 180, 360)


def digits(
    n: int | None = None, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""scikit-learn's bundled 8 x 8 digits: 1797 images, 64 integer pixels in 0..16.

    Needs scikit-learn (``pip install 'arflows[sklearn]'``); the data ships with it, nothing
    is downloaded. The pixels are integers: dequantize them before fitting a density.

    Args:
        n: The number of images, drawn without replacement; all 1797 in their file order if
            ``None``.
        generator: The random generator for the draw.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The pixel values, with shape :math:`(n, 64)`.
    """
    x = torch.as_tensor(_load_digits(), dtype=dtype or torch.get_default_dtype())
    if n is None:
        return x
    _check_n(n)
    if n > len(x):
        raise ValueError(f"expected `n <= {len(x)}` digit images, got {n}")
    return x[torch.randperm(len(x), generator=generator)[:n]]


def _load_digits() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'arflows[sklearn]'"
        ) from error
    return load_digits().data


def digits_splits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    r"""The fixed train/valid/test split of :func:`digits`: 1257/180/360 images.

    Args:
        seed: The seed of the random permutation of the 1797 images.

    Returns:
        The integer pixel values (float tensors) of the train, valid and test images, with
        shapes :math:`(1257, 64)`, :math:`(180, 64)` and :math:`(360, 64)`.
    """
    x = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid, test = torch.split(perm, DIGITS_SPLIT)
    return x[train], x[valid], x[test]


DATASETS: dict[str, Callable[..., Tensor]] = {
    "figure1": figure1,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
    "rings": rings,
    "digits": digits,
}
"""The built-in datasets by name: ``f(n, *, generator=None, dtype=None) -> Tensor (n, D)``."""


# --- tables --------------------------------------------------------------------------------


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


def load_dataset(name: str, n: int | None = None, *, seed: int = 0) -> Table:
    r"""A built-in dataset as a :class:`Table`.

    Args:
        name: One of :data:`DATASETS`: ``"figure1"``, ``"moons"``, ``"8gaussians"``,
            ``"checkerboard"``, ``"pinwheel"``, ``"spirals"``, ``"rings"``, ``"digits"``.
        n: The number of points of a generated dataset (default 10 000). ``"digits"`` ignores
            it and returns all 1797 images (integer pixels, not yet dequantized).
        seed: The seed of the draw.

    Returns:
        The table, with columns ``x0, x1, ...`` (``pixel_<row>_<col>`` for digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name == "digits":
        x = digits()
        columns = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
    else:
        gen = torch.Generator().manual_seed(seed)
        x = DATASETS[name](10_000 if n is None else n, generator=gen)
        columns = [f"x{j}" for j in range(x.shape[1])]
    return Table(x, None, columns, [], _integer_columns(x.double().numpy()))


# --- files ---------------------------------------------------------------------------------

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


def _check_names(names: Sequence[str], available: list[str], what: str, path: Path) -> None:
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


def _check_disjoint(columns: list[str], context: list[str], path: Path) -> None:
    both = [name for name in columns if name in context]
    if len(both) == 1:
        raise DataError(f"{path}: column {both[0]!r} is both a data column and a context column")
    if both:
        raise DataError(
            f"{path}: columns {', '.join(map(repr, both))} are both data and context columns"
        )


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
        _check_names(columns, available, "data", path)
        names = list(columns)
        _check_disjoint(names, context, path)
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
    _check_names(context, available, "context", path)
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


def check_rows(
    x: Tensor,
    columns: Sequence[str] | None = None,
    *,
    dequantized: Sequence[int] = (),
    share: float = 0.5,
) -> list[str]:
    r"""Refuses data columns that have no density; notes columns that are mostly one value.

    A column holding one value in every row has no density: all of its probability sits on
    a point, so no log-density is finite, and a flow fitted to it narrows onto the value
    without end (the log-likelihood keeps growing while samples keep a spread). A column
    that takes one value in most rows (a point mass, e.g. zero-inflated data) can be fitted,
    but only as a sharp peak, with large log-densities there. Dequantized columns get
    :math:`U[0, 1)` noise first, so they hold no point mass: a constant one becomes uniform
    on :math:`[v, v + 1)` and is only noted.

    Args:
        x: The data, with shape :math:`(N, D)`.
        columns: The names of the :math:`D` columns, for the messages; ``None``: their
            indices.
        dequantized: Indices of the columns that are dequantized before fitting.
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
        data): kept, but a density can only follow it with a sharp peak, so log-densities at
        0 come out large
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
    noised = torch.zeros(d, dtype=torch.bool)
    noised[list(dequantized)] = True
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
        f"uniform on [{first[j]:g}, {first[j] + 1:g}) and tells the model nothing; consider "
        "leaving it out"
        for j in (constant & noised).nonzero().flatten().tolist()
    ]
    # A value held by more than half of the rows is the median, found quicker than the mode.
    common = x.median(0).values  # (D,)
    shares = (x == common).sum(0).cpu() / n
    for j in ((shares > share) & ~constant & ~noised).nonzero().flatten().tolist():
        v = f"{common[j].item():g}"
        notes.append(
            f"column {labels[j]} takes the value {v} in {shares[j].item():.0%} of the rows (a "
            "point mass, e.g. zero-inflated data): kept, but a density can only follow it with "
            f"a sharp peak, so log-densities at {v} come out large"
        )
    return notes


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
