r"""Monotone scalar maps, applied elementwise: the transformers of autoregressive layers."""

from __future__ import annotations

__all__ = ["MonotonicAffineTransform", "soft_clip"]

import torch
from torch import Size, Tensor
from torch.distributions import constraints

from .base import Transform


def soft_clip(x: Tensor, bound: float) -> Tensor:
    r"""Smooth clip :math:`b \tanh(x / b)` to :math:`(-b, b)`, equal to :math:`x` near 0."""
    return bound * torch.tanh(x / bound)


class MonotonicAffineTransform(Transform):
    r"""Monotone affine map :math:`y = x \exp(s) + t`, applied elementwise.

    .. math:: y = x e^{s} + t, \qquad x = (y - t) e^{-s}, \qquad
              \log |\partial y / \partial x| = s, \qquad s = b \tanh(\tilde s / b).

    The log-scale :math:`s` is a smooth, bounded function of the unconstrained
    :math:`\tilde s`, so one layer scales by at most :math:`e^{\pm b}`; this keeps deep flows
    well conditioned. All-zero parameters give the identity.

    Args:
        shift: The shift :math:`t`, with shape :math:`(*, D)`.
        log_scale: The unconstrained log-scale :math:`\tilde s`, with shape :math:`(*, D)`.
        bound: The bound :math:`b` of the log-scale.

    Example:
        >>> t = MonotonicAffineTransform(torch.zeros(3), torch.zeros(3))
        >>> x = torch.randn(3)
        >>> torch.equal(t(x), x)   # zero parameters give the identity
        True
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(self, shift: Tensor, log_scale: Tensor, bound: float = 5.0):
        super().__init__()
        if bound <= 0:
            raise ValueError(f"expected `bound > 0`, got {bound}")
        self.shift = shift
        self.log_scale = soft_clip(log_scale, bound)

    @staticmethod
    def param_shapes() -> tuple[Size, ...]:
        """The shape of each parameter per feature: a scalar shift and log-scale."""
        return Size(), Size()

    def _call(self, x: Tensor) -> Tensor:
        return x * self.log_scale.exp() + self.shift

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.shift) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self.log_scale.expand_as(x)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._call(x), self.log_scale.expand_as(x)
