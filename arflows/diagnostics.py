r"""Checks of a fitted flow in its base space: the data mapped to noise should look N(0, I).

A flow's transform maps data to noise, :math:`z = f(x)`. If the model is right, the
Gaussianised data :math:`z_n = f(x_n)` are draws from the standard normal base, so
per-dimension normality tests and QQ plots of :math:`z` show where the model falls short
(the diagnostic of the MAF paper's figure 1).

For conditional flows, :func:`pit` and :func:`calibration` check the predictive
distributions of the targets one by one: the probability integral transform
:math:`u_{nj} = F_j(y_{nj} \mid c_n)` of held-out rows is uniform on :math:`[0, 1]` when the
model is right, so its histogram is flat and the central interval of level :math:`l` holds a
share :math:`l` of the rows (Gneiting, Balabdaoui and Raftery, 2007).

Example:
    >>> import arflows
    >>> flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
    >>> x = torch.randn(500, 2)
    >>> torch.allclose(gaussianize(flow, x), x)  # an untrained MAF is the identity
    True
    >>> table = normality(x)
    >>> list(table.columns)
    ['ks', 'ks_pvalue', 'skew', 'kurtosis', 'mean', 'std']
    >>> bool((table["ks_pvalue"] > 1e-3).all())
    True

References:
    Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
    https://arxiv.org/abs/1705.07057

    Probabilistic forecasts, calibration and sharpness (Gneiting, Balabdaoui and Raftery,
    2007) https://doi.org/10.1111/j.1467-9868.2007.00587.x
"""

from __future__ import annotations

__all__ = [
    "LEVELS",
    "Calibration",
    "calibration",
    "gaussianize",
    "gaussianized_figure",
    "joint_normality",
    "normality",
    "pit",
    "qq_figure",
]

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .flows import Flow, cdf, log_prob

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

_CHUNK = 8192  # rows mapped to the base space per call of the flow
# The nominal levels of the central intervals whose coverage :func:`calibration` reports.
LEVELS = (0.5, 0.8, 0.9, 0.95)


def _as_matrix(name: str, z: Tensor | np.ndarray) -> np.ndarray:
    array = z.detach().cpu().double().numpy() if isinstance(z, Tensor) else np.asarray(z, float)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(
            f"expected `{name}` with shape (N >= 2, D >= 1), got {tuple(array.shape)}"
        )
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"`{name}` holds NaN or inf, first at row {row}, column {col}")
    return array


def _names(columns: Sequence[str] | None, d: int) -> list[str]:
    if columns is None:
        return [f"z{i}" for i in range(d)]
    columns = [str(name) for name in columns]
    if len(columns) != d:
        raise ValueError(f"expected {d} column names (one per dimension), got {len(columns)}")
    return columns


@contextlib.contextmanager
def _evaluating(flow: Flow) -> Iterator[None]:
    # Layers such as batch norm must use their running statistics, not the batch's.
    was_training = flow.training
    flow.eval()
    try:
        yield
    finally:
        flow.train(was_training)


