r"""Normalisation layers of flows: batch normalisation (MAF paper) and ActNorm (Glow)."""

from __future__ import annotations

__all__ = ["ActNormTransform", "BatchNormTransform", "batch_moments"]

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import constraints

from ..checks import check_at_least, check_last_dim
from .base import InverseTransform, Transform


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""The per-feature mean and (biased) variance of a batch, over all leading dimensions.

    Args:
        x: The batch, with shape :math:`(*, D)` and at least two points.

    Returns:
        The mean :math:`m` and variance :math:`v = \frac{1}{N} \sum_n (x_n - m)^2`, with shape
        :math:`(D,)` each.

    Raises:
        ValueError: If the batch holds fewer than two points.
    """
    points = x.reshape(-1, x.shape[-1])  # (N, D)
    if points.shape[0] < 2:
        raise ValueError(
            f"batch statistics need a batch of at least 2 points, got x with shape "
            f"{tuple(x.shape)}; evaluate single points in eval mode (module.eval())"
        )
    var, mean = torch.var_mean(points, dim=0, correction=0)
    return mean, var


class BatchNormTransform(Transform):
    r"""Batch normalisation :math:`y = (x - m) / \sqrt{v + \epsilon} \cdot e^{\gamma} + \beta`.

    .. math:: x = (y - \beta)\, e^{-\gamma} \sqrt{v + \epsilon} + m, \qquad
              \log |\det J| = \sum_i \gamma_i - \tfrac12 \log (v_i + \epsilon).

    With statistics ``mean`` and ``var`` given (evaluation mode: the running averages) this
    is an elementwise affine map of each point. Without them (training mode) :math:`m` and
    :math:`v` are the mean and biased variance of the batch ``x`` itself (see
    :func:`batch_moments`), and the log-determinant is that of the per-point map with the
    batch statistics held constant, as in the MAF paper (the exact Jacobian of the whole
    batch would couple its points). The inverse of a training-mode transform is the inverse
    of the evaluation-mode map with ``fallback`` statistics (the running averages): inverting
    needs statistics before any data is seen.

    Args:
        log_gamma: The log-scale :math:`\gamma`, with shape :math:`(D,)`.
        beta: The shift :math:`\beta`, with shape :math:`(D,)`.
        mean: The mean :math:`m`, with shape :math:`(D,)`, or ``None`` for batch statistics.
        var: The variance :math:`v`, with shape :math:`(D,)`, or ``None`` for batch statistics.
        eps: The variance offset :math:`\epsilon`.
        fallback: The ``(mean, var)`` of the inverse when the forward uses batch statistics.
        on_batch: Called with the detached batch ``(mean, var)`` on each forward call with
            batch statistics (a module updates its running averages with it).

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057

    Example:
        >>> t = BatchNormTransform(torch.zeros(2), torch.zeros(2))   # batch statistics
        >>> y = t(3 * torch.randn(100, 2) + 1)
        >>> torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    sign = 1

    def __init__(
        self,
        log_gamma: Tensor,
        beta: Tensor,
        mean: Tensor | None = None,
        var: Tensor | None = None,
        eps: float = 1e-5,
        *,
        fallback: tuple[Tensor, Tensor] | None = None,
        on_batch: Callable[[Tensor, Tensor], None] | None = None,
    ):
        super().__init__()
        if (mean is None) != (var is None):
            raise ValueError("expected both `mean` and `var`, or neither (batch statistics)")
        check_at_least("eps", eps, 0)
        self.log_gamma, self.beta, self.mean, self.var, self.eps = log_gamma, beta, mean, var, eps
        self.fallback, self.on_batch = fallback, on_batch

    def _moments(self, x: Tensor, update: bool) -> tuple[Tensor, Tensor]:
        check_last_dim(x, self.beta.numel())
        if self.mean is not None:
            return self.mean, self.var
        mean, var = batch_moments(x)
        if update and self.on_batch is not None:
            self.on_batch(mean.detach(), var.detach())
        return mean, var

    def _ladj(self, var: Tensor, x: Tensor) -> Tensor:
        return (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum().expand(x.shape[:-1])

    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        mean, var = self._moments(x, update=True)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return y, self._ladj(var, x)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._ladj(self._moments(x, update=False)[1], x)

    def _evaluation(self) -> BatchNormTransform:
        """The evaluation-mode map whose inverse this transform's inverse is."""
        if self.mean is not None:
            return self
        if self.fallback is None:
            raise ValueError("a batch-statistics BatchNormTransform needs `fallback` to invert")
        return BatchNormTransform(self.log_gamma, self.beta, *self.fallback, self.eps)

    def _inverse(self, y: Tensor) -> Tensor:
        t = self._evaluation()
        mean, var = t._moments(y, update=False)
        return (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean

    @property
    def inv(self) -> Transform:
        """The inverse of the evaluation-mode map (see the class docstring)."""
        return InverseTransform(self._evaluation())

    def __repr__(self) -> str:
        mode = "batch" if self.mean is None else "fixed"
        return f"BatchNormTransform(features={self.beta.numel()}, statistics={mode!r})"


class ActNormTransform(Transform):
    r"""Per-feature affine normalisation :math:`y = (x - \mu)\, e^{-s}` (ActNorm).

    .. math:: x = y\, e^{s} + \mu, \qquad \log |\det J| = -\sum_i s_i.

    With ``initialize`` given, the first forward call first sets :math:`\mu` and :math:`s` in
    place from its batch, so that this batch comes out with zero mean and unit variance per
    feature (data-dependent initialisation), then maps it.

    Args:
        loc: The shift :math:`\mu`, with shape :math:`(D,)`.
        log_scale: The log-scale :math:`s`, with shape :math:`(D,)`.
        initialize: Called with the detached batch :math:`x` of shape :math:`(*, D)` before the
            first forward map; it must set ``loc`` and ``log_scale`` in place.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        https://arxiv.org/abs/1807.03039

    Example:
        >>> t = ActNormTransform(torch.ones(2), torch.zeros(2))
        >>> t(torch.tensor([1.0, 3.0])).tolist()
        [0.0, 2.0]
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    sign = 1

    def __init__(
        self,
        loc: Tensor,
        log_scale: Tensor,
        initialize: Callable[[Tensor], None] | None = None,
    ):
        super().__init__()
        self.loc, self.log_scale, self.initialize = loc, log_scale, initialize

    def _call(self, x: Tensor) -> Tensor:
        check_last_dim(x, self.loc.numel())
        if self.initialize is not None:
            self.initialize(x.detach())
            self.initialize = None
        return (x - self.loc) * torch.exp(-self.log_scale)

    def _inverse(self, y: Tensor) -> Tensor:
        check_last_dim(y, self.loc.numel())
        return y * self.log_scale.exp() + self.loc

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return (-self.log_scale.sum()).expand(x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        y = self._call(x)
        return y, self.log_abs_det_jacobian(x, y)

    def __repr__(self) -> str:
        return f"ActNormTransform(features={self.loc.numel()})"
