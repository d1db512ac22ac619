r"""Autoregressive transforms: one parallel pass forward, a sequential inverse."""

from __future__ import annotations

__all__ = ["AutoregressiveTransform"]

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import constraints

from ..checks import check_at_least
from .base import Transform


class AutoregressiveTransform(Transform):
    r"""Autoregressive map :math:`y_i = h(x_i; \theta_i(x_{<i}))`.

    ``meta(x)`` returns the elementwise monotone map :math:`h(\cdot; \theta(x))` whose
    parameters for feature :math:`i` depend on :math:`x_{<i}` only. Then

    .. math:: \log |\det J(x)| = \sum_i \log h'(x_i; \theta_i(x_{<i})).

    The forward map is one call of ``meta``. The inverse is either the exact ``inverse`` given
    by the caller (such as a one-sweep MADE inverse) or the fixed-point iteration
    :math:`x^{(k+1)} = h^{-1}(y; \theta(x^{(k)}))` from :math:`x^{(0)} = 0`, which fixes one
    more feature per pass and is exact after :math:`D` passes. Without gradients the
    iteration stops early once an iterate repeats exactly (it is then the fixed point); with
    gradients it runs all ``passes`` so that they are exact. Each inverse records the number
    of ``meta`` calls it made in :attr:`passes_used`.

    Args:
        meta: A function :math:`x \mapsto h(\cdot; \theta(x))` returning an elementwise
            transform; :math:`x` has shape :math:`(*, D)`.
        passes: The number of fixed-point passes of the inverse; defaults to :math:`D`. With
            fewer passes than the length of the longest dependency chain the inverse is
            inexact (for coupling, 2 passes suffice).
        inverse: An optional exact inverse :math:`y \mapsto x`, used instead of the passes.

    Attributes:
        passes_used: The number of fixed-point passes (``meta`` calls) the last inverse made,
            the confirming pass of an early exit included; ``None`` before any fixed-point
            inverse, and when ``inverse`` is given. A diagnostic for benchmarks and tests.

    Example:
        >>> from arflows.transforms import MonotonicAffineTransform
        >>> def meta(x):  # theta_i depends on x_{i-1}
        ...     prev = torch.nn.functional.pad(x[..., :-1], (1, 0))
        ...     return MonotonicAffineTransform(prev, torch.tanh(prev))
        >>> t = AutoregressiveTransform(meta)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    sign = 1

    def __init__(
        self,
        meta: Callable[[Tensor], Transform],
        passes: int | None = None,
        inverse: Callable[[Tensor], Tensor] | None = None,
    ):
        super().__init__()
        if passes is not None:
            check_at_least("passes", passes, 1)
        self.meta, self.passes, self.inverse = meta, passes, inverse
        self.passes_used: int | None = None

    def _call(self, x: Tensor) -> Tensor:
        return self.meta(x)(x)

    def _inverse(self, y: Tensor) -> Tensor:
        if self.inverse is not None:
            return self.inverse(y)
        passes = y.shape[-1] if self.passes is None else self.passes
        exit_early = not torch.is_grad_enabled()
        x = torch.zeros_like(y)
        self.passes_used = 0
        for _ in range(passes):
            x_next = self.meta(x).inv(y)
            self.passes_used += 1
            if exit_early and torch.equal(x_next, x):
                break
            x = x_next
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self.meta(x).log_abs_det_jacobian(x, y).sum(dim=-1)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        y, ladj = self.meta(x).call_and_ladj(x)
        return y, ladj.sum(dim=-1)

    def __repr__(self) -> str:
        exact = self.inverse is not None
        return f"AutoregressiveTransform(passes={self.passes}, exact_inverse={exact})"
