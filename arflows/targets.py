r"""Built-in target densities with known normalising constants, for variational inference.

Each target has an **unnormalised** log-density :math:`\log \tilde p(x)` (:meth:`log_prob`),
its log-normaliser :math:`\log Z = \log \int \tilde p(x)\, dx` (:attr:`log_normalizer`), so
that :math:`p(x) = \tilde p(x) / Z`, exact samples (:meth:`sample`) and the number of
features :math:`D` (:attr:`features`). The constants dropped from :math:`\log \tilde p` are
the Gaussian ones (:math:`2\pi` and scale factors), so :math:`\log Z \ne 0` and an estimate
of it (:func:`arflows.vi.importance_sample`) is a real test.

Example:
    >>> target = Funnel(features=5)
    >>> x = target.sample(4)
    >>> x.shape, target.log_prob(x).shape
    (torch.Size([4, 5]), torch.Size([4]))
    >>> torch.allclose(target.normalized_log_prob(x), target.log_prob(x) - target.log_normalizer)
    True
"""

from __future__ import annotations

__all__ = ["Banana", "CorrelatedGaussian", "Funnel", "GaussianRing", "Target"]

import abc
import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"expected `{name} > 0`, got {value}")


def _check_features(features: int, least: int) -> None:
    if not isinstance(features, int) or features < least:
        raise ValueError(f"expected an integer `features >= {least}`, got {features!r}")


