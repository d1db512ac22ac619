r"""A safeguarded Newton root finder for increasing scalar functions, applied elementwise."""

from __future__ import annotations

__all__ = ["RootResult", "monotone_root"]

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import LongTensor, Tensor

from ..checks import check_at_least

Residual = Callable[[Tensor, LongTensor], tuple[Tensor, Tensor]]
"""``f(x, index) -> (f(x), f'(x))`` for the elements ``index`` of the flattened target."""


class RootResult(NamedTuple):
    r"""The result of :func:`monotone_root`, each field with the shape of the target :math:`y`.

    Attributes:
        x: The roots :math:`x` with :math:`f(x) \approx y`.
        iterations: The Newton or bisection iterations each element took (one evaluation of
            :math:`f` each), not counting the bracket checks.
        expansions: The times each element's bracket was widened.
        converged: Whether each element met its tolerance (``False`` only when ``max_iter``
            ran out or :math:`y` lies outside the range of :math:`f`).
    """

    x: Tensor
    iterations: LongTensor
    expansions: LongTensor
    converged: Tensor


def _per_element(value: float | Tensor | None, default: float, y: Tensor, name: str) -> Tensor:
    """A scalar or tensor option broadcast to ``y`` and flattened: (N,)."""
    if value is None:
        value = default
    if isinstance(value, Tensor):
        try:
            value = value.detach().to(y).expand(y.shape)
        except RuntimeError:
            raise ValueError(
                f"expected `{name}` to broadcast to the target's shape {tuple(y.shape)}, "
                f"got shape {tuple(value.shape)}"
            ) from None
        return value.reshape(-1).clone()
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected `{name}` to be a float or a tensor, got {type(value).__name__}")
    return torch.full((y.numel(),), float(value), dtype=y.dtype, device=y.device)


def monotone_root(
    f: Residual,
    y: Tensor,
    lower: float | Tensor | None = None,
    upper: float | Tensor | None = None,
    *,
    atol: float | Tensor | None = None,
    rtol: float | Tensor | None = None,
    max_iter: int = 100,
) -> RootResult:
    r"""Solves :math:`f(x) = y` elementwise for an increasing :math:`f`, by safeguarded Newton.

    1. **Bracket.** Each element starts from :math:`[l, u]` (``lower``, ``upper``). While
       :math:`f(l) > y` the bracket moves down (:math:`u \leftarrow l`,
       :math:`l \leftarrow l - w`), while :math:`f(u) < y` up, with a step :math:`w` that
       starts at the bracket's width (at least the tolerance) and doubles every time, so any
       root is bracketed after :math:`O(\log |x^*|)` expansions. A root beyond the largest
       finite float is never bracketed: the element stops at :math:`\pm` ``finfo.max``.
    2. **Refine.** From the secant point of the bracket, each iteration evaluates
       :math:`f(x), f'(x)`, shrinks the bracket to the side of :math:`x` holding the root, and
       takes the Newton step :math:`x - (f(x) - y) / f'(x)` if it lands strictly inside the
       bracket and is at most half the previous step (so the error at least halves every two
       iterations); otherwise it bisects. An element has converged once
       :math:`f(x) = y`, its last step is at most :math:`\tau = a + r |x|`, or its bracket is
       narrower than :math:`\tau` (per-element ``atol`` :math:`a`, ``rtol`` :math:`r`). Only
       the unconverged elements are evaluated (``f`` gets their indices), and the loop stops
       as soon as none is left.

    Guarantees: the result always lies in the final bracket, which always holds the root
    (when :math:`f` is continuous and increasing), so for finite ``y`` and finite bounds
    :math:`x` is finite, never NaN, even where :math:`f` or :math:`f'` is NaN, infinite or
    zero (bisection takes over). A bisection-terminated element is within :math:`\tau` of
    the root; a Newton-terminated one within about :math:`\tau^2 |f'' / f'|`. Gradients do not
    flow through the iterations: this solves the values; use the implicit function theorem
    for gradients (see :class:`~arflows.transforms.MonotonicSigmoidalTransform`).

    Args:
        f: A function ``(x, index) -> (value, derivative)`` evaluating :math:`f` and
            :math:`f'` at ``x`` for the elements ``index`` (a LongTensor of positions in the
            flattened ``y``); ``x``, ``index`` and both results have shape :math:`(M,)`.
        y: The targets, with any shape :math:`(*)`.
        lower: The initial lower bound :math:`l`, broadcast to ``y``. Defaults to -1.
        upper: The initial upper bound :math:`u`, broadcast to ``y``. Defaults to 1.
        atol: The absolute tolerance :math:`a`, a float or a tensor broadcast to ``y``.
            Defaults to :math:`\epsilon^{3/4}` of the dtype (:math:`1.8 \cdot 10^{-12}` in
            float64, :math:`6.5 \cdot 10^{-6}` in float32): Newton then ends within rounding.
        rtol: The relative tolerance :math:`r`, like ``atol``.
        max_iter: The most refining iterations per element.

    Returns:
        A :class:`RootResult` ``(x, iterations, expansions, converged)``, each with ``y``'s
        shape.

    Raises:
        TypeError: If ``y`` is not a floating-point tensor.
        ValueError: If ``max_iter < 1``, a tolerance is negative, or a bound is not finite.

    Example:
        >>> y = torch.tensor([-30.0, 0.5, 1e4], dtype=torch.float64)
        >>> root = monotone_root(lambda x, i: (torch.sinh(x), torch.cosh(x)), y)
        >>> torch.allclose(root.x, torch.asinh(y), rtol=1e-12), bool(root.converged.all())
        (True, True)
        >>> bool(root.iterations.max() < 10)
        True
    """
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise TypeError(f"expected `y` to be a floating-point tensor, got {y!r:.80}")
    check_at_least("max_iter", max_iter, 1)
    finfo = torch.finfo(y.dtype)
    default = finfo.eps**0.75
    with torch.no_grad():
        target = y.detach()
        atol_, rtol_ = (
            _per_element(atol, default, target, "atol"),
            _per_element(rtol, default, target, "rtol"),
        )
        if (atol_ < 0).any() or (rtol_ < 0).any():
            raise ValueError(f"expected tolerances >= 0, got atol={atol} and rtol={rtol}")
        lo = _per_element(lower, -1.0, target, "lower")
        hi = _per_element(upper, 1.0, target, "upper")
        if not (lo.isfinite().all() and hi.isfinite().all()):
            raise ValueError("expected finite `lower` and `upper` bounds, got inf or NaN")
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        target = target.reshape(-1)
        lo, hi, flo, fhi, expansions = _bracket(f, target, lo, hi, atol_, rtol_)
        x, iterations, converged = _refine(f, target, lo, hi, flo, fhi, atol_, rtol_, max_iter)
    shape = y.shape
    return RootResult(
        x.view(shape), iterations.view(shape), expansions.view(shape), converged.view(shape)
    )


