r"""The lazy LU-parameterised invertible linear layer."""

from __future__ import annotations

__all__ = ["LULinear"]

import torch
from torch import Tensor, nn

from ..nn.made import check_int
from ..transforms.linear import LULinearTransform
from .lazy import LazyTransform


class LULinear(LazyTransform):
    r"""Learned invertible linear layer :math:`y = P L (U + \operatorname{diag}(e^{s}))\, x + b`.

    A dense alternative to fixed permutations between autoregressive layers: it mixes every
    feature into every other, at :math:`O(D^2)` per point in both directions (two triangular
    products forward, two triangular solves inverse) and log-determinant :math:`\sum_i s_i`
    (see :class:`~arflows.transforms.linear.LULinearTransform`). The parameters start at
    zero, so the layer starts as the identity; :math:`P` is fixed (a buffer). The context is
    ignored.

    Args:
        features: The number of features :math:`D`.
        randperm: Draw :math:`P` at random with ``generator`` instead of the identity.
        generator: The random generator of ``randperm``.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(layer()(x), x)   # identity at initialisation
        True
    """

    def __init__(
        self, features: int, *, randperm: bool = False, generator: torch.Generator | None = None
    ):
        super().__init__()
        check_int("features", features, 1)
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))
        order = torch.randperm(features, generator=generator) if randperm else None
        self.register_buffer("order", order)

    def forward(self, c: Tensor | None = None) -> LULinearTransform:  # noqa: D102
        return LULinearTransform(self.lower, self.upper, self.log_diag, self.bias, self.order)

    def extra_repr(self) -> str:  # noqa: D102
        order = None if self.order is None else self.order.tolist()
        return f"features={self.bias.numel()}, order={order}"
