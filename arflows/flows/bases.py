r"""Base distributions of flows."""

from __future__ import annotations

__all__ = ["StandardNormal"]

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..nn.made import check_int
from .lazy import LazyDistribution


class StandardNormal(LazyDistribution):
    r"""Standard normal :math:`\mathcal{N}(0, I_D)`, on the module's device and dtype.

    Called with a context of shape :math:`(*, C)`, it returns a batch of shape :math:`(*)`
    (the values of the context are not used).

    Args:
        features: The number of features :math:`D`.

    Example:
        >>> base = StandardNormal(3).double()
        >>> base(torch.zeros(5, 2)).sample().shape, base().sample().dtype
        (torch.Size([5, 3]), torch.float64)
    """

    def __init__(self, features: int):
        super().__init__()
        check_int("features", features, 1)
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, c: Tensor | None = None) -> Distribution:  # noqa: D102
        dist = Independent(Normal(self.loc, self.scale), 1)
        return dist if c is None else dist.expand(c.shape[:-1])
