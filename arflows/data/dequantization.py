r"""Uniform dequantization of columns on a grid, and discrete likelihoods of flows.

A continuous density :math:`p` fitted to :math:`x = k + u`, :math:`u \sim U[0, 1)^d`, defines
a discrete distribution on the integer columns,

.. math:: P(k) = \int_{[0, 1)^d} p(k + u) \, du,

and maximising :math:`\mathbb{E}_u \log p(k + u)` maximises a lower bound on
:math:`\log P(k)` (Jensen's inequality), so discrete data get a valid likelihood instead of
the degenerate spikes a density would put on integers.

Columns on a coarser or finer grid :math:`v_0 + h k` (amounts rounded to thousands, ratings
in halves) are the same case with cells :math:`[v, v + h)`: the noise is :math:`h u`, and
:math:`P(v) = h \int_{[0, 1)} p(v + h u) \, du`. :func:`grid_step` finds :math:`h`,
:func:`grid_columns` the columns on a grid, :func:`floor_to_grid` maps samples back onto it
and :func:`describe_ties` says, column by column, what repeated values there are and what is
done with them.

References:
    A note on the evaluation of generative models (Theis et al., 2016)
    https://arxiv.org/abs/1511.01844
"""

from __future__ import annotations

__all__ = [
    "describe_ties",
    "dequantize",
    "discrete_log_prob",
    "floor_to_grid",
    "grid_columns",
    "grid_origins",
    "grid_step",
    "integer_columns",
]

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

# Tolerances of grid detection: values may be off the grid by _RTOL of the largest magnitude
# (data that passed through float32, as tables are read, are off by up to 6e-8 of it), but
# never by more than _CELL_TOL of a step, which keeps a coarse tolerance from accepting any
# step at all.
_RTOL = 1e-6
_CELL_TOL = 0.05
# Values closer than this (relative to the largest magnitude) count as one value (a tie).
_TIE_RTOL = 1e-9
# The finest grid tried below the smallest gap between two distinct values (values 0, 0.4, 1
# lie on a grid of 0.2, half the smallest gap); finer ones would fit a few values by chance.
_MAX_DIVISOR = 10
# Integers are exact in float64 up to here; the gcd of their gaps is then exact too.
_EXACT_INTEGERS = 2.0**53


def _check_data(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected `{name}` to be a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"expected `{name}` with shape (*, D), got a scalar")


def integer_columns(x: Tensor) -> list[int]:
    r"""The columns whose values are all (finite) integers.

    Args:
        x: The data, with shape :math:`(*, D)`. Integer and boolean dtypes have only integer
            columns.

    Returns:
        The indices of the integer-valued columns, ascending.

    Example:
        >>> integer_columns(torch.tensor([[0.0, 1.5, 3.0], [2.0, 0.5, -1.0]]))
        [0, 2]
    """
    _check_data(x, "x")
    if not (x.is_floating_point() or x.is_complex()):
        return list(range(x.shape[-1]))
    flat = x.reshape(-1, x.shape[-1])
    whole = (torch.isfinite(flat) & (flat == flat.round())).all(dim=0)
    return whole.nonzero().flatten().tolist()


