r"""Support maps: bounded and half-bounded data columns to the real line."""

from __future__ import annotations

__all__ = ["SHARPNESS", "SupportTransform", "support_bounds"]

import math
from collections.abc import Sequence
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .base import InverseTransform, Transform

_LOG2 = math.log(2)
# Below this, t = g / s may have lost digits (or underflowed) and log t is taken from log g.
_TINY = 1e-20
SHARPNESS = 32.0
r"""The default :math:`\kappa` of bounded intervals (see :class:`SupportTransform`)."""
_MAX_SHARPNESS = 64.0  # e^kappa must stay finite in float32


def _log1mexp(t: Tensor, log_t: Tensor) -> Tensor:
    r""":math:`\log(1 - e^{-t})` for :math:`t \ge 0`, given :math:`\log t` for tiny :math:`t`.

    Accurate for small and large :math:`t`, and for :math:`t` that underflowed (a gap of a few
    subnormals divided by a scale), where :math:`\log(1 - e^{-t}) = \log t` to within
    :math:`t / 2`.
    """
    # Maechler's split: expm1 is accurate near 0, log1p far from it. Each branch gets inputs
    # on its own side only, so the branch not taken has a finite gradient (zeroed by where).
    small, large = t.clamp(min=_TINY, max=_LOG2), t.clamp(min=_LOG2)
    out = torch.where(t < _LOG2, torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))
    return torch.where(t < _TINY, log_t, out)


def _softplus(y: Tensor) -> Tensor:
    r""":math:`\log(1 + e^y)` without ``F.softplus``'s linear cut-off, so inverses are exact."""
    return y.clamp(min=0) + torch.log1p(torch.exp(-y.abs()))


class _Parts(NamedTuple):
    """Bounds and map constants in the data's dtype, with finite stand-ins where unused."""

    lower: Tensor  # the bounds as given (infinite where none)
    upper: Tensor
    both: Tensor  # column kinds: an interval, a lower bound only, an upper bound only
    low: Tensor
    up: Tensor
    a: Tensor  # the bounds, 0 where infinite
    b: Tensor
    width: Tensor  # b - a for intervals, else 1
    logit: Tensor  # intervals with kappa = 0
    kappa: Tensor  # kappa, 1 where unused
    knee: Tensor  # s = (b - a) / kappa, 1 where unused


