r"""Monotone rational-quadratic splines with linear tails (neural spline flows)."""

from __future__ import annotations

__all__ = ["MonotonicRQSTransform"]

import math

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import constraints

from ..checks import check_finite_positive, check_int
from .base import Transform

# Smallest bin width, bin height and knot derivative, so that no bin collapses and the map
# stays strictly increasing with a bounded inverse slope.
MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
# MIN_DERIVATIVE + softplus(u + _UNIT_SHIFT) = 1 at u = 0: zero parameters give unit slopes.
_UNIT_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))


def _last_max(t: Tensor) -> Tensor:
    """The maximum over the last dimension, kept: (*, K) -> (*, 1).

    By halves (``torch.maximum`` of the two halves, K/2 wide, then K/4, ...): on a short last
    dimension of a strided tensor (a MADE's outputs) that is faster than ``amax``'s reduction
    kernel, with the same value.
    """
    while t.shape[-1] > 1:
        half = t.shape[-1] // 2
        top = torch.maximum(t[..., :half], t[..., half : 2 * half])
        t = top if t.shape[-1] % 2 == 0 else torch.cat((top, t[..., 2 * half :]), dim=-1)
    return t


def _cumulative(unnormalized: Tensor) -> Tensor:
    """Unnormalised cumulative bin sizes, without the leading zero: (*, K) -> (*, K)."""
    # softmax by hand (torch's CPU kernel is slow on a short last dim) and unnormalised: the
    # division by the total is done after the gather, on K times fewer values.
    e = (unnormalized - _last_max(unnormalized)).exp()
    return torch.cumsum(e, dim=-1)


def _count_below(knots: Tensor, u: Tensor) -> Tensor:
    """How many of the ``knots`` (*, J) lie strictly below ``u`` (*, 1): int64 (*, 1)."""
    if knots.shape[-1] > 16 or knots.numel() < 2**16:
        return (u > knots).sum(dim=-1, keepdim=True)
    # Many rows and a few knots: one comparison each, added in place (the sum of a large
    # (*, J) boolean tensor first converts all of it to int64, which costs more).
    count = (u > knots[..., :1]).long()
    for j in range(1, knots.shape[-1]):
        count += u > knots[..., j : j + 1]
    return count