def _values(values: object) -> np.ndarray:
    """The values as a flat float64 array."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.is_complex():
            raise TypeError("expected real `values`, got a complex tensor")
        values = values.double().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def _shortest(value: float, fits: Callable[[float], bool]) -> float:
    """The number with the fewest significant digits near ``value`` that ``fits``."""
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if fits(candidate):
            return candidate
    return value


def _off_grid(u: np.ndarray, origin: float, step: float) -> float:
    """How far the farthest of ``u`` lies from ``origin + step * k``."""
    q = (u - origin) / step
    return float(np.abs(q - np.round(q)).max() * step)


def _grid(values: object) -> tuple[float, float] | None:
    """``(origin, step)`` of the grid the values lie on (see :func:`grid_step`), or ``None``."""
    v = _values(values)
    if v.size == 0 or not np.isfinite(v).all():
        return None
    v = np.sort(v)
    scale = max(abs(v[0]), abs(v[-1]))
    if scale <= _EXACT_INTEGERS and np.all(v == np.round(v)):
        u = np.unique(v)
        if u.size == 1:
            return 0.0, 1.0
        step = float(np.gcd.reduce(np.diff(u.astype(np.int64))))
        return _origin(float(u[0]), step, scale), step
    # Values this close are ties: float arithmetic (0.1 * 3 vs 0.3) makes them distinct.
    u = v[np.concatenate([[True], np.diff(v) > _TIE_RTOL * scale])]
    if u.size < 2 or u.size > v.size / 2:
        return None
    smallest = float(np.diff(u).min())
    # Most wrong steps fail on a spread of a few values, at little cost.
    spread = u[:: max(1, u.size // 256)]

    def fits(values: np.ndarray, step: float) -> bool:
        return _off_grid(values, u[0], step) <= min(_RTOL * scale, _CELL_TOL * step)

    for divisor in range(1, _MAX_DIVISOR + 1):
        step = _refine(u, smallest / divisor)
        if fits(spread, step) and fits(v, step):
            # Fewer digits if they fit the values as well, or to float32's resolution (0.1 for
            # float32 tenths, whose fitted step is 0.1000001, or for two values 0.3 and 0.6).
            off = max(2 * _off_grid(v, u[0], step), float(np.finfo(np.float32).eps) * scale)
            step = _shortest(step, lambda h, off=off: _off_grid(v, u[0], h) <= off)
            return _origin(float(u[0]), step, scale), step
    return None


def _refine(u: np.ndarray, step: float) -> float:
    """The least-squares step of sorted ``u`` on a grid near ``step`` through ``u[0]``."""
    # The smallest gap only estimates the step (float32 data: to within 1e-3 of it): the
    # gaps of a few cells, numbered safely, pin it down first; then every value is numbered
    # gap by gap (errors do not add up across the range) and all together give the step.
    gaps = np.diff(u)
    k = np.round(gaps / step)
    few = (k >= 1) & (k <= 10)
    if few.any():
        step = float(np.dot(k[few], gaps[few]) / np.dot(k[few], k[few]))
    k = np.concatenate([[0.0], np.cumsum(np.round(gaps / step))])
    return float(np.dot(k, u - u[0]) / np.dot(k, k)) if k.any() else step


def _origin(value: float, step: float, scale: float) -> float:
    """The grid point ``value``'s grid passes through in ``[0, step)``, in few digits."""
    if scale <= _EXACT_INTEGERS and value == round(value) and step == round(step):
        return float(int(value) % int(step))  # exact: integers have no tolerance
    atol = min(_RTOL * scale, _CELL_TOL * step)
    origin = value - step * math.floor(value / step)
    if origin <= atol or origin >= step - atol:
        return 0.0  # the grid passes through zero
    return _shortest(origin, lambda o: abs(o - origin) <= atol)


def grid_step(values: object) -> float | None:
    r"""The step :math:`h` of the grid :math:`v_0 + h k` (:math:`k` integer) the values lie on.

    * **Integer values** always lie on a grid: :math:`h` is the greatest common divisor of
      the gaps between them (exact, up to :math:`2^{53}`): 1 for counts, 1000 for amounts
      rounded to thousands, 2 for values 0 and 2; 1 for a single integer value.
    * **Other values** lie on a grid when they repeat (ties): at most half as many distinct
      values as values (each seen twice on average; values within :math:`10^{-9}` of the
      largest magnitude are one value), at least two of them, and every value within
      :math:`10^{-6}` of the largest magnitude (and :math:`h / 20`) of :math:`v_0 + h k`,
      which admits data read through float32. :math:`h` is the coarsest such step among the
      smallest gap between two distinct values divided by 1, 2, ..., 10 (values 0, 0.4, 1
      give 0.2), refined over all values and written with the fewest digits that still fit
      (0.1, not 0.10000000000000009). A column recorded to a fixed number of decimals whose
      values barely repeat is continuous for a density (``None``: no spikes to remove), and
      so is a discrete column whose values are on no grid (0, :math:`\pi`, :math:`e`).

    Args:
        values: The values of one column (a tensor or array of any shape; float64 inside).

    Returns:
        The step :math:`h > 0`, or ``None`` when the values are not on a grid, not finite,
        empty, or (not integers and) too rarely repeated.

    Example:
        >>> grid_step(torch.tensor([0.0, 1000.0, 3000.0, 1000.0]))
        1000.0
        >>> grid_step(torch.tensor([1.5, 2.0, 4.5, 2.0, 1.5, 4.5]))
        0.5
        >>> grid_step(torch.tensor([0.13, 0.52, 0.77])) is None  # no ties
        True
    """
    grid = _grid(values)
    return None if grid is None else grid[1]


