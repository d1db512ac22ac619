r"""Monotone scalar maps, applied elementwise: the transformers of autoregressive layers."""

from __future__ import annotations

__all__ = ["SCALES", "MonotonicAffineTransform", "soft_clip"]

import math

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import constraints

from ..checks import check_choice, check_positive
from .base import Transform

SCALES = ("softclip", "softplus", "exp", "stable", "none")
"""The scale parameterisations of :class:`MonotonicAffineTransform`."""

# Smallest scale of the "softplus" parameterisation, so the inverse stays bounded.
MIN_SCALE = 1e-3
# MIN_SCALE + softplus(0 + _UNIT_SHIFT) = 1: zero parameters give unit scale.
_UNIT_SHIFT = math.log(math.expm1(1 - MIN_SCALE))
# Pyro's bias of the "stable" gate: sigmoid(0 + 2) ~ 0.88, close to keeping the input.
GATE_BIAS = 2.0


def soft_clip(x: Tensor, bound: float) -> Tensor:
    r"""Smooth clip :math:`b \tanh(x / b)` to :math:`(-b, b)`, equal to :math:`x` near 0."""
    return bound * torch.tanh(x / bound)


class MonotonicAffineTransform(Transform):
    r"""Monotone affine map :math:`y = x \exp(s) + t`, applied elementwise.

    .. math:: y = x e^{s} + t, \qquad x = (y - t) e^{-s}, \qquad
              \log |\partial y / \partial x| = s.

    The log-scale :math:`s` is a function of the unconstrained parameter :math:`\tilde s`
    chosen by ``scale``:

    * ``"softclip"`` (default): :math:`s = b \tanh(\tilde s / b)`, smooth and bounded, so one
      layer scales by at most :math:`e^{\pm b}`; this keeps deep flows well conditioned.
    * ``"softplus"``: :math:`e^s = m + \operatorname{softplus}(\tilde s + u)` with the floor
      :math:`m = 10^{-3}` and :math:`u = \operatorname{softplus}^{-1}(1 - m)`, so
      :math:`\tilde s = 0` gives scale 1. The scale grows linearly, not exponentially, in
      :math:`\tilde s`, and the inverse slope is at most :math:`1 / m`.
    * ``"exp"``: :math:`s = \operatorname{clamp}(\tilde s, -b, b)`, a hard clamp: beyond
      :math:`\pm b` the map no longer depends on :math:`\tilde s` and its gradient there is
      exactly zero, so a saturated unit cannot be trained back (prefer ``"softclip"``).
    * ``"stable"``: Pyro's gated update of the stable IAF,
      :math:`y = g x + (1 - g)\, t` with the gate :math:`g = \sigma(\tilde s + 2)`, so
      :math:`e^s = g` and the shift is :math:`(1 - g)\, t`; here ``shift`` is the value
      :math:`t` that the gate mixes in (Pyro's "mean"). The scale stays in :math:`(0, 1)`,
      a contraction in the transform's forward direction, and the log-determinant
      :math:`\log \sigma(\tilde s + 2)` is computed as a log-sigmoid. **Zero parameters do not
      give the identity** (no finite parameter does, since :math:`g < 1`): they give
      :math:`y = \sigma(2)\, x \approx 0.881\, x`, log-determinant
      :math:`\log \sigma(2) \approx -0.127` per feature. The inverse divides by :math:`g`,
      so it overflows where the gate saturates at 0.
    * ``"none"``: additive (NICE), :math:`y = x + t`, log-determinant 0; takes no
      ``log_scale``.

    Except for ``"stable"``, all-zero parameters give the identity. ``bound`` is used by
    ``"softclip"`` and ``"exp"`` only.

    Args:
        shift: The shift :math:`t`, with shape :math:`(*, D)`.
        log_scale: The unconstrained log-scale :math:`\tilde s`, with shape :math:`(*, D)`;
            ``None`` (and only then) with ``scale="none"``.
        bound: The bound :math:`b` of the log-scale.
        scale: The parameterisation of the scale, one of :data:`SCALES`.

    References:
        Density estimation using Real NVP (Dinh et al., 2017)
        https://arxiv.org/abs/1605.08803

        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        https://arxiv.org/abs/1606.04934

    Example:
        >>> t = MonotonicAffineTransform(torch.zeros(3), torch.zeros(3))
        >>> x = torch.randn(3)
        >>> torch.equal(t(x), x)   # zero parameters give the identity
        True
        >>> g = MonotonicAffineTransform(torch.zeros(3), torch.zeros(3), scale="stable")
        >>> torch.allclose(g(x), torch.sigmoid(torch.tensor(2.0)) * x)
        True
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(
        self,
        shift: Tensor,
        log_scale: Tensor | None = None,
        bound: float = 5.0,
        scale: str = "softclip",
    ):
        super().__init__()
        check_choice("scale", scale, SCALES)
        check_positive("bound", bound)
        if (log_scale is None) != (scale == "none"):
            raise ValueError(
                f"expected `log_scale` to be None exactly when `scale='none'`, got scale="
                f"{scale!r} and log_scale {'None' if log_scale is None else 'a tensor'}"
            )
        self.scale, self.bound = scale, float(bound)
        if scale == "softclip":
            self.shift, self.log_scale = shift, soft_clip(log_scale, bound)
        elif scale == "softplus":
            self.shift = shift
            self.log_scale = torch.log(MIN_SCALE + F.softplus(log_scale + _UNIT_SHIFT))
        elif scale == "exp":
            self.shift, self.log_scale = shift, log_scale.clamp(-bound, bound)
        elif scale == "stable":
            logit = log_scale + GATE_BIAS
            # 1 - sigmoid(a) = sigmoid(-a): no cancellation when the gate is near 1.
            self.shift = torch.sigmoid(-logit) * shift
            self.log_scale = F.logsigmoid(logit)
        else:
            self.shift, self.log_scale = shift, torch.zeros_like(shift)

    @staticmethod
    def param_shapes(scale: str = "softclip", bound: float = 5.0) -> tuple[Size, ...]:
        """The shape of each parameter per feature: a scalar shift and (unless additive) log-scale.

        Args:
            scale: The scale parameterisation; ``"none"`` has no log-scale parameter.
            bound: Accepted (and ignored) so that a layer can pass every keyword argument of
                the transform.
        """
        check_choice("scale", scale, SCALES)
        return (Size(),) if scale == "none" else (Size(), Size())

    def _call(self, x: Tensor) -> Tensor:
        if self.scale == "none":
            return x + self.shift
        return x * self.log_scale.exp() + self.shift

    def _inverse(self, y: Tensor) -> Tensor:
        if self.scale == "none":
            return y - self.shift
        return (y - self.shift) * torch.exp(-self.log_scale)

    def _ladj(self, x: Tensor) -> Tensor:
        if x.shape == self.log_scale.shape:  # the usual case, without broadcasting's cost
            return self.log_scale
        return self.log_scale.expand(torch.broadcast_shapes(x.shape, self.log_scale.shape))

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._ladj(x)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._call(x), self._ladj(x)

    def __repr__(self) -> str:
        return f"MonotonicAffineTransform(scale={self.scale!r})"
