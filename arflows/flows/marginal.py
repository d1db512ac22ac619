r"""Per-column monotone maps, initialised to Gaussianise each column's marginal."""

from __future__ import annotations

__all__ = ["MarginalSpline", "spline_params"]

import math

import torch
from torch import Tensor, nn
from torch.special import ndtr, ndtri

from ..nn.made import check_int
from ..transforms import ComposedTransform, MonotonicRQSTransform
from ..transforms.spline import MIN_BIN, MIN_DERIVATIVE
from .lazy import LazyTransform
from .standardize import StandardizeTransform

# The spline's unit-slope shift: MIN_DERIVATIVE + softplus(0 + shift) = 1.
_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))
# The knots' tails: the outermost inner knots sit at the normal quantiles of the
# (1 - _TAIL_ROWS / N) probabilities, at most _TAIL_SHARE of the bound.
_TAIL_ROWS = 5
_TAIL_SHARE = 0.75
# The outermost knots span at most this share of the spline's interval.
_SPAN = 0.8


class MarginalSpline(LazyTransform):
    r"""Elementwise monotone map :math:`y_i = h_i((x_i - a_i) / r_i)`, one spline per column.

    :math:`h_i` is a :class:`~arflows.transforms.MonotonicRQSTransform` of ``bins`` bins on
    :math:`[-B, B]` (the identity outside) with free parameters per column, and
    :math:`(a_i, r_i)` a fixed shift and scale (buffers, :math:`r_i \ge 1`) that
    :meth:`initialize_` sets so the column's bulk fits inside the spline's interval. The
    context is ignored.

    .. math:: \log |\det J| = \sum_i \log h_i'\!\left(\tfrac{x_i - a_i}{r_i}\right) - \log r_i.

    At construction the parameters are zero, :math:`a = 0` and :math:`r = 1`: the identity.
    :meth:`initialize_` sets each column's map to about
    :math:`\Phi^{-1}(\hat F_i(x_i))`, with :math:`\hat F_i` the column's empirical
    distribution (Gaussianising the marginals); a flow's layers then start from columns that
    are each close to normal.

    Args:
        features: The number of features :math:`D`.
        bins: The number of spline bins :math:`K` per column.
        bound: The half-width :math:`B` of the splines' interval.

    Example:
        >>> layer = MarginalSpline(2)
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(layer()(x), x, atol=1e-6)   # the identity when built
        True
    """

    def __init__(self, features: int, bins: int = 16, bound: float = 5.0):
        super().__init__()
        check_int("features", features, 1)
        widths, heights, derivatives = MonotonicRQSTransform.param_shapes(bins, bound)
        self.bins, self.bound = bins, float(bound)
        self.widths = nn.Parameter(torch.zeros(features, *widths))
        self.heights = nn.Parameter(torch.zeros(features, *heights))
        self.derivatives = nn.Parameter(torch.zeros(features, *derivatives))
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, c: Tensor | None = None) -> ComposedTransform:  # noqa: D102
        spline = MonotonicRQSTransform(self.widths, self.heights, self.derivatives, self.bound)
        return ComposedTransform(StandardizeTransform(self.loc, self.scale), spline)

    @torch.no_grad()
    def initialize_(self, x: Tensor) -> None:
        r"""Sets each column's map to about :math:`\Phi^{-1}(\hat F_i(x_i))` on rows ``x``.

        The knots sit at the column's empirical quantiles of equally spaced normal quantiles
        (the outermost at the :math:`1 - 5/N` probability), mapped to those normal quantiles;
        the knot derivatives are harmonic means of the neighbouring slopes. Tied values
        (columns with few distinct values) share one knot, at the mean of their normal
        quantiles, so no bin has zero width or infinite slope; the bins left over split the
        widest bins linearly. A constant column gets the identity.

        Args:
            x: The rows the map receives, with shape :math:`(N, D)`, finite.

        Raises:
            ValueError: For rows of another width, no rows, or values that are not finite.
        """
        d = self.loc.numel()
        if x.dim() != 2 or x.shape[1] != d or len(x) < 1:
            raise ValueError(f"expected rows with shape (N >= 1, {d}), got {tuple(x.shape)}")
        if not bool(x.isfinite().all()):
            raise ValueError("expected finite rows to initialise the marginal maps on")
        values = x.detach().to(torch.float64).sort(0).values
        for i in range(d):
            loc, scale, params = _column_spline(values[:, i], self.bins, self.bound)
            self.loc[i], self.scale[i] = loc, scale
            for parameter, value in zip(
                (self.widths, self.heights, self.derivatives), params, strict=True
            ):
                parameter[i] = value

    def extra_repr(self) -> str:  # noqa: D102
        return f"features={self.loc.numel()}, bins={self.bins}, bound={self.bound}"