def grid_columns(x: Tensor) -> dict[int, float]:
    r"""The columns that lie on a grid, with their steps (see :func:`grid_step`).

    It supersedes :func:`integer_columns` as the choice of the columns to dequantize: every
    integer column is there (with step 1 or a multiple of it), and so are non-integer
    columns on a grid with ties (ratings in halves, amounts in tenths). Pass the result as
    ``steps`` to :func:`dequantize`, :func:`discrete_log_prob` and :func:`arflows.fit`'s
    ``dequantize``.

    Args:
        x: The data, with shape :math:`(*, D)`.

    Returns:
        ``{column: step}`` for the columns on a grid, ascending.

    Example:
        >>> x = torch.tensor([[0.0, 1.5, 0.3], [1000.0, 2.5, 1.7], [0.0, 1.5, 2.9]])
        >>> grid_columns(x)
        {0: 1000.0}
    """
    _check_data(x, "x")
    flat = x.reshape(-1, x.shape[-1])
    steps = {j: grid_step(flat[:, j]) for j in range(flat.shape[-1])}
    return {j: step for j, step in steps.items() if step is not None}


def grid_origins(x: Tensor, steps: Mapping[int, float]) -> dict[int, float]:
    r"""The origins :math:`v_0 \in [0, h)` of the grids :math:`v_0 + h k` of ``steps``' columns.

    The grid is known only with its origin: values 1, 1001 and 2001 lie on
    :math:`1 + 1000 k`, so :func:`floor_to_grid` needs both.

    Args:
        x: The data, with shape :math:`(*, D)`.
        steps: ``{column: step}``, e.g. from :func:`grid_columns`.

    Returns:
        ``{column: origin}``: the smallest value of the column reduced to :math:`[0, h)`
        (0 for a grid through zero), written with the fewest digits within tolerance.

    Example:
        >>> grid_origins(torch.tensor([[1.0], [1001.0], [3001.0]]), {0: 1000.0})
        {0: 1.0}
    """
    _check_data(x, "x")
    flat = x.reshape(-1, x.shape[-1]).double()
    out = {}
    for j, h in _step_map(steps, x).items():
        column = flat[:, j]
        scale = column.abs().max().item()
        out[j] = _origin(column.min().item(), h, scale)
    return out


def _decimals(value: float) -> int | None:
    """The decimals of ``value``'s shortest repr, ``None`` beyond 12 (no exact decimal)."""
    text = repr(float(value))
    if "e" in text or "inf" in text or "nan" in text:
        mantissa, _, exponent = text.partition("e")
        places = len(mantissa.partition(".")[2].rstrip("0")) - int(exponent or 0)
    else:
        places = len(text.partition(".")[2].rstrip("0"))
    return max(places, 0) if places <= 12 else None


def floor_to_grid(
    x: Tensor, steps: Mapping[int, float], origins: Mapping[int, float] | None = None
) -> Tensor:
    r"""Maps dequantized values onto their grid: :math:`v_0 + h \lfloor (x - v_0) / h \rfloor`.

    The inverse of :func:`dequantize` with the same ``steps`` (:math:`v + h u` with
    :math:`u \in [0, 1)` floors to :math:`v`), and the way to turn a flow's samples into
    values of the grid. With steps 1 and no origins it is :meth:`torch.Tensor.floor` on the
    columns. Results are rounded to the decimals of :math:`h` and :math:`v_0` (0.3, not
    0.30000000000000004) when both are short decimals.

    Args:
        x: The values, with shape :math:`(*, D)`.
        steps: ``{column: step}``; other columns are left as they are.
        origins: ``{column: origin}`` (:func:`grid_origins`); missing ones are 0.

    Returns:
        A copy of ``x`` with the columns of ``steps`` on their grids.

    Example:
        >>> x = torch.tensor([[1234.5, 0.77], [2999.0, 0.2]], dtype=torch.float64)
        >>> floor_to_grid(x, {0: 1000.0, 1: 0.5}, {0: 1.0}).tolist()
        [[1001.0, 0.5], [2001.0, 0.0]]
    """
    _check_data(x, "x")
    grid = _step_map(steps, x)
    origins = {} if origins is None else origins
    x = x.clone() if x.is_floating_point() else x.to(torch.get_default_dtype())
    tiny = torch.finfo(x.dtype).eps
    for j, h in grid.items():
        v0 = float(origins.get(j, origins.get(j - x.shape[-1], 0.0)))
        value = x[..., j].double()
        # A value on the grid but rounded just below it (0.4 in float32 is 3.9999999 steps
        # of 0.1) stays in its own cell: the slack is the value's own rounding error.
        slack = tiny * value.abs() / h
        column = v0 + h * torch.floor((value - v0) / h + slack)
        places = [_decimals(h), _decimals(v0)]
        if None not in places and max(places) > 0:
            column = torch.round(column, decimals=max(places))
        x[..., j] = column.to(x.dtype)
    return x


