r"""Lazy normalisation layers: :class:`BatchNorm` (MAF paper) and :class:`ActNorm` (Glow)."""

from __future__ import annotations

__all__ = ["ActNorm", "BatchNorm"]

import torch
from torch import Tensor, nn

from ..nn.made import check_int
from ..transforms.normalization import ActNormTransform, BatchNormTransform, batch_moments
from .lazy import LazyTransform


class BatchNorm(LazyTransform):
    r"""Batch normalisation layer :math:`y = (x - m) / \sqrt{v + \epsilon}\, e^{\gamma} + \beta`.

    In training mode :math:`(m, v)` are the statistics of the current batch (all points of
    ``x``, at least two) and every forward call updates the running averages
    :math:`r \leftarrow (1 - \alpha) r + \alpha \cdot \text{batch}` with momentum
    :math:`\alpha`; the log-determinant treats the batch statistics as constants, as in the
    MAF paper. In evaluation mode :math:`(m, v)` are the running averages, and the layer is a
    fixed elementwise affine map. The inverse (sampling) always uses the running averages.
    See :class:`~arflows.transforms.normalization.BatchNormTransform`. The context is
    ignored. :math:`\gamma = \beta = 0` and the running averages start at :math:`(0, 1)`, so
    a fresh layer in evaluation mode is the identity up to :math:`\epsilon`.

    Args:
        features: The number of features :math:`D`.
        momentum: The running averages' momentum :math:`\alpha`.
        eps: The variance offset :math:`\epsilon`.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057

    Example:
        >>> layer = BatchNorm(2)
        >>> y = layer()(5 * torch.randn(64, 2))    # training mode: batch statistics
        >>> layer.running_var.gt(1).all().item()   # the running averages moved
        True
    """

    def __init__(self, features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        check_int("features", features, 1)
        if not 0 < momentum <= 1:
            raise ValueError(f"expected `momentum` in (0, 1], got {momentum}")
        if eps < 0:
            raise ValueError(f"expected `eps >= 0`, got {eps}")
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    @torch.no_grad()
    def _update(self, mean: Tensor, var: Tensor) -> None:
        self.running_mean.lerp_(mean.to(self.running_mean), self.momentum)
        self.running_var.lerp_(var.to(self.running_var), self.momentum)

    def forward(self, c: Tensor | None = None) -> BatchNormTransform:  # noqa: D102
        if not self.training:
            return BatchNormTransform(
                self.log_gamma, self.beta, self.running_mean, self.running_var, self.eps
            )
        # Copies: the forward updates the buffers in place while the inverse may be in a graph.
        fallback = (self.running_mean.clone(), self.running_var.clone())
        return BatchNormTransform(
            self.log_gamma, self.beta, eps=self.eps, fallback=fallback, on_batch=self._update
        )

    def extra_repr(self) -> str:  # noqa: D102
        return f"features={self.beta.numel()}, momentum={self.momentum}, eps={self.eps}"


class ActNorm(LazyTransform):
    r"""ActNorm layer :math:`y = (x - \mu)\, e^{-s}` with data-dependent initialisation.

    The first forward (data to noise) call in training mode sets :math:`\mu` and :math:`s` to
    the mean and log standard deviation of its batch, so that batch comes out with zero mean
    and unit variance per feature; the buffer ``initialized`` records it and is saved in the
    state dict, so a loaded layer is not initialised again. Before that the layer is the
    identity. The context is ignored. The log-determinant is exact:
    :math:`-\sum_i s_i` for every point.

    Args:
        features: The number of features :math:`D`.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        https://arxiv.org/abs/1807.03039

    Example:
        >>> layer = ActNorm(2)
        >>> y = layer()(3 * torch.randn(64, 2) + 1)
        >>> torch.allclose(y.std(0, correction=0), torch.ones(2), atol=1e-4)
        True
        >>> bool(layer.initialized)
        True
    """

    def __init__(self, features: int):
        super().__init__()
        check_int("features", features, 1)
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean, var = batch_moments(x)
        self.loc.copy_(mean)
        # a constant feature keeps unit scale rather than an infinite one
        self.log_scale.copy_(0.5 * torch.log(torch.where(var > 0, var, 1.0)))
        self.initialized.fill_(True)

    def forward(self, c: Tensor | None = None) -> ActNormTransform:  # noqa: D102
        initialize = None if self.initialized or not self.training else self._initialize
        return ActNormTransform(self.loc, self.log_scale, initialize)

    def extra_repr(self) -> str:  # noqa: D102
        return f"features={self.loc.numel()}, initialized={bool(self.initialized)}"