@torch.no_grad()
def gaussianize(flow: Flow, x: Tensor, c: Tensor | None = None) -> Tensor:
    r"""Maps data to the flow's base space: :math:`z = f(x; c)`.

    The map includes the flow's stored standardisation, so ``x`` is raw data.

    Args:
        flow: A flow (conditional flows need ``c``).
        x: The data, with shape :math:`(N, D)`.
        c: The contexts, with shape :math:`(N, C)`, or ``None``.

    Returns:
        The Gaussianised data :math:`z`, with shape :math:`(N, D)`, on ``x``'s device, in the
        flow's dtype.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected `x` as a tensor with shape (N, D), got {shape}")
    if c is not None and (c.dim() != 2 or c.shape[0] != x.shape[0]):
        raise ValueError(
            f"expected `c` with shape ({x.shape[0]}, C) to match `x`, got {tuple(c.shape)}"
        )
    param = next(flow.parameters())
    parts = []
    with _evaluating(flow):
        for i in range(0, len(x), _CHUNK):
            xb = x[i : i + _CHUNK].to(param.device, param.dtype)
            cb = None if c is None else c[i : i + _CHUNK].to(param.device, param.dtype)
            parts.append(flow(cb).transform(xb).to(x.device))
    return torch.cat(parts) if parts else x.new_zeros(x.shape, dtype=param.dtype)


def normality(z: Tensor | np.ndarray, columns: Sequence[str] | None = None) -> pandas.DataFrame:
    r"""Per-dimension tests of :math:`z_j \sim \mathcal{N}(0, 1)`.

    For each dimension :math:`j`: the Kolmogorov--Smirnov statistic
    :math:`\sup_t |F_n(t) - \Phi(t)|` and its p-value against the standard normal, the
    sample skewness :math:`m_3 / m_2^{3/2}` (0 for a Gaussian), the excess kurtosis
    :math:`m_4 / m_2^2 - 3` (0 for a Gaussian), the mean (0) and standard deviation (1).

    Args:
        z: The Gaussianised data, with shape :math:`(N, D)`.
        columns: A name per dimension (the table's index); defaults to ``z0, z1, ...``.

    Returns:
        A table with one row per dimension and the columns ``ks``, ``ks_pvalue``, ``skew``,
        ``kurtosis``, ``mean``, ``std``.
    """
    import pandas
    from scipy import stats

    array = _as_matrix("z", z)
    names = _names(columns, array.shape[1])
    ks = [stats.kstest(array[:, j], "norm") for j in range(array.shape[1])]
    return pandas.DataFrame(
        {
            "ks": [float(r.statistic) for r in ks],
            "ks_pvalue": [float(r.pvalue) for r in ks],
            "skew": stats.skew(array, axis=0),
            "kurtosis": stats.kurtosis(array, axis=0, fisher=True),
            "mean": array.mean(0),
            "std": array.std(0),
        },
        index=pandas.Index(names, name="column"),
    )


def joint_normality(z: Tensor | np.ndarray) -> dict[str, float]:
    r"""Joint checks of :math:`z \sim \mathcal{N}(0, I)`: moments against the standard normal.

    With :math:`\hat\mu` and :math:`\hat\Sigma` the sample mean and covariance:

    * ``mean_error`` :math:`= \|\hat\mu\|_2` and ``cov_error``
      :math:`= \|\hat\Sigma - I\|_F / \sqrt{D}` (both about :math:`\sqrt{D/N}` when the
      model is right);
    * ``max_abs_corr``: the largest absolute correlation between two dimensions;
    * ``max_ks``: the largest per-dimension KS statistic, and ``min_ks_pvalue`` the smallest
      p-value multiplied by :math:`D` (Bonferroni, capped at 1).

    Args:
        z: The Gaussianised data, with shape :math:`(N, D)`.

    Returns:
        The scores above, by name.
    """
    array = _as_matrix("z", z)
    n, d = array.shape
    mean = array.mean(0)
    cov = np.atleast_2d(np.cov(array, rowvar=False))
    scale = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    corr = cov / scale[:, None] / scale[None, :]
    off = np.abs(corr - np.diag(np.diag(corr)))
    table = normality(array)
    return {
        "rows": float(n),
        "mean_error": float(np.linalg.norm(mean)),
        "cov_error": float(np.linalg.norm(cov - np.eye(d)) / math.sqrt(d)),
        "max_abs_corr": float(off.max()) if d > 1 else 0.0,
        "max_ks": float(table["ks"].max()),
        "min_ks_pvalue": float(min(1.0, table["ks_pvalue"].min() * d)),
    }


def qq_figure(
    z: Tensor | np.ndarray,
    columns: Sequence[str] | None = None,
    *,
    max_panels: int = 16,
    points: int = 1000,
) -> Figure:
    r"""QQ plots of each dimension of :math:`z` against :math:`\mathcal{N}(0, 1)`.

    When :math:`D` exceeds ``max_panels``, only the dimensions with the largest KS statistic
    (the least Gaussian) are drawn, worst first. Each panel plots sample quantiles against
    normal quantiles at ``points`` evenly spaced probabilities; a perfect model lies on the
    diagonal.

    Args:
        z: The Gaussianised data, with shape :math:`(N, D)`.
        columns: A name per dimension, for the panel titles.
        max_panels: The most panels drawn.
        points: The quantiles plotted per panel.

    Returns:
        A matplotlib figure (save it with :func:`arflows.plot.save_figure`).
    """
    from scipy import stats

    from .plot import new_figure

    if max_panels < 1 or points < 2:
        raise ValueError(
            f"expected `max_panels >= 1` and `points >= 2`, got {max_panels} and {points}"
        )
    array = _as_matrix("z", z)
    names = _names(columns, array.shape[1])
    table = normality(array, names)
    order = np.argsort(-table["ks"].to_numpy(), kind="stable")[:max_panels]
    if len(order) == array.shape[1]:
        order = np.sort(order)  # all drawn: keep the data's order
    cols = math.ceil(math.sqrt(len(order)))
    rows = math.ceil(len(order) / cols)
    fig = new_figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    probs = (np.arange(points) + 0.5) / points
    theory = stats.norm.ppf(probs)
    for ax, j in zip(axes, order, strict=False):
        sample = np.quantile(array[:, j], probs)
        ax.plot(theory, sample, ".", ms=2)
        lim = abs(theory).max()
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_title(f"{names[j]} (KS {table['ks'].iloc[j]:.3f})", fontsize=9)
        ax.set_xlabel("normal quantiles", fontsize=8)
        ax.set_ylabel("sample quantiles", fontsize=8)
    for ax in axes[len(order) :]:
        ax.set_axis_off()
    hidden = array.shape[1] - len(order)
    if hidden:
        fig.suptitle(f"QQ plots of the {len(order)} least Gaussian of {array.shape[1]} dims")
    fig.tight_layout()
    return fig


@torch.no_grad()
def gaussianized_figure(
    flow: Flow,
    x: Tensor,
    *,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    resolution: int = 200,
    max_points: int = 5000,
) -> Figure:
    r"""The MAF paper's figure 1 for a 2-D unconditional flow.

    Panels: the data, (the true density,) the model density :math:`p(x)` on a grid, and the
    Gaussianised data :math:`z = f(x)` with the 1-, 2- and 3-sigma circles of the standard
    normal; a good model makes the last panel a round Gaussian blob.

    Args:
        flow: An unconditional flow with 2 features.
        x: The data, with shape :math:`(N, 2)`.
        true_log_prob: The exact log-density, if known, drawn for comparison.
        resolution: The density grid's points per axis.
        max_points: The most points scattered per panel.

    Returns:
        A matplotlib figure.
    """
    from .plot import density_grid, new_figure

    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected 2-D data `x` with shape (N, 2), got {shape}")
    param = next(flow.parameters())
    x = x.detach().to("cpu", param.dtype)
    z = gaussianize(flow, x)
    xx, yy, grid = density_grid(x, resolution)
    with _evaluating(flow):
        density = log_prob(flow, grid).exp().view_as(xx)
    shown = x[:max_points].numpy()
    panels: list[tuple[str, object]] = [("data", shown)]
    if true_log_prob is not None:
        panels.append(("true density", true_log_prob(grid).exp().view_as(xx).numpy()))
    panels += [("model density", density.numpy()), ("Gaussianised data z = f(x)", None)]
    fig = new_figure(figsize=(4 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    extent = (float(xx.min()), float(xx.max()), float(yy.min()), float(yy.max()))
    for ax, (name, value) in zip(axes, panels, strict=True):
        ax.set_title(name)
        if value is None:
            zs = z[:max_points].numpy()
            ax.scatter(zs[:, 0], zs[:, 1], s=2, alpha=0.4)
            angle = np.linspace(0, 2 * np.pi, 200)
            for r in (1, 2, 3):
                ax.plot(r * np.cos(angle), r * np.sin(angle), "k--", lw=0.6)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
            ax.set_xlabel("$z_1$")
            ax.set_ylabel("$z_2$")
            continue
        if name == "data":
            ax.scatter(value[:, 0], value[:, 1], s=2, alpha=0.4)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
        else:
            ax.pcolormesh(xx.numpy(), yy.numpy(), value, shading="auto", cmap="viridis")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    fig.tight_layout()
    return fig


@torch.no_grad()
def pit(
    flow: Flow,
    y: Tensor,
    c: Tensor | None = None,
    *,
    samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The probability integral transform :math:`u_{nj} = F_j(y_{nj} \mid c_n)` of each target.

    :math:`F_j` is the model's conditional marginal CDF of target :math:`j`
    (:func:`arflows.flows.cdf`, in evaluation mode): exact for a flow of one target, else the
    share of ``samples`` draws per row below :math:`y_{nj}`. When the model is right,
    every column of :math:`u` is uniform on :math:`[0, 1]`. For targets on a grid, pass
    dequantized values (:math:`v + h\,U`): their PIT is uniform too.

    Args:
        flow: The flow, usually conditional.
        y: The held-out targets, with shape :math:`(N, D)`.
        c: Their contexts, with shape :math:`(N, C)`, or ``None``.
        samples: The draws per row when the CDF is not exact.
        generator: Seeds those draws.

    Returns:
        :math:`u`, with shape :math:`(N, D)`.
    """
    with _evaluating(flow):
        return cdf(flow, y, c, samples=samples, generator=generator)


@dataclass(frozen=True)
class Calibration:
    r"""The calibration of :math:`D` targets' predictive distributions, from their PIT values.

    Attributes:
        columns: The target names, :math:`D` of them.
        rows: The number :math:`N` of PIT values per target.
        edges: The histogram's bin edges on :math:`[0, 1]`, with shape :math:`(B + 1,)`.
        counts: The rows per bin, with shape :math:`(D, B)`; about :math:`N / B` each when
            calibrated. Too many at both ends: predictive distributions too narrow; a hump
            in the middle: too wide; a slope: biased.
        ks: The Kolmogorov--Smirnov distance of each target's :math:`u` from
            :math:`U[0, 1]`, with shape :math:`(D,)`.
        ks_pvalue: Its p-value, with shape :math:`(D,)`.
        levels: The nominal levels :math:`l` of the central intervals, with shape
            :math:`(L,)`.
        coverage: The share of rows with :math:`u` in :math:`[(1 - l) / 2, (1 + l) / 2]`, the
            coverage of the central :math:`l` prediction interval, with shape :math:`(D, L)`.
            Below :math:`l`: intervals too narrow (overconfident).

    :func:`arflows.plot.calibration_figure` draws it.
    """

    columns: list[str]
    rows: int
    edges: np.ndarray
    counts: np.ndarray
    ks: np.ndarray
    ks_pvalue: np.ndarray
    levels: np.ndarray
    coverage: np.ndarray

    @property
    def coverage_se(self) -> np.ndarray:
        r"""The standard error of a calibrated coverage, :math:`\sqrt{l (1 - l) / N}`, (L,)."""
        return np.sqrt(self.levels * (1 - self.levels) / max(self.rows, 1))

    def table(self) -> pandas.DataFrame:
        """One row per target: ``ks``, ``ks_pvalue`` and ``coverage_<level>`` per level."""
        import pandas

        frame = pandas.DataFrame(
            {"ks": self.ks, "ks_pvalue": self.ks_pvalue},
            index=pandas.Index(self.columns, name="column"),
        )
        for k, level in enumerate(self.levels):
            frame[f"coverage_{level:g}"] = self.coverage[:, k]
        return frame

    def to_dict(self) -> dict:
        """The results as JSON-ready lists, by target name."""
        return {
            "rows": self.rows,
            "levels": self.levels.tolist(),
            "coverage_se": self.coverage_se.tolist(),
            "edges": self.edges.tolist(),
            "columns": {
                name: {
                    "ks": float(self.ks[j]),
                    "ks_pvalue": float(self.ks_pvalue[j]),
                    "coverage": self.coverage[j].tolist(),
                    "histogram": self.counts[j].tolist(),
                }
                for j, name in enumerate(self.columns)
            },
        }


def calibration(
    u: Tensor | np.ndarray,
    columns: Sequence[str] | None = None,
    *,
    levels: Sequence[float] = LEVELS,
    bins: int = 10,
) -> Calibration:
    r"""Histogram, uniformity test and interval coverage of PIT values, target by target.

    Args:
        u: The PIT values :func:`pit` returns, with shape :math:`(N, D)`, in :math:`[0, 1]`.
        columns: A name per target; defaults to ``z0, z1, ...``.
        levels: The nominal levels of the central intervals, each in :math:`(0, 1)`.
        bins: The histogram's bins :math:`B`.

    Returns:
        The :class:`Calibration`.

    Raises:
        ValueError: For ``u`` of the wrong shape or outside :math:`[0, 1]`, levels outside
            :math:`(0, 1)` or ``bins < 1``.

    Example:
        >>> u = torch.rand(2000, 1, dtype=torch.float64)
        >>> result = calibration(u, ["y"])
        >>> result.counts.shape, bool(abs(result.coverage[0, 2] - 0.9) < 0.05)
        ((1, 10), True)
    """
    from scipy import stats

    array = _as_matrix("u", u)
    if array.min() < 0 or array.max() > 1:
        raise ValueError("expected PIT values `u` in [0, 1]")
    level = np.asarray(levels, dtype=float)
    if level.ndim != 1 or not len(level) or not ((level > 0) & (level < 1)).all():
        raise ValueError(f"expected `levels` strictly between 0 and 1, got {list(levels)}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"expected an integer `bins >= 1`, got {bins!r}")
    names = _names(columns, array.shape[1])
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.stack([np.histogram(col, bins=edges)[0] for col in array.T])
    ks = [stats.kstest(col, "uniform") for col in array.T]
    low, high = (1 - level) / 2, (1 + level) / 2
    inside = (array[:, :, None] >= low) & (array[:, :, None] <= high)  # (N, D, L)
    return Calibration(
        columns=names,
        rows=array.shape[0],
        edges=edges,
        counts=counts,
        ks=np.array([float(r.statistic) for r in ks]),
        ks_pvalue=np.array([float(r.pvalue) for r in ks]),
        levels=level,
        coverage=inside.mean(0),
    )