class SupportTransform(Transform):
    r"""Elementwise map of bounded, half-bounded or unbounded columns to the real line.

    Column :math:`i` with bounds :math:`(a_i, b_i)` (entries :math:`\pm\infty` mean unbounded
    on that side) maps to :math:`\mathbb{R}` by

    .. math::
        y = \begin{cases}
            \tfrac{s}{2}\big(L(\tfrac{x - a}{s}) - L(\tfrac{b - x}{s})\big),
                \ s = \tfrac{b - a}{\kappa} & \text{(a, b) both finite,} \\
            L(x - a) & \text{(a, \infty): inverse softplus,} \\
            -L(b - x) & (-\infty, b)\text{: mirrored,} \\
            x & \text{unbounded: the identity,}
        \end{cases}

    with :math:`L(t) = \log(e^t - 1) = t + \log(1 - e^{-t})`, the inverse softplus: it is
    :math:`\log t` near 0 and the identity (up to :math:`e^{-t}`) far from it. So every bounded
    column is mapped by an affine map away from its bounds and by a logarithm within a *knee*
    of width :math:`s` of each bound: data that do not crowd a bound keep their shape, scale
    and tails, and the standardisation that follows stays meaningful. For an interval the knee
    is a fraction :math:`1/\kappa` of its width (``sharpness``, default :data:`SHARPNESS` =
    32): the map is the shift :math:`y = x - \tfrac{a + b}{2}` up to a relative
    :math:`e^{-(x - a)/s} + e^{-(b - x)/s}` in its slope (:math:`2 \times 10^{-7}` at the
    midpoint), unit slope like the half-bounded maps far from their bound, so data keep their
    scale whether or not a standardisation follows.
    The plain logit :math:`\log(x - a) - \log(b - x)` (:math:`\kappa = 0`, the limit of a knee
    wider than the interval) bends the whole interval instead: a density well inside it is
    warped, more near a bound than in the middle, and a conditional density whose location
    moves with the context (a posterior under a bounded prior) gets a spread that moves with
    it; both cost a fitted flow accuracy (``benchmarks/support.py``). It is kept for flows
    saved before the knee existed.

    The inverses are :math:`x = a + \operatorname{softplus}(y)`,
    :math:`x = b - \operatorname{softplus}(-y)` and, for an interval, the root of a quadratic
    in :math:`e^{(x - a)/s}`: with :math:`e = e^{-2 |y| / s}`, the gap to the nearer
    bound is

    .. math:: g = s \log\Big(1 + \frac{2 e (e^\kappa - 1)}
                  {1 + e + \sqrt{(1 + e)^2 + 4 e (e^\kappa - 1)}}\Big)

    (:math:`g = (b - a)\,\sigma(-|y|)` for the logit). The log-derivatives are

    .. math::
        \log \frac{\partial y}{\partial x} =
        \log \frac{1}{2}\Big(\frac{1}{1 - e^{-(x - a)/s}} + \frac{1}{1 - e^{-(b - x)/s}}\Big)
        \ \big(\log(b - a) - \log(x - a) - \log(b - x)\text{ for the logit}\big), \quad
        -\log(1 - e^{-t}), \quad 0.

    Every branch is computed from the gaps :math:`x - a` and :math:`b - x`, formed directly,
    so that neither overflows nor loses the small differences near a bound, in float32 and
    float64 (:math:`\log(1 - e^{-t})` is split between ``expm1`` and ``log1p``).

    **Samples stay strictly inside.** In the inverse the gap to the nearer bound is computed
    from :math:`y` in a form that keeps its digits when tiny, and clamped to at least the gap
    between that bound and the nearest representable number inside it (and to at least the
    smallest normal number, so gradients of :math:`\log` gap stay finite), so :math:`a < x < b`
    holds in the data's dtype for every finite :math:`y` (a plain :math:`a + (b - a)\,
    \sigma(y)` rounds onto the bound once the gap falls below half a unit in the last place:
    for :math:`(-3, 3)` in float32, a gap below :math:`1.2 \times 10^{-7}`). The inverse's
    log-determinant is minus the forward one at the point returned, from that point's own gaps
    to the bounds: where :math:`x` was clamped (or rounded), it is the log-determinant at the
    clamped point, the term ``log_prob`` of that point has (the other layers' terms of a
    sample's density are still those of the unclamped :math:`y`). A clamped point carries
    the mass of the gaps too small to represent, and its gradient with respect to :math:`y`
    is 0. Every point strictly inside has a finite :math:`y` and log-determinant, down to
    gaps of one subnormal.

    The knee leaves less room for gaps than the logit: :math:`y` reaches the smallest
    representable gap :math:`\delta` (an ulp of the bound) about
    :math:`\tfrac{s}{2} \log \tfrac{s}{\delta}` past the half-width (for :math:`\kappa = 32`,
    about half the half-width in float64 and a fifth in float32), where the logit has
    :math:`\log \tfrac{b - a}{\delta}` (16 in float32). A flow that puts mass beyond (one
    fitted to data crowding a bound, or an unstandardised one much wider than the interval)
    has those samples clamped: ``benchmarks/support.py`` counts them (0.1-0.2% of float32
    samples of flows fitted to data with mass at the bounds, 0 with the logit).

    A point outside the open support (or on a bound, or NaN) gets :math:`y = 0` and a
    log-determinant of :math:`-\infty`, so a flow gives it ``log_prob = -inf`` rather than NaN
    or a wrong finite value; gradients there are zero, not NaN.

    Args:
        lower: The lower bounds :math:`a`, with shape :math:`(D,)` (or broadcastable to the
            data); ``-inf`` for none.
        upper: The upper bounds :math:`b`, with the same shape; ``inf`` for none.
        sharpness: :math:`\kappa \in [0, 64]` of the interval columns (a number, or a tensor
            broadcastable to ``lower``): the interval's width in knees; 0 for the plain logit.
            Defaults to :data:`SHARPNESS`.

    Raises:
        ValueError: If the shapes differ or (for bounds on the CPU) some :math:`a \ge b`, a
            bound is NaN, or :math:`\kappa` is outside :math:`[0, 64]`.

    Example:
        >>> lower, upper = support_bounds([(0, 1), (0, None), None], 3)
        >>> t = SupportTransform(lower, upper)
        >>> x = torch.tensor([[0.5, 2.0, -3.0], [1.5, 2.0, -3.0]])
        >>> y, ladj = t.call_and_ladj(x)
        >>> torch.allclose(t.inv(y[0]), x[0]), ladj[1].tolist()[0]
        (True, -inf)
        >>> t.inv(torch.tensor([1e4, -1e4, 0.0])).tolist()[:2] == [1 - 2**-24, 2**-126]
        True
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(self, lower: Tensor, upper: Tensor, sharpness: float | Tensor | None = None):
        super().__init__()
        lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
        if lower.shape != upper.shape:
            raise ValueError(
                f"expected `lower` and `upper` with the same shape, got {tuple(lower.shape)} "
                f"and {tuple(upper.shape)}"
            )
        sharpness = torch.as_tensor(SHARPNESS if sharpness is None else sharpness)
        # Checking values synchronises with the device, and transforms are built on every flow
        # call; bounds built by `support_bounds` were checked there already.
        if lower.device.type == "cpu" and not bool((lower < upper).all()):
            bad = (~(lower < upper)).nonzero().flatten().tolist()
            raise ValueError(
                f"expected `lower < upper` (no NaN) in every column, got columns {bad} with "
                f"lower={lower.flatten()[bad].tolist()} and upper={upper.flatten()[bad].tolist()}"
            )
        if sharpness.device.type == "cpu" and not bool(
            ((sharpness >= 0) & (sharpness <= _MAX_SHARPNESS)).all()
        ):
            raise ValueError(
                f"expected `sharpness` in [0, {_MAX_SHARPNESS:g}], got {sharpness.tolist()}"
            )
        self.lower, self.upper, self.sharpness = lower, upper, sharpness

    def _parts(self, like: Tensor) -> _Parts:
        if like.shape[-1:] != self.lower.shape[-1:]:  # a silent broadcast would be wrong
            raise ValueError(
                f"expected data with {self.lower.shape[-1]} columns (one support entry each), "
                f"got shape {tuple(like.shape)}"
            )
        lower, upper = self.lower.to(like), self.upper.to(like)
        fa, fb = torch.isfinite(lower), torch.isfinite(upper)
        both, low, up = fa & fb, fa & ~fb, ~fa & fb
        a, b = torch.where(fa, lower, 0.0), torch.where(fb, upper, 0.0)
        width = torch.where(both, b - a, 1.0)
        sharpness = self.sharpness.to(like)
        logit = both & (sharpness == 0)
        kappa = torch.where(both & ~logit, sharpness, 1.0)
        return _Parts(lower, upper, both, low, up, a, b, width, logit, kappa, width / kappa)

    def _interval(
        self, p: Tensor, q: Tensor, log_p: Tensor, log_q: Tensor, parts: _Parts
    ) -> tuple[Tensor, Tensor]:
        r""":math:`y` and :math:`\log |\partial y / \partial x|` from the gaps to the bounds."""
        log_knee = parts.knee.log()
        lu = _log1mexp(p / parts.knee, log_p - log_knee)
        lv = _log1mexp(q / parts.knee, log_q - log_knee)
        # (p - q) / s = u - v, formed from the gaps: exact where u and v are large.
        z = (p - q) / parts.knee + (lu - lv)
        y = torch.where(parts.logit, log_p - log_q, parts.knee / 2 * z)
        ladj = torch.where(
            parts.logit,
            parts.width.log() - log_p - log_q,
            torch.logaddexp(-lu, -lv) - _LOG2,
        )
        return y, ladj

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = self._parts(x)
        lower, upper, both, low, up, a, b, width = parts[:8]
        inside = (x > lower) & (x < upper)
        # Every branch sees an interior point, so none makes a NaN that where() would pass to
        # the gradients: the midpoint, or one unit inside a single bound.
        inner = torch.where(
            both, a + width / 2, torch.where(low, a + 1, torch.where(up, b - 1, 0))
        )
        x = torch.where(inside, x, inner)
        p = torch.where(both, x - a, 1.0)
        q = torch.where(both, b - x, 1.0)
        y_both, ladj_both = self._interval(p, q, p.log(), q.log(), parts)
        t = torch.where(low, x - a, torch.where(up, b - x, 1.0))
        log1mexp = _log1mexp(t, t.log())
        y_half = t + log1mexp
        y = torch.where(both, y_both, torch.where(low, y_half, torch.where(up, -y_half, x)))
        ladj = torch.where(both, ladj_both, torch.where(low | up, -log1mexp, 0.0))
        minus_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
        return torch.where(inside, y, 0.0), torch.where(inside, ladj, minus_inf)

    def _call(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._forward(x)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._forward(x)[1]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`x`, strictly inside, and :math:`\log |\partial x / \partial y|` there."""
        x = self._inverse(y)
        # The log-determinant at the point returned, from its own gaps to the bounds: a
        # sample's density is the one log_prob gives it, also where x was clamped or rounded.
        return x, -self._forward(x)[1]

    def _inverse(self, y: Tensor) -> Tensor:
        """:math:`x`, strictly inside (sampling needs no log-determinant)."""
        parts = self._parts(y)
        lower, upper, both, low, up, a, b, width = parts[:8]
        # The smallest gaps that keep x strictly inside: a bound to its inner neighbour, and
        # at least the smallest normal number, so that 1 / gap (in gradients) stays finite.
        first, last = torch.nextafter(lower, upper), torch.nextafter(upper, lower)
        near_up = torch.where(both, y > 0, up)
        smallest = torch.where(near_up, b - last, first - a).clamp(min=torch.finfo(y.dtype).tiny)

        # The gap to the nearer bound, as exp(log g): its gradient is then g times that of
        # log g, which stays finite where 1 / g times d g / dy would overflow in between.
        m = -y.abs()
        h = 2 / parts.knee * m  # -|L(u) - L(v)|
        e, log_e1 = h.exp(), torch.expm1(parts.kappa).log()
        root = 1 + e + torch.sqrt((1 + e) ** 2 + 4 * (h + log_e1).exp())
        log_d = _LOG2 + h + log_e1 - root.log()  # d = e^u - 1 for the nearer gap u = g / s
        d = log_d.exp()
        log_u = torch.where(d < _TINY, log_d, torch.log(torch.log1p(d.clamp(min=_TINY))))
        log_g = torch.where(parts.logit, width.log() + F.logsigmoid(m), parts.knee.log() + log_u)
        g = torch.where(both, log_g.exp(), _softplus(torch.where(low, y, -y)))
        g = torch.where(g < smallest, smallest, g)
        x = torch.where(both | low | up, torch.where(near_up, b - g, a + g), y)
        # A last guard, also against a + g overflowing: the gaps above already keep x inside.
        # (Not min/max: at a tie they would halve the gradient of an x that needs no guard.)
        return torch.where(x < first, first, torch.where(x > last, last, x))

    def inverse_ladj(self, y: Tensor) -> Tensor:
        r""":math:`\log |\partial x / \partial y|` of the inverse (shape of y).

        Minus the forward log-determinant at :math:`x` = ``self.inv(y)``, the point returned.
        """
        return self._inverse_and_ladj(y)[1]

    @property
    def inv(self) -> Transform:
        """The inverse map; its log-determinant is minus the forward one at the point returned."""
        return _SupportInverse(self)

    def __repr__(self) -> str:
        return (
            f"SupportTransform(lower={self.lower.tolist()}, upper={self.upper.tolist()}, "
            f"sharpness={self.sharpness.tolist()})"
        )


