r"""Built-in datasets with known densities.

Example:
    >>> x = figure1(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, figure1_log_prob(x).shape
    (torch.Size([1000, 2]), torch.Size([1000]))
"""

from __future__ import annotations

__all__ = ["figure1", "figure1_log_prob"]

import math

import torch
from torch import Tensor


def figure1(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Samples the 2-D density of the MAF paper's figure 1.

    .. math:: x_2 \sim \mathcal{N}(0, 4), \qquad x_1 \mid x_2 \sim \mathcal{N}(x_2^2 / 4, 1).

    A single autoregressive affine layer in the order :math:`(x_1, x_2)` cannot fit it (the
    mean of :math:`x_1` depends on the later :math:`x_2`); the reversed order or a stack of
    layers can.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points :math:`(x_1, x_2)`, with shape :math:`(n, 2)`.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057
    """
    if n < 1:
        raise ValueError(f"expected `n >= 1` points, got {n}")
    noise = torch.randn(n, 2, generator=generator, dtype=dtype)
    x2 = 2.0 * noise[:, 1]
    x1 = x2.square() / 4.0 + noise[:, 0]
    return torch.stack((x1, x2), dim=-1)


def figure1_log_prob(x: Tensor) -> Tensor:
    r"""The exact log-density of :func:`figure1`.

    .. math:: \log p(x) = \log \mathcal{N}(x_2; 0, 4) + \log \mathcal{N}(x_1; x_2^2 / 4, 1).

    Args:
        x: The points, with shape :math:`(*, 2)`.

    Returns:
        The log-densities, with shape :math:`(*)`.
    """
    if x.shape[-1:] != (2,):
        raise ValueError(f"expected points with shape (*, 2), got {tuple(x.shape)}")
    x1, x2 = x.unbind(-1)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_p2 = -0.5 * (x2 / 2.0).square() - math.log(2.0) - half_log_2pi
    log_p1 = -0.5 * (x1 - x2.square() / 4.0).square() - half_log_2pi
    return log_p1 + log_p2