def _edges(table: Tensor, k: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """``table[k - 1]`` (0 where ``k == 0``) and ``table[index[..., 1]]``, in one gather.

    Bin ``k``'s two edges from a table of the edges after the first (the cumulative sums, or
    the inner knots' derivatives), with ``index`` holding ``max(k - 1, 0)`` and the upper
    index: one gather (one scatter backward) and no padded copy of the table. (*, 1) each.
    """
    lo, hi = table.gather(-1, index).split(1, dim=-1)
    return torch.where(k > 0, lo, 0), hi


class MonotonicRQSTransform(Transform):
    r"""Monotone rational-quadratic spline on :math:`[-B, B]`, the identity outside.

    :math:`K` bins with knots :math:`(x_k, y_k)` and derivatives :math:`\delta_k` at the knots
    (:math:`\delta_0 = \delta_K = 1`, matching the linear tails). In bin :math:`k`, with
    :math:`w = x_{k+1} - x_k`, :math:`h = y_{k+1} - y_k`, :math:`s = h / w` and
    :math:`\xi = (x - x_k) / w`,

    .. math::
        y = y_k + \frac{h \left[s \xi^2 + \delta_k \xi (1 - \xi)\right]}
                       {s + (\delta_{k+1} + \delta_k - 2 s)\, \xi (1 - \xi)}, \qquad
        \frac{dy}{dx} = \frac{s^2 \left[\delta_{k+1} \xi^2 + 2 s \xi (1 - \xi)
                        + \delta_k (1 - \xi)^2\right]}
                       {\left[s + (\delta_{k+1} + \delta_k - 2 s)\, \xi (1 - \xi)\right]^2}.

    The inverse solves a quadratic for :math:`\xi` in its cancellation-free form. Widths and
    heights are a softmax of the unconstrained parameters (each bin at least ``1e-3`` of the
    interval), derivatives a shifted softplus (at least ``1e-3``), so all-zero parameters give
    equal bins with unit derivatives: the identity. Inputs are clamped to :math:`[-B, B]`
    before the spline arithmetic, so values and gradients stay finite in the tails.

    Args:
        widths: The unconstrained bin widths, with shape :math:`(*, K)`.
        heights: The unconstrained bin heights, with shape :math:`(*, K)`.
        derivatives: The unconstrained inner-knot derivatives, with shape :math:`(*, K - 1)`.
        bound: The half-width :math:`B` of the spline's interval.
        bins: The number of bins :math:`K`, if given checked against the parameters.

    References:
        Neural Spline Flows (Durkan et al., 2019)
        https://arxiv.org/abs/1906.04032

    Example:
        >>> t = MonotonicRQSTransform(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 7))
        >>> x = torch.randn(5)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(
        self,
        widths: Tensor,
        heights: Tensor,
        derivatives: Tensor,
        bound: float = 5.0,
        bins: int | None = None,
    ):
        super().__init__()
        check_finite_positive("bound", bound)  # an infinite bound gives NaN knots
        k = widths.shape[-1]
        if heights.shape[-1] != k or derivatives.shape[-1] != k - 1 or (bins not in (None, k)):
            raise ValueError(
                f"expected widths and heights (*, K) and derivatives (*, K - 1) with "
                f"K = {bins or k}, got {tuple(widths.shape)}, {tuple(heights.shape)} and "
                f"{tuple(derivatives.shape)}"
            )
        self.bound = float(bound)
        self.widths, self.heights, self.derivatives = widths, heights, derivatives

    @staticmethod
    def param_shapes(bins: int = 8, bound: float = 5.0) -> tuple[Size, ...]:
        """The shape of each parameter per feature: widths, heights, inner derivatives."""
        check_int("bins", bins, 2)
        check_finite_positive("bound", bound)
        return Size((bins,)), Size((bins,)), Size((bins - 1,))

    def _bin(self, v: Tensor, inverse: bool) -> tuple[Tensor, ...]:
        r"""The bin holding each clamped value: its knots, sizes and end derivatives.

        Knot :math:`j` of :math:`K` lies at :math:`B (2 p_j - 1)` with
        :math:`p_j = m j + (1 - m K)\, S_j / S_K`, :math:`m` the smallest bin and :math:`S`
        the cumulative sums of the exponentiated parameters. Only the bin search touches every
        knot; the rest is computed after gathering the two knots of each value's bin.

        Returns:
            :math:`x_k`, the width, :math:`y_k`, the height, :math:`\delta_k` and
            :math:`\delta_{k+1}`, each with the batch shape; the bin is searched among the
            :math:`x` knots, or the :math:`y` knots with ``inverse``.
        """
        bins, bound = self.widths.shape[-1], self.bound
        search, other = (self.heights, self.widths) if inverse else (self.widths, self.heights)
        shape = torch.broadcast_shapes(v.shape, search.shape[:-1])

        def full(t: Tensor) -> Tensor:
            return t.expand(*shape, t.shape[-1])

        cum = full(_cumulative(search))  # (*, K), without the leading zero
        scale = (1 - MIN_BIN * bins) / cum[..., -1:]  # (*, 1)
        j = torch.arange(1, bins, dtype=v.dtype, device=v.device)
        inner = MIN_BIN * j + scale * cum[..., :-1]  # inner knots in [0, 1], (*, K - 1)
        k = _count_below(inner, ((v + bound) / (2 * bound)).expand(shape)[..., None])  # (*, 1)
        below = (k - 1).clamp(min=0)
        index = torch.cat((below, k), dim=-1)  # (*, 2): bin k's edges in the sums
        low = k.to(v.dtype) * MIN_BIN

        def knots(cum: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
            lo, hi = _edges(cum, k, index)
            start = bound * (2 * (low + scale * lo) - 1)
            return start[..., 0], (2 * bound * (MIN_BIN + scale * (hi - lo)))[..., 0]

        v_k, v_size = knots(cum, scale)
        cum = full(_cumulative(other))
        u_k, u_size = knots(cum, (1 - MIN_BIN * bins) / cum[..., -1:])
        # Unit derivatives at the outer knots: zero unconstrained values give exactly 1.
        index = torch.cat((below, k.clamp(max=bins - 2)), dim=-1)
        d0, d1 = _edges(full(self.derivatives), k, index)
        d = torch.cat((d0, torch.where(k < bins - 1, d1, 0)), dim=-1)
        d0, d1 = (MIN_DERIVATIVE + F.softplus(d + _UNIT_SHIFT)).unbind(-1)
        if inverse:
            return u_k, u_size, v_k, v_size, d0, d1
        return v_k, v_size, u_k, u_size, d0, d1

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inside = (x > -self.bound) & (x < self.bound)
        xc = x.clamp(-self.bound, self.bound)
        x_k, w, y_k, h, d0, d1 = self._bin(xc, inverse=False)
        s = h / w
        xi = ((xc - x_k) / w).clamp(0, 1)
        rest, xi2, s2 = 1 - xi, xi.square(), 2 * s
        xi1 = xi * rest
        denom = s + (d1 + d0 - s2) * xi1
        y = y_k + h * (s * xi2 + d0 * xi1) / denom
        slope = s.square() * (d1 * xi2 + s2 * xi1 + d0 * rest.square())
        ladj = torch.log(slope) - 2 * torch.log(denom)
        return torch.where(inside, y, x), torch.where(inside, ladj, 0)

    def _call(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        inside = (y > -self.bound) & (y < self.bound)
        yc = y.clamp(-self.bound, self.bound)
        x_k, w, y_k, h, d0, d1 = self._bin(yc, inverse=True)
        s = h / w
        dy = (yc - y_k).clamp(min=0)
        gap = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * gap
        b = h * d0 - dy * gap
        c = -s * dy
        root = (b.square() - 4 * a * c).clamp(min=0).sqrt()
        # xi = 2c / (-b - root): c <= 0 and b + root > 0 for a monotone bin, so no cancellation.
        xi = (2 * c / (-b - root).clamp(max=-torch.finfo(y.dtype).tiny)).clamp(0, 1)
        return torch.where(inside, x_k + xi * w, y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._forward(x)[1]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._forward(x)
