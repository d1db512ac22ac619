r"""Autoregressive mixtures of Gaussians (MADE MoG): a density by itself and a flow's base.

.. math:: p(x \mid c) = \prod_{i=1}^{D} \sum_{k=1}^{K} \pi_{ik}\,
          \mathcal{N}(x_i; \mu_{ik}, \sigma_{ik}^2),

where the unconstrained :math:`(\text{logits}_i, \mu_i, \log \sigma_i)` of feature :math:`i`
come from a MADE reading :math:`x_{<i}` and :math:`c`, and :math:`\pi_i` is their softmax.
"""

from __future__ import annotations

__all__ = ["AutoregressiveMoG", "MADEMoG", "MADEMoGFlow", "mixture_quantile"]

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution
from torch.special import log_ndtr

from ..nn import MADE, made_sweep
from ..transforms import PermutationTransform, support_bounds
from ..transforms.univariate import soft_clip
from .lazy import Flow, LazyDistribution, Unconditional, check_sizes

_LOG_SQRT_2PI = 0.5 * torch.log(torch.tensor(2 * torch.pi)).item()


def _mixture_terms(x: Tensor, logits: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    r""":math:`\log \pi_k + \log \mathcal{N}(x; \mu_k, \sigma_k^2)`, for ``x`` with shape (*)."""
    u = (x[..., None] - loc) * torch.exp(-log_scale)  # (*, K)
    return logits.log_softmax(-1) - 0.5 * u.square() - log_scale - _LOG_SQRT_2PI


def _bisections(dtype: torch.dtype) -> int:
    return round(-math.log2(torch.finfo(dtype).eps)) + 12


def mixture_quantile(z: Tensor, logits: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    r"""The scalar mixture's quantile at :math:`\Phi(z)`: :math:`x = F^{-1}(\Phi(z))`.

    :math:`F(x) = \sum_k \pi_k \Phi((x - \mu_k) / \sigma_k)`. The root is bracketed by the
    components' own quantiles :math:`\mu_k + \sigma_k z` (a convex combination of CDFs) and
    found by bisection on :math:`\log F` for :math:`z \le 0` and on :math:`\log (1 - F)` for
    :math:`z > 0`, so neither tail rounds to 0 or 1. A last Newton step with a detached slope
    gives :math:`x` the exact implicit gradients
    :math:`\partial x / \partial \theta = -(\partial F / \partial \theta) / p(x)` and
    :math:`\partial x / \partial z = \varphi(z) / p(x)`: the map is reparameterised.

    Args:
        z: Standard normal noise, with shape :math:`(*)`.
        logits: The unconstrained mixture logits, with shape :math:`(*, K)`.
        loc: The means :math:`\mu`, with shape :math:`(*, K)`.
        log_scale: The log standard deviations :math:`\log \sigma`, with shape :math:`(*, K)`.

    Returns:
        :math:`x`, with shape :math:`(*)`.
    """
    sign = torch.where(z > 0, -1.0, 1.0).to(z.dtype)  # solve in the lighter tail
    log_w = logits.log_softmax(-1)

    def gap(x: Tensor) -> Tensor:  # increasing in x for z <= 0, decreasing for z > 0
        u = sign[..., None] * (x[..., None] - loc) * torch.exp(-log_scale)
        return torch.logsumexp(log_w + log_ndtr(u), -1) - log_ndtr(sign * z)

    with torch.no_grad():
        quantiles = loc + log_scale.exp() * z[..., None]  # (*, K)
        lo, hi = quantiles.amin(-1), quantiles.amax(-1)
        # enough halvings to reach the mantissa's precision from a bracket wider than |x|
        for _ in range(_bisections(z.dtype)):
            mid = 0.5 * (lo + hi)
            above = (gap(mid) * sign) > 0  # the root lies below mid
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        x0 = 0.5 * (lo + hi)
    residual = gap(x0)  # zero up to rounding; carries the gradients
    log_pdf = torch.logsumexp(_mixture_terms(x0, logits, loc, log_scale), -1)
    slope = (sign * torch.exp(log_pdf - (residual + log_ndtr(sign * z)))).detach()
    # A root in a gap of no representable density has no usable slope: keep the bisection's.
    step = torch.where(slope != 0, residual / slope.where(slope != 0, 1.0), 0.0)
    return x0 - step


class AutoregressiveMoG(Distribution):
    r"""The autoregressive mixture of Gaussians of a MADE, given a context.

    .. math:: \log p(x \mid c) = \sum_i \log \sum_k \pi_{ik} \mathcal{N}(x_i; \mu_{ik},
              \sigma_{ik}^2).

    Direction costs: ``log_prob`` is **one** MADE pass. ``rsample`` maps standard normal
    noise :math:`z` through the inverse Rosenblatt transform
    :math:`x_i = F_i^{-1}(\Phi(z_i) \mid x_{<i}, c)` (an exact sample; see
    :func:`mixture_quantile`) in one degree-ordered sweep of the MADE
    (:func:`~arflows.nn.made_sweep`), about one MADE pass plus a bisection per feature. The
    inverse CDF, not a discrete choice of component, makes the samples reparameterised, with
    exact gradients.

    Args:
        made: The MADE, with ``param_dims=(K, K, K)``: logits, means, unconstrained
            log-scales :math:`\tilde s`, soft-clipped to :math:`\log \sigma = b \tanh(\tilde s
            / b)`.
        c: The context, with shape :math:`(*, C)`, or ``None``; its batch shape is the
            distribution's.
        bound: The bound :math:`b` of the log-scales.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, made: MADE, c: Tensor | None = None, bound: float = 5.0):
        self.made, self.c, self.bound = made, c, bound
        batch = Size() if c is None else c.shape[:-1]
        super().__init__(batch, Size([made.features]), validate_args=False)

    def params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The mixture parameters of every feature, with shape :math:`(*, D, K)` each.

        Args:
            x: The data, with shape :math:`(*, D)`.

        Returns:
            The unconstrained logits, the means and the (soft-clipped) log-scales.
        """
        logits, loc, log_scale = self.made(x, self.c)
        if self.made.param_dims[0] == 1:  # MADE drops the last dimension for K = 1
            logits, loc, log_scale = logits[..., None], loc[..., None], log_scale[..., None]
        return logits, loc, soft_clip(log_scale, self.bound)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The log-density, with shape :math:`(*)` for ``x`` with shape :math:`(*, D)`."""
        d = self.made.features
        if x.shape[-1:] != (d,):
            raise ValueError(f"expected x with shape (*, {d}), got {tuple(x.shape)}")
        terms = _mixture_terms(x, *self.params(x))  # (*, D, K)
        return torch.logsumexp(terms, -1).sum(-1)

    def _solve(self, i: int, params: tuple[Tensor, ...], z_i: Tensor) -> Tensor:
        logits, loc, log_scale = (p if p.dim() > z_i.dim() else p[..., None] for p in params)
        return mixture_quantile(z_i, logits, loc, soft_clip(log_scale, self.bound))

    def from_noise(self, z: Tensor, *, sweep: bool = True) -> Tensor:
        r"""The exact sample :math:`x_i = F_i^{-1}(\Phi(z_i) \mid x_{<i}, c)` for noise ``z``.

        Args:
            z: Standard normal noise, with shape :math:`(*, D)`, broadcast against the batch.
            sweep: One degree-ordered sweep (about one MADE pass). ``False`` runs :math:`D`
                full MADE passes, one per feature in the MADE's order (the naive reference).

        Returns:
            :math:`x`, with the broadcast shape :math:`(*, D)`.
        """
        if sweep:
            return made_sweep(self.made, z, self._solve, self.c)
        if self.c is not None:
            batch = torch.broadcast_shapes(z.shape[:-1], self.c.shape[:-1])
            z = z.expand(*batch, z.shape[-1])
        x = torch.zeros_like(z)
        columns = torch.arange(z.shape[-1], device=z.device)
        for i in self.made.order.argsort().tolist():
            logits, loc, log_scale = (p[..., i, :] for p in self.params(x))
            x_i = mixture_quantile(z[..., i], logits, loc, log_scale)
            x = torch.where(columns == i, x_i[..., None], x)
        return x

    def rsample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        r"""Reparameterised samples, with shape ``sample_shape + batch_shape + (D,)``."""
        weight = self.made.packed  # (its dtype and device)
        shape = Size(sample_shape) + self.batch_shape + self.event_shape
        z = torch.randn(shape, dtype=weight.dtype, device=weight.device)
        return self.from_noise(z)

    def __repr__(self) -> str:
        return (
            f"AutoregressiveMoG(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)}, components={self.made.param_dims[0]})"
        )


class MADEMoG(LazyDistribution):
    r"""MADE mixture of Gaussians :math:`p(x \mid c)`, a lazy autoregressive density.

    Calling it with a context returns an :class:`AutoregressiveMoG`. The MADE's output layer
    starts at zero: equal logits, zero means and unit scales, so the mixture starts as
    :math:`\mathcal{N}(0, I)` exactly.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        components: The number of mixture components :math:`K` per feature.
        hidden_features: The MADE's hidden widths.
        bound: The bound :math:`b` of the log-scales, :math:`\log \sigma = b \tanh(\tilde s /
            b)`: the scales stay within :math:`e^{\pm b}`, so one wild feature cannot overflow
            the ones after it.
        kwargs: Further :class:`~arflows.nn.MADE` options (``order``, ``activation``,
            ``residual``, ``skip``, ``hidden_degrees``, ``generator``).

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057

    Example:
        >>> base = MADEMoG(3, context=2, components=4, hidden_features=(16, 16))
        >>> dist = base(torch.randn(5, 2))
        >>> x = dist.sample((7,))
        >>> x.shape, dist.log_prob(x).shape
        (torch.Size([7, 5, 3]), torch.Size([7, 5]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 10,
        hidden_features: Sequence[int] = (64, 64),
        *,
        bound: float = 5.0,
        **kwargs,
    ):
        super().__init__()
        check_sizes(features, context, hidden_features)
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise TypeError(f"expected `bound` to be a number > 0, got {bound!r}")
        if not 0 < bound < math.inf:  # an infinite bound turns the soft clip into NaN
            raise ValueError(f"expected a finite `bound > 0`, got {bound}")
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"expected an int `components >= 1`, got {components!r}")
        self.components, self.bound = components, bound
        self.made = MADE(
            features, hidden_features, param_dims=(components,) * 3, context=context, **kwargs
        )

    def forward(self, c: Tensor | None = None) -> AutoregressiveMoG:  # noqa: D102
        return AutoregressiveMoG(self.made, c, self.bound)

    def extra_repr(self) -> str:  # noqa: D102
        return f"components={self.components}, bound={self.bound}"


class MADEMoGFlow(Flow):
    r"""MADE MoG as a density estimator by itself: a :class:`Flow` with a :class:`MADEMoG` base.

    It has no learned transform, so ``flow(c).log_prob`` is exactly the MADE MoG's density
    (one MADE pass) and ``sample`` its sweep; the flow adds the stored standardisation,
    context embedding and support maps of every :class:`Flow`.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        components: The number of mixture components :math:`K` per feature.
        hidden_features: The MADE's hidden widths.
        embedding: A module applied to the context once per call (see :class:`Flow`).
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Further :class:`~arflows.nn.MADE` options.

    Example:
        >>> flow = MADEMoGFlow(2, components=3, hidden_features=(8, 8))
        >>> flow().log_prob(torch.zeros(4, 2)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 10,
        hidden_features: Sequence[int] = (64, 64),
        *,
        embedding: nn.Module | None = None,
        support: Sequence | None = None,
        **kwargs,
    ):
        if support is not None:
            support_bounds(support, features)  # one entry per feature, checked before any layer
        base = MADEMoG(features, context, components, hidden_features, **kwargs)
        # Flow composes at least one transform: the identity permutation costs one gather.
        identity = Unconditional(PermutationTransform, torch.arange(features))
        super().__init__(
            [identity],
            base,
            embedding=embedding,
            support=support,
            features=features,
            context=context,
        )