def _column_spline(v: Tensor, bins: int, bound: float) -> tuple[float, float, list[Tensor]]:
    """Shift, scale and unconstrained spline parameters for one sorted column ``v``."""
    n = len(v)
    if v[0] == v[-1]:  # a constant column: nothing to Gaussianise
        zero = v.new_zeros(bins)
        return 0.0, 1.0, [zero, zero, zero[1:]]
    tail = ndtri(torch.tensor(max(1 - _TAIL_ROWS / n, 0.75), dtype=v.dtype)).item()
    targets = torch.linspace(-1, 1, bins - 1, dtype=v.dtype) * min(tail, _TAIL_SHARE * bound)
    # Order statistics, not interpolations: a tied column gets knots only at its values.
    rank = (ndtr(targets) * n - 0.5).round().long().clamp(0, n - 1)
    xs = v[rank]
    loc = 0.5 * (xs[0] + xs[-1]).item()
    scale = max(1.0, 0.5 * (xs[-1] - xs[0]).item() / (_SPAN * bound))
    reach = max(loc - v[0].item(), v[-1].item() - loc) / (0.95 * bound)
    scale = max(scale, min(reach, 2 * scale))
    u = (xs - loc) / scale
    # Merge knots closer than 1.5 of the narrowest bin the spline allows into their
    # (count-weighted) mean, pair by pair: tied values become one knot in the middle of
    # their normal quantiles.
    gap = 1.5 * MIN_BIN * 2 * bound
    knots = [[a, b, 1.0] for a, b in zip(u.tolist(), targets.tolist(), strict=True)]
    while len(knots) > 1:
        j = min(range(len(knots) - 1), key=lambda j: knots[j + 1][0] - knots[j][0])
        if knots[j + 1][0] - knots[j][0] >= gap:
            break
        (u0, y0, n0), (u1, y1, n1) = knots[j], knots.pop(j + 1)
        knots[j] = [(n0 * u0 + n1 * u1) / (n0 + n1), (n0 * y0 + n1 * y1) / (n0 + n1), n0 + n1]
    knots_u = torch.tensor([-bound, *(k[0] for k in knots), bound], dtype=v.dtype)
    knots_y = torch.tensor([-bound, *(k[1] for k in knots), bound], dtype=v.dtype)
    while len(knots_u) < bins + 1:  # split the widest bin, linearly
        j = int(knots_u.diff().argmax())
        knots_u = torch.cat((knots_u[: j + 1], knots_u[j : j + 2].mean(0, True), knots_u[j + 1 :]))
        knots_y = torch.cat((knots_y[: j + 1], knots_y[j : j + 2].mean(0, True), knots_y[j + 1 :]))
    slope = knots_y.diff() / knots_u.diff()
    inner = 2 * slope[:-1] * slope[1:] / (slope[:-1] + slope[1:])
    inner = inner.clamp(2 * MIN_DERIVATIVE, 1 / MIN_DERIVATIVE)
    return loc, scale, spline_params(knots_u, knots_y, inner, bound)


def spline_params(
    knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, bound: float
) -> list[Tensor]:
    r"""Unconstrained :class:`~arflows.transforms.MonotonicRQSTransform` parameters from knots.

    The inverse of the spline's constraints: its widths and heights are
    :math:`m + (1 - K m)\,\mathrm{softmax}(\cdot)` of the interval :math:`2B` (:math:`m` the
    smallest bin share), its inner derivatives :math:`\delta_{min} + \mathrm{softplus}(\cdot +
    s)` with :math:`s` the shift that makes zero a unit slope.

    Args:
        knots_x: The knots' inputs, with shape :math:`(K + 1,)`, increasing from :math:`-B` to
            :math:`B`, each bin wider than the smallest the spline allows.
        knots_y: The knots' outputs, likewise.
        derivatives: The slopes at the :math:`K - 1` inner knots, above the smallest allowed.
        bound: The spline's half-width :math:`B`.

    Returns:
        The unconstrained widths :math:`(K,)`, heights :math:`(K,)` and derivatives
        :math:`(K - 1,)`.
    """
    params = []
    for size in (knots_x.diff(), knots_y.diff()):
        logits = (size / (2 * bound) - MIN_BIN).log()
        params.append(logits - logits.mean())
    d = derivatives - MIN_DERIVATIVE
    params.append(d + torch.log(-torch.expm1(-d)) - _SHIFT)  # softplus^-1, stable for large d
    return params