class Target(abc.ABC):
    r"""A density :math:`p(x) = \tilde p(x) / Z` on :math:`\mathbb{R}^D` with exact samples.

    Attributes:
        features: The number of features :math:`D`.
        log_normalizer: :math:`\log Z`, exact.
    """

    features: int
    log_normalizer: float

    @abc.abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        r"""The unnormalised log-density :math:`\log \tilde p(x)`.

        Args:
            x: Points, with shape :math:`(*, D)`.

        Returns:
            The unnormalised log-densities, with shape :math:`(*)`.
        """

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Exact samples, shape (n, D), float64."""

    def normalized_log_prob(self, x: Tensor) -> Tensor:
        r"""The normalised log-density :math:`\log p(x) = \log \tilde p(x) - \log Z`."""
        return self.log_prob(x) - self.log_normalizer

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        r"""Exact samples from :math:`p`.

        Args:
            n: The number of samples.
            generator: The random generator (default: torch's global one).
            dtype: The samples' dtype (they are drawn in float64).

        Returns:
            The samples, with shape :math:`(n, D)`.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"expected an integer `n >= 0`, got {n!r}")
        return self._sample(n, generator).to(dtype)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected `x` to be a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.features:
            raise ValueError(f"expected `x` with shape (*, {self.features}), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Banana(Target):
    r"""A Rosenbrock-like banana: a Gaussian bent along a parabola.

    .. math:: x_1 \sim \mathcal{N}(0, s^2), \quad
              x_2 \mid x_1 \sim \mathcal{N}\big(b (x_1^2 - s^2), 1\big), \quad
              x_{i > 2} \sim \mathcal{N}(0, 1),

    with :math:`\log \tilde p(x) = -\frac{x_1^2}{2 s^2} - \frac{(x_2 - b(x_1^2 - s^2))^2}{2}
    - \sum_{i>2} \frac{x_i^2}{2}` and :math:`\log Z = \frac{D}{2} \log 2\pi + \log s`.

    Args:
        features: The number of features :math:`D \ge 2`.
        scale: The scale :math:`s` of :math:`x_1`.
        curvature: The bend :math:`b`.
    """

    def __init__(self, features: int = 2, scale: float = 2.0, curvature: float = 0.5):
        _check_features(features, 2)
        _check_positive("scale", scale)
        self.features, self.scale, self.curvature = features, float(scale), float(curvature)
        self.log_normalizer = features / 2 * _LOG_2PI + math.log(self.scale)

    def log_prob(self, x: Tensor) -> Tensor:  # noqa: D102
        self._check(x)
        x1, x2, rest = x[..., 0], x[..., 1], x[..., 2:]
        bend = x2 - self.curvature * (x1.square() - self.scale**2)
        return -0.5 * ((x1 / self.scale).square() + bend.square() + rest.square().sum(-1))

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        x = torch.randn(n, self.features, generator=generator, dtype=torch.float64)
        x[:, 0] *= self.scale
        x[:, 1] += self.curvature * (x[:, 0].square() - self.scale**2)
        return x


class Funnel(Target):
    r"""Neal's funnel: a scale :math:`v` and features whose spread is :math:`e^{v/2}`.

    .. math:: v = x_1 \sim \mathcal{N}(0, \sigma^2), \qquad
              x_{i > 1} \mid v \sim \mathcal{N}(0, e^{v}),

    with :math:`\log \tilde p(x) = -\frac{v^2}{2\sigma^2} - \sum_{i>1}
    \big(\frac{x_i^2}{2} e^{-v} + \frac{v}{2}\big)` and
    :math:`\log Z = \frac{D}{2}\log 2\pi + \log \sigma`. The scales of :math:`x_{i>1}` span
    :math:`e^{\pm 3\sigma / 2}` over :math:`\pm 3` standard deviations of :math:`v`: a flow
    whose log-scales are clipped (Pyro's IAF clips them to :math:`[-5, 3]`) cannot reach the
    neck or the mouth.

    Args:
        features: The number of features :math:`D \ge 2` (:math:`v` is the first).
        scale: The standard deviation :math:`\sigma` of :math:`v`.

    References:
        Slice Sampling (Neal, 2003)
        https://arxiv.org/abs/physics/0009028
    """

    def __init__(self, features: int = 10, scale: float = 3.0):
        _check_features(features, 2)
        _check_positive("scale", scale)
        self.features, self.scale = features, float(scale)
        self.log_normalizer = features / 2 * _LOG_2PI + math.log(self.scale)

    def log_prob(self, x: Tensor) -> Tensor:  # noqa: D102
        self._check(x)
        v, rest = x[..., 0], x[..., 1:]
        inner = 0.5 * rest.square().sum(-1) * torch.exp(-v) + 0.5 * (self.features - 1) * v
        return -0.5 * (v / self.scale).square() - inner

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        x = torch.randn(n, self.features, generator=generator, dtype=torch.float64)
        x[:, 0] *= self.scale
        x[:, 1:] *= torch.exp(x[:, :1] / 2)
        return x


class GaussianRing(Target):
    r"""An equal-weight mixture of :math:`K` isotropic Gaussians on a circle.

    .. math:: \tilde p(x) = \sum_{k=1}^{K} \exp\Big(-\frac{\lVert x - \mu_k \rVert^2}
              {2 \sigma^2}\Big), \qquad \mu_k = r (\cos \tfrac{2\pi k}{K},
              \sin \tfrac{2\pi k}{K}, 0, \dots, 0),

    so :math:`\log Z = \log K + \frac{D}{2} \log (2\pi\sigma^2)`. Well-separated modes
    (:math:`2 r \sin(\pi / K) \gg \sigma`) test whether a fit drops modes; the ELBO and the
    effective sample size hardly notice that, the forward KL does.

    Args:
        features: The number of features :math:`D \ge 2` (the ring lies in the first two).
        modes: The number of components :math:`K`.
        radius: The radius :math:`r`.
        std: The component standard deviation :math:`\sigma`.
    """

    def __init__(self, features: int = 2, modes: int = 8, radius: float = 4.0, std: float = 0.5):
        _check_features(features, 2)
        if not isinstance(modes, int) or modes < 1:
            raise ValueError(f"expected an integer `modes >= 1`, got {modes!r}")
        _check_positive("radius", radius)
        _check_positive("std", std)
        self.features, self.modes = features, modes
        self.radius, self.std = float(radius), float(std)
        self.log_normalizer = math.log(modes) + features / 2 * math.log(2 * math.pi * std**2)
        angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
        self._means = torch.zeros(modes, features, dtype=torch.float64)
        self._means[:, 0], self._means[:, 1] = radius * angle.cos(), radius * angle.sin()

    def log_prob(self, x: Tensor) -> Tensor:  # noqa: D102
        self._check(x)
        means = self._means.to(x)
        sq = (x[..., None, :] - means).square().sum(-1)  # (*, K)
        return torch.logsumexp(-sq / (2 * self.std**2), dim=-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        k = torch.randint(self.modes, (n,), generator=generator)
        noise = torch.randn(n, self.features, generator=generator, dtype=torch.float64)
        return self._means[k] + self.std * noise


class CorrelatedGaussian(Target):
    r"""A Gaussian :math:`\mathcal{N}(\mu, \Sigma)` with dense correlations (:math:`D` = 10..50+).

    :math:`\Sigma = Q \operatorname{diag}(\lambda) Q^\top` with :math:`Q` a random rotation and
    eigenvalues :math:`\lambda` log-spaced from :math:`\kappa^{-1/2}` to
    :math:`\kappa^{1/2}` (condition number :math:`\kappa`); :math:`\mu` is standard normal.
    Both are drawn from ``seed``, so a target is reproducible. Then

    .. math:: \log \tilde p(x) = -\tfrac12 (x - \mu)^\top \Sigma^{-1} (x - \mu), \qquad
              \log Z = \tfrac{D}{2} \log 2\pi + \tfrac12 \log \det \Sigma.

    One affine autoregressive layer (a Cholesky factor) represents it exactly.

    Args:
        features: The number of features :math:`D \ge 1`.
        condition: The condition number :math:`\kappa \ge 1` of :math:`\Sigma`.
        seed: Seeds :math:`Q` and :math:`\mu`.

    Attributes:
        loc: The mean :math:`\mu`, with shape :math:`(D,)`, float64.
        covariance: :math:`\Sigma`, with shape :math:`(D, D)`, float64.
    """

    def __init__(self, features: int = 10, condition: float = 100.0, seed: int = 0):
        _check_features(features, 1)
        if not condition >= 1:
            raise ValueError(f"expected `condition >= 1`, got {condition}")
        self.features, self.condition, self.seed = features, float(condition), seed
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(features, features, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # a uniformly random rotation (Haar)
        half = 0.5 * math.log(self.condition)
        eigenvalues = torch.logspace(-half, half, features, base=math.e, dtype=torch.float64)
        self._loc = torch.randn(features, generator=gen, dtype=torch.float64)
        self._covariance = (q * eigenvalues) @ q.T
        self._scale_tril = torch.linalg.cholesky(self._covariance)
        self._precision = torch.cholesky_inverse(self._scale_tril)
        self.log_normalizer = features / 2 * _LOG_2PI + float(eigenvalues.log().sum()) / 2

    @property
    def loc(self) -> Tensor:  # noqa: D102
        return self._loc.clone()

    @property
    def covariance(self) -> Tensor:  # noqa: D102
        return self._covariance.clone()

    def log_prob(self, x: Tensor) -> Tensor:  # noqa: D102
        self._check(x)
        d = x - self._loc.to(x)
        return -0.5 * ((d @ self._precision.to(x)) * d).sum(-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = torch.randn(n, self.features, generator=generator, dtype=torch.float64)
        return self._loc + z @ self._scale_tril.T
