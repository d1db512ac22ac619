r"""Neural spline flows: :class:`MAF` with rational-quadratic spline transformers."""

from __future__ import annotations

__all__ = ["NSF"]

from collections.abc import Sequence

from ..transforms import MonotonicRQSTransform
from .autoregressive import MAF


class NSF(MAF):
    r"""Autoregressive neural spline flow: MADE-conditioned monotone rational-quadratic splines.

    Each layer maps :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` with :math:`h` a spline of
    ``bins`` bins on :math:`[-B, B]` and the identity outside (see
    :class:`~arflows.transforms.MonotonicRQSTransform`); standardised data should mostly lie
    inside :math:`[-B, B]`. Direction costs are those of :class:`MAF`: ``log_prob`` is one
    network pass per layer, ``sample`` one sweep per layer (``inverse="sweep"``).

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        bins: The number of spline bins :math:`K`.
        bound: The half-width :math:`B` of the splines' interval.
        kwargs: Further :class:`MAF` options (``randperm``, ``residual``, ``inverse``, ...).

    References:
        Neural Spline Flows (Durkan et al., 2019)
        https://arxiv.org/abs/1906.04032

    Example:
        >>> flow = NSF(3, context=2, transforms=2, bins=6, hidden_features=(16, 16))
        >>> dist = flow(torch.randn(5, 2))
        >>> dist.log_prob(torch.randn(5, 3)).shape, dist.sample((4,)).shape
        (torch.Size([5]), torch.Size([4, 5, 3]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        *,
        bins: int = 8,
        bound: float = 5.0,
        **kwargs,
    ):
        super().__init__(
            features,
            context,
            transforms,
            hidden_features,
            univariate=MonotonicRQSTransform,
            univariate_kwargs=dict(bins=bins, bound=bound),
            **kwargs,
        )
