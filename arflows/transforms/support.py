r"""Support maps: bounded and half-bounded data columns to the real line."""

from __future__ import annotations

__all__ = ["SupportTransform", "support_bounds"]

import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .base import InverseTransform, Transform

_LOG2 = math.log(2)


def _log1mexp(t: Tensor) -> Tensor:
    r""":math:`\log(1 - e^{-t})` for :math:`t > 0`, accurate for small and large :math:`t`."""
    # Maechler's split: expm1 is accurate near 0, log1p far from it. Each branch gets inputs
    # on its own side only, so the branch not taken has a finite gradient (zeroed by where).
    small, large = t.clamp(max=_LOG2), t.clamp(min=_LOG2)
    return torch.where(t < _LOG2, torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))


def _softplus(y: Tensor) -> Tensor:
    r""":math:`\log(1 + e^y)` without ``F.softplus``'s linear cut-off, so inverses are exact."""
    return y.clamp(min=0) + torch.log1p(torch.exp(-y.abs()))


class SupportTransform(Transform):
    r"""Elementwise map of bounded, half-bounded or unbounded columns to the real line.

    Column :math:`i` with bounds :math:`(a_i, b_i)` (entries :math:`\pm\infty` mean unbounded
    on that side) maps to :math:`\mathbb{R}` by

    .. math::
        y = \begin{cases}
            \log(x - a) - \log(b - x) & \text{(a, b) both finite: a scaled logit,} \\
            t + \log(1 - e^{-t}),\ t = x - a & \text{(a, \infty): inverse softplus,} \\
            -\big(t + \log(1 - e^{-t})\big),\ t = b - x & (-\infty, b)\text{: mirrored,} \\
            x & \text{unbounded: the identity,}
        \end{cases}

    with inverses :math:`x = a + (b - a)\,\sigma(y)`, :math:`x = a + \operatorname{softplus}(y)`,
    :math:`x = b - \operatorname{softplus}(-y)`, and log-derivatives

    .. math::
        \log \frac{\partial y}{\partial x} = \log(b - a) - \log(x - a) - \log(b - x), \quad
        -\log(1 - e^{-t}), \quad -\log(1 - e^{-t}), \quad 0.

    For half-bounded columns the inverse softplus :math:`\log(e^{t} - 1)` is chosen over
    :math:`\log t`: it is :math:`\log t` near the bound but the identity (up to
    :math:`e^{-t}`) far from it, so positive data that are not crowded at the bound keep
    their scale and tails, and the standardisation that follows stays meaningful. Every branch
    is computed in a form that neither overflows nor loses the small differences near a bound
    (:math:`x - a` and :math:`b - x` are formed directly, :math:`\log(1 - e^{-t})` is split
    between ``expm1`` and ``log1p``), in float32 and float64; the inverse's log-determinant is
    computed from :math:`y`, so it stays exact where :math:`x` rounds onto a bound.

    A point outside the open support (or on a bound, or NaN) gets :math:`y = 0` and a
    log-determinant of :math:`-\infty`, so a flow gives it ``log_prob = -inf`` rather than NaN
    or a wrong finite value; gradients there are zero, not NaN.

    Args:
        lower: The lower bounds :math:`a`, with shape :math:`(D,)` (or broadcastable to the
            data); ``-inf`` for none.
        upper: The upper bounds :math:`b`, with the same shape; ``inf`` for none.

    Raises:
        ValueError: If the shapes differ or (for bounds on the CPU) some :math:`a \ge b` or a
            bound is NaN.

    Example:
        >>> lower, upper = support_bounds([(0, 1), (0, None), None], 3)
        >>> t = SupportTransform(lower, upper)
        >>> x = torch.tensor([[0.5, 2.0, -3.0], [1.5, 2.0, -3.0]])
        >>> y, ladj = t.call_and_ladj(x)
        >>> torch.allclose(t.inv(y[0]), x[0]), ladj[1].tolist()[0]
        (True, -inf)
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(self, lower: Tensor, upper: Tensor):
        super().__init__()
        lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
        if lower.shape != upper.shape:
            raise ValueError(
                f"expected `lower` and `upper` with the same shape, got {tuple(lower.shape)} "
                f"and {tuple(upper.shape)}"
            )
        # Checking values synchronises with the device, and transforms are built on every flow
        # call; bounds built by `support_bounds` were checked there already.
        if lower.device.type == "cpu" and not bool((lower < upper).all()):
            bad = (~(lower < upper)).nonzero().flatten().tolist()
            raise ValueError(
                f"expected `lower < upper` (no NaN) in every column, got columns {bad} with "
                f"lower={lower.flatten()[bad].tolist()} and upper={upper.flatten()[bad].tolist()}"
            )
        self.lower, self.upper = lower, upper

    def _parts(self, like: Tensor) -> tuple[Tensor, ...]:
        """Bounds in ``like``'s dtype, the column kinds, and finite stand-ins for the bounds."""
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
        return lower, upper, both, low, up, a, b, width

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lower, upper, both, low, up, a, b, width = self._parts(x)
        inside = (x > lower) & (x < upper)
        # Every branch sees an interior point, so none makes a NaN that where() would pass to
        # the gradients: the midpoint, or one unit inside a single bound.
        inner = torch.where(
            both, a + width / 2, torch.where(low, a + 1, torch.where(up, b - 1, 0))
        )
        x = torch.where(inside, x, inner)
        p = torch.where(both, x - a, 1.0)
        q = torch.where(both, b - x, 1.0)
        t = torch.where(low, x - a, torch.where(up, b - x, 1.0))
        log1mexp = _log1mexp(t)
        y_half = t + log1mexp
        y = torch.where(
            both, p.log() - q.log(), torch.where(low, y_half, torch.where(up, -y_half, x))
        )
        ladj = torch.where(
            both, width.log() - p.log() - q.log(), torch.where(low | up, -log1mexp, 0.0)
        )
        minus_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
        return torch.where(inside, y, 0.0), torch.where(inside, ladj, minus_inf)

    def _call(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._forward(x)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._forward(x)[1]

    def _inverse(self, y: Tensor) -> Tensor:
        _, _, both, low, up, a, b, width = self._parts(y)
        # Near the upper bound b - (b - a) sigma(-y) keeps the digits a + (b - a) sigma(y) loses.
        x_both = torch.where(y > 0, b - width * torch.sigmoid(-y), a + width * torch.sigmoid(y))
        x_low, x_up = a + _softplus(y), b - _softplus(-y)
        return torch.where(both, x_both, torch.where(low, x_low, torch.where(up, x_up, y)))

    def inverse_ladj(self, y: Tensor) -> Tensor:
        r""":math:`\log |\partial x / \partial y|` of the inverse, from :math:`y` (shape of y).

        .. math:: \log(b - a) + \log\sigma(y) + \log\sigma(-y), \quad \log\sigma(y), \quad
                  \log\sigma(-y), \quad 0.
        """
        _, _, both, low, up, _, _, width = self._parts(y)
        log_sig, log_sig_neg = F.logsigmoid(y), F.logsigmoid(-y)
        return torch.where(
            both,
            width.log() + log_sig + log_sig_neg,
            torch.where(low, log_sig, torch.where(up, log_sig_neg, 0.0)),
        )

    @property
    def inv(self) -> Transform:
        """The inverse map, whose log-determinant is computed from its input :math:`y`."""
        return _SupportInverse(self)

    def __repr__(self) -> str:
        return f"SupportTransform(lower={self.lower.tolist()}, upper={self.upper.tolist()})"


class _SupportInverse(InverseTransform):
    """The inverse of a :class:`SupportTransform`, with its log-determinant taken from y."""

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
        return self.base.inverse_ladj(y)

    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.base._inverse(y), self.base.inverse_ladj(y)


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