def describe_ties(
    x: Tensor,
    names: Sequence[str] | None = None,
    *,
    dequantized: Mapping[int, float] | Sequence[int] = (),
    share: float = 0.1,
) -> list[dict]:
    r"""The columns with repeated values, for a fit report: what repeats and what is done.

    A column is listed when it lies on a grid (:func:`grid_step`) or when one value holds at
    least ``share`` of the rows (a point mass, e.g. zero-inflated data).

    Args:
        x: The data, with shape :math:`(N, D)`.
        names: The names of the :math:`D` columns (``None``: their indices).
        dequantized: The columns the fit dequantizes: ``{column: step}``, or indices (step
            1), as given to :func:`arflows.fit`.
        share: The smallest share of the rows of one value that is listed.

    Returns:
        One dict per listed column, in column order: ``column`` (name or index), ``index``,
        ``distinct`` (values), ``mode`` (the most common value), ``mode_share`` (its share
        of the rows), ``step`` and ``origin`` of the grid (``None`` off a grid),
        ``dequantized`` (the step used, ``None`` if not dequantized) and ``action`` (what
        the fit does with it, in plain words).

    Example:
        >>> x = torch.tensor([[0.0, 1.5], [1000.0, 0.0], [0.0, 0.0], [3000.0, 2.7]])
        >>> for row in describe_ties(x, ["amount", "rain"], dequantized={0: 1000.0}):
        ...     print(row["column"], row["distinct"], row["mode"], row["step"])
        amount 3 0.0 1000.0
        rain 3 0.0 None
    """
    _check_data(x, "x")
    if x.dim() != 2:
        raise ValueError(f"expected `x` with shape (rows, columns), got {tuple(x.shape)}")
    n, d = x.shape
    if not 0 < share <= 1:
        raise ValueError(f"expected `share` in (0, 1], got {share!r}")
    if names is not None and len(names) != d:
        raise ValueError(f"expected {d} names in `names` for {d} columns, got {len(names)}")
    if isinstance(dequantized, Mapping):
        used = _step_map(dequantized, x)
    else:
        used = dict.fromkeys(_columns(list(dequantized), x), 1.0)
    out = []
    for j in range(d):
        column = x[:, j].detach().cpu().double()
        values, counts = torch.unique(column, return_counts=True)
        top = int(counts.argmax())
        mode, mode_share = values[top].item(), counts[top].item() / n
        grid = _grid(column)
        if grid is None and not (counts[top] > 1 and mode_share >= share):
            continue
        origin, step = (None, None) if grid is None else grid
        out.append(
            {
                "column": j if names is None else names[j],
                "index": j,
                "distinct": len(values),
                "mode": mode,
                "mode_share": mode_share,
                "step": step,
                "origin": origin,
                "dequantized": used.get(j),
                "action": _action(used.get(j), step, mode),
            }
        )
    return out


def _action(used: float | None, step: float | None, mode: float) -> str:
    """What the fit does with a column with ties, in plain words."""
    if used is not None:
        said = (
            f"dequantized: U[0, {used:g}) noise, each value v standing for the cell "
            f"[v, v + {used:g})"
        )
        if step is not None and step > used * (1 + _CELL_TOL):
            said += (
                f"; but the values lie on a grid of step {step:g}, so cells of width "
                f"{used:g} leave gaps between them (spikes): dequantize by {step:g}"
            )
        return said
    if step is not None:
        return (
            f"kept as is, though on a grid of step {step:g}: the density can only follow "
            f"it with spikes at the values; dequantize it by {step:g}"
        )
    return (
        f"kept as is: the density learns the point mass at {mode:g} as a sharp spike beside "
        "the continuous part, with large log-densities there"
    )