class _SupportInverse(InverseTransform):
    """The inverse of a :class:`SupportTransform`, with its log-determinant in one pass."""

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
        return self.base.inverse_ladj(y)

    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.base._inverse_and_ladj(y)


def _bound(value: object, name: str, column: int) -> float:
    if value is None:
        return math.nan  # replaced by the caller with the open side's infinity
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"expected the {name} bound of support column {column} to be a number or None, "
            f"got {value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"expected a {name} bound for support column {column}, got NaN")
    return float(value)


def support_bounds(
    spec: Sequence[tuple[float | None, float | None] | None],
    features: int,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Parses a per-column support specification into lower and upper bound tensors.

    Args:
        spec: One entry per column: ``None`` (unbounded), ``(a, b)``, ``(a, None)`` or
            ``(None, b)``; infinite bounds mean the same as ``None``.
        features: The number of columns :math:`D` (the length ``spec`` must have).
        dtype: The dtype of the bounds. Defaults to torch's default dtype.

    Returns:
        The lower bounds (``-inf`` where none) and the upper bounds (``inf`` where none), each
        with shape :math:`(D,)`; ready for :class:`SupportTransform`.

    Raises:
        TypeError: If ``spec`` or an entry has the wrong type.
        ValueError: If the length is not :math:`D`, an entry is not a pair, or some
            :math:`a \ge b`.

    Example:
        >>> lower, upper = support_bounds([(0, 1), (0, None), None], 3)
        >>> lower.tolist(), upper.tolist()
        ([0.0, 0.0, -inf], [1.0, inf, inf])
    """
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise TypeError(
            f"expected `support` to be a list with one entry per column, got {type(spec).__name__}"
        )
    if len(spec) != features:
        raise ValueError(
            f"expected `support` to have one entry per column ({features}), got {len(spec)}"
        )
    lower, upper = [], []
    for i, entry in enumerate(spec):
        if entry is None:
            entry = (None, None)
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise ValueError(
                f"expected support column {i} to be None or a pair (lower, upper), got {entry!r}"
            )
        a, b = _bound(entry[0], "lower", i), _bound(entry[1], "upper", i)
        a = -math.inf if math.isnan(a) else a
        b = math.inf if math.isnan(b) else b
        if not a < b:
            raise ValueError(
                f"expected lower < upper for support column {i}, got ({entry[0]}, {entry[1]})"
            )
        lower.append(a)
        upper.append(b)
    dtype = dtype or torch.get_default_dtype()
    return torch.tensor(lower, dtype=dtype), torch.tensor(upper, dtype=dtype)