def _bracket(
    f: Residual, y: Tensor, lo: Tensor, hi: Tensor, atol: Tensor, rtol: Tensor
) -> tuple[Tensor, ...]:
    """Widens each ``[lo, hi]`` geometrically until ``f(lo) <= y <= f(hi)``; all (N,)."""
    big = torch.finfo(y.dtype).max
    tol = atol + rtol * torch.maximum(lo.abs(), hi.abs())
    # Tolerance-sized first steps: a bound that misses by rounding only moves by rounding.
    width = torch.maximum(hi - lo, tol).clamp(min=torch.finfo(y.dtype).tiny)
    flo, fhi = torch.empty_like(y), torch.empty_like(y)
    expansions = torch.zeros(y.shape, dtype=torch.long, device=y.device)
    active = torch.arange(y.numel(), device=y.device)
    while active.numel():
        a_lo, a_hi, a_y = lo[active], hi[active], y[active]
        values, _ = f(torch.cat((a_lo, a_hi)), torch.cat((active, active)))
        v_lo, v_hi = values.chunk(2)
        flo[active], fhi[active] = v_lo, v_hi
        too_high = v_lo > a_y  # the root lies below lo, so lo is an upper bound
        too_low = (v_hi < a_y) & ~too_high
        # A root beyond the finite floats cannot be bracketed: stop at the largest ones.
        stuck = (too_high & (a_lo <= -big)) | (too_low & (a_hi >= big))
        w = width[active]
        lo[active] = torch.where(
            too_high, (a_lo - w).clamp(min=-big), torch.where(too_low, a_hi, a_lo)
        )
        hi[active] = torch.where(
            too_high, a_lo, torch.where(too_low, (a_hi + w).clamp(max=big), a_hi)
        )
        active = active[(too_high | too_low) & ~stuck]
        width[active] *= 2
        expansions[active] += 1
    return lo, hi, flo, fhi, expansions


def _refine(
    f: Residual,
    y: Tensor,
    lo: Tensor,
    hi: Tensor,
    flo: Tensor,
    fhi: Tensor,
    atol: Tensor,
    rtol: Tensor,
    max_iter: int,
) -> tuple[Tensor, LongTensor, Tensor]:
    """Newton steps inside each bracket, bisecting when a step is unsafe; all (N,)."""
    bracketed = (flo <= y) & (y <= fhi)
    # The secant point: exact for locally linear f (e.g. a flow's tails).
    t = ((y - flo) / (fhi - flo)).nan_to_num(0.5, 0.5, 0.5).clamp(0, 1)
    x = torch.where(flo == y, lo, torch.where(fhi == y, hi, lo + t * (hi - lo)))
    x = torch.where(bracketed, x, torch.where(flo > y, lo, hi))
    converged = bracketed & ((flo == y) | (fhi == y) | (hi - lo <= atol + rtol * x.abs()))
    iterations = torch.zeros(y.shape, dtype=torch.long, device=y.device)
    previous = hi - lo  # the step before last, for the halving test
    active = (bracketed & ~converged).nonzero().squeeze(-1)
    for _ in range(max_iter):
        if not active.numel():
            break
        a_x, a_lo, a_hi, a_y = x[active], lo[active], hi[active], y[active]
        value, slope = f(a_x, active)
        iterations[active] += 1
        gap = value - a_y
        a_lo = torch.where(gap < 0, a_x, a_lo)
        a_hi = torch.where(gap > 0, a_x, a_hi)
        newton = a_x - gap / slope
        tol = atol[active] + rtol[active] * a_x.abs()
        # A step below the tolerance may round onto a bracket end: take it, clamped, anyway.
        close = newton.isfinite() & ((newton - a_x).abs() <= tol)
        safe = (
            newton.isfinite()
            & (newton > a_lo)
            & (newton < a_hi)
            & (2 * (newton - a_x).abs() <= previous[active].abs())
        )
        x_new = torch.where(safe | close, newton, 0.5 * (a_lo + a_hi))
        x_new = torch.where(gap == 0, a_x, torch.minimum(torch.maximum(x_new, a_lo), a_hi))
        step = x_new - a_x
        done = (gap == 0) | (step.abs() <= tol) | (a_hi - a_lo <= tol)
        x[active], lo[active], hi[active], previous[active] = x_new, a_lo, a_hi, step
        converged[active] = done
        active = active[~done]
    return x, iterations, converged