def _columns(columns: Sequence[int] | None, x: Tensor) -> list[int]:
    d = x.shape[-1]
    if columns is None:
        return integer_columns(x)
    if isinstance(columns, int | str) or not isinstance(columns, Sequence):
        raise TypeError(f"expected `columns` to be a list of ints or None, got {columns!r}")
    out = []
    for col in columns:
        if isinstance(col, bool) or not isinstance(col, int) or not -d <= col < d:
            raise ValueError(f"expected `columns` entries to be ints in 0..{d - 1}, got {col!r}")
        out.append(col % d)
    if len(set(out)) != len(out):
        raise ValueError(f"expected distinct `columns`, got {list(columns)}")
    return out


def _step_map(steps: Mapping[int, float], x: Tensor) -> dict[int, float]:
    """``steps`` with non-negative columns, refused unless columns of ``x`` and steps > 0."""
    if not isinstance(steps, Mapping):
        raise TypeError(f"expected `steps` to be a mapping {{column: step}}, got {steps!r}")
    d = x.shape[-1]
    out = {}
    for col, step in steps.items():
        if isinstance(col, bool) or not isinstance(col, int) or not -d <= col < d:
            raise ValueError(f"expected `steps` columns to be ints in 0..{d - 1}, got {col!r}")
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0 < step < math.inf:
            raise ValueError(f"expected finite `steps` > 0, got {step!r} for column {col}")
        if col % d in out:
            raise ValueError(f"expected distinct `steps` columns, got {list(steps)}")
        out[col % d] = float(step)
    return dict(sorted(out.items()))


def _steps(
    columns: Sequence[int] | None, steps: Mapping[int, float] | None, x: Tensor
) -> tuple[list[int], list[float] | None]:
    """The columns to dequantize and their steps (``None``: all 1, the historical path)."""
    if steps is None:
        return _columns(columns, x), None
    given = _step_map(steps, x)
    cols = list(given) if columns is None else _columns(columns, x)
    extra = sorted(set(given) - set(cols))
    if extra:
        raise ValueError(f"expected `steps` for columns in `columns` {cols}, got some for {extra}")
    return cols, [given.get(col, 1.0) for col in cols]


def dequantize(
    x: Tensor,
    columns: Sequence[int] | None = None,
    steps: Mapping[int, float] | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Adds uniform noise :math:`h u`, :math:`u \sim U[0, 1)`, to columns on a grid of step h.

    A value :math:`v` becomes :math:`v + h u`, so the cell :math:`[v, v + h)` carries the
    mass of :math:`v` and :func:`floor_to_grid` recovers it (:math:`h = 1`, integers:
    :math:`\lfloor x \rfloor`). Draw fresh noise every epoch.

    Args:
        x: The data, with shape :math:`(*, D)`; integer dtypes become the default float dtype.
        columns: The columns to dequantize. Defaults to the columns of ``steps`` when given,
            else to :func:`integer_columns` of ``x``.
        steps: ``{column: step}`` (e.g. :func:`grid_columns`); ``columns`` missing from it
            get step 1. ``None``: step 1 everywhere, :math:`U[0, 1)` noise.
        generator: The random generator of the noise.

    Returns:
        A floating-point copy of ``x`` with noise added to ``columns``, shape :math:`(*, D)`.

    Example:
        >>> k = torch.tensor([[0.0, 0.5], [3.0, -1.5]])
        >>> x = dequantize(k)   # column 0 is integer-valued, column 1 is not
        >>> torch.equal(x.floor()[:, 0], k[:, 0]), torch.equal(x[:, 1], k[:, 1])
        (True, True)
        >>> x = dequantize(k, steps={1: 0.5})   # column 1 lies on a grid of halves
        >>> torch.equal(x[:, 0], k[:, 0]), bool(((x - k)[:, 1] < 0.5).all())
        (True, True)
    """
    _check_data(x, "x")
    cols, hs = _steps(columns, steps, x)
    x = x.clone() if x.is_floating_point() else x.to(torch.get_default_dtype())
    if cols:
        shape = (*x.shape[:-1], len(cols))
        noise = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
        if hs is not None:
            noise *= torch.tensor(hs, dtype=x.dtype, device=x.device)
        x[..., cols] += noise
    return x


def discrete_log_prob(
    flow: Distribution | Callable[[Tensor], Tensor],
    k: Tensor,
    columns: Sequence[int] | None = None,
    steps: Mapping[int, float] | None = None,
    *,
    samples: int = 1000,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Monte Carlo estimate of the discrete log-probability of columns on a grid.

    With :math:`u_s \sim U[0, 1)^d` (the uniform proposal, whose density on the cell is 1),

    .. math:: \log P(k) = \log \int_{[0, 1)^d} p(k + u)\, du
              \approx \operatorname{logsumexp}_s \log p(k + u_s) - \log S,

    and with steps :math:`h_j` the cell is :math:`[k, k + h)`, of volume
    :math:`\prod_j h_j`:

    .. math:: \log P(k) = \log \Big(\prod_j h_j\Big)
              \int_{[0, 1)^d} p(k + h u)\, du
              \approx \operatorname{logsumexp}_s \log p(k + h u_s) - \log S
              + \sum_j \log h_j,

    the log of an unbiased estimate of :math:`P(k)` (an average in probability space); it is
    consistent as :math:`S \to \infty` and, by the delta method, biased low by about
    :math:`\mathrm{Var}_u[p(k + u)] / (2 S P(k)^2)`.
    The training objective :math:`\mathbb{E}_u \log p(k + u)` is a lower bound on
    :math:`\log P(k)` (Theis et al., 2016), often a loose one; this estimate is the one to
    report. Columns not in ``columns`` stay continuous: the result is then the log of a mixed
    probability (mass in the integer columns, density in the others).

    Args:
        flow: A distribution (its ``log_prob`` is used) or a function ``x -> log p(x)`` with
            shapes :math:`(S, *, D) \to (S, *)`.
        k: The values on the grid (integers without ``steps``), with shape :math:`(*, D)`.
        columns: The discrete columns. Defaults to the columns of ``steps`` when given,
            else to :func:`integer_columns` of ``k``.
        steps: ``{column: step}`` of the grids (:func:`grid_columns`); ``columns`` missing
            from it get step 1. ``None``: step 1 everywhere (integers).
        samples: The number :math:`S` of noise draws per point.
        chunk_size: The most draws evaluated at once (memory scales with it).
        generator: The random generator of the noise.

    Returns:
        The estimates of :math:`\log P(k)`, with shape :math:`(*)` (broadcast with the
        distribution's batch shape).

    Example:
        >>> normal = torch.distributions.Normal(torch.zeros(1), torch.ones(1))
        >>> dist = torch.distributions.Independent(normal, 1)
        >>> est = discrete_log_prob(dist, torch.tensor([[0.0]]), samples=4000)
        >>> exact = (normal.cdf(torch.ones(1)) - normal.cdf(torch.zeros(1))).log()
        >>> torch.allclose(est, exact, atol=0.01)
        True
    """
    _check_data(k, "k")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"expected `samples` to be an int >= 1, got {samples!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"expected `chunk_size` to be an int >= 1, got {chunk_size!r}")
    if isinstance(flow, Distribution):
        log_prob = flow.log_prob
    elif callable(flow):
        log_prob = flow
    else:
        raise TypeError(f"expected a distribution or a callable, got {type(flow).__name__}")
    cols, hs = _steps(columns, steps, k)
    if not k.is_floating_point():
        k = k.to(torch.get_default_dtype())
    if isinstance(flow, Distribution):  # the draws must not be mistaken for a batch of contexts
        batch = torch.broadcast_shapes(k.shape[:-1], flow.batch_shape)
        k = k.expand(*batch, k.shape[-1])
    parts = []
    for start in range(0, samples, chunk_size):
        n = min(chunk_size, samples - start)
        x = k.expand(n, *k.shape).clone()  # (S', *, D)
        if cols:
            shape = (*x.shape[:-1], len(cols))
            u = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
            x[..., cols] += (
                u if hs is None else u * torch.tensor(hs, dtype=x.dtype, device=x.device)
            )
        parts.append(log_prob(x))  # (S', *)
    log_p = torch.logsumexp(torch.cat(parts), dim=0) - math.log(samples)
    return log_p if hs is None else log_p + sum(math.log(h) for h in hs)
