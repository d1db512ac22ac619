r"""Full-covariance Gaussian mixtures: a flow's base, and their fit by EM.

.. math:: p(z) = \sum_{k=1}^{K} \pi_k\, \mathcal{N}(z; \mu_k, L_k L_k^\top).

With :math:`K = 1` the base is a full-covariance Gaussian. Fitted to a flow's noise by
:func:`~arflows.flows.initialize_`, it makes the untrained flow the classical density of the
training rows; the flow's layers, which start at the identity, then learn what is left.
"""

from __future__ import annotations

__all__ = [
    "COMPONENTS",
    "GaussianMixture",
    "GaussianMixtureDistribution",
    "MixtureFit",
    "fit_gaussian_mixture",
    "gaussian_mixture_log_prob",
    "select_gaussian_mixture",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from ..nn.made import check_int
from .lazy import LazyDistribution

# The numbers of components select_gaussian_mixture tries, in this order.
COMPONENTS = (1, 2, 3, 4, 6, 8, 12)
_LOG_2PI = math.log(2 * math.pi)
# Elements of the (K, D, rows) intermediates computed at once.
_CHUNK = 1 << 22


def _component_terms(
    z: Tensor, log_weights: Tensor, loc: Tensor, tril: Tensor, inverse: Tensor | None = None
) -> Tensor:
    r""":math:`\log \pi_k + \log \mathcal{N}(z; \mu_k, L_k L_k^\top)`, (K, M) for z (M, D).

    With ``inverse`` (the :math:`L_k^{-1}`), a product replaces the triangular solve: some
    three times faster on CPUs, for EM's many passes over the same factors.
    """
    diff = z.T[None] - loc[..., None]  # (K, D, M): one triangular solve per component
    if inverse is None:
        u = torch.linalg.solve_triangular(tril, diff, upper=False)
    else:
        u = inverse @ diff
    log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
    const = log_weights - log_det - 0.5 * z.shape[-1] * _LOG_2PI
    return const[:, None] - 0.5 * u.square().sum(1)


def _log_prob_tril(z: Tensor, log_weights: Tensor, loc: Tensor, tril: Tensor) -> Tensor:
    flat = z.reshape(-1, z.shape[-1])  # (M, D)
    # In chunks of rows, so that (K, D, rows) stays small for large M.
    rows = max(1, _CHUNK // (loc.numel() or 1))
    log_p = [
        torch.logsumexp(_component_terms(part, log_weights, loc, tril), 0)
        for part in flat.split(rows)
    ]
    return (torch.cat(log_p) if log_p else flat.new_zeros(0)).reshape(z.shape[:-1])


def gaussian_mixture_log_prob(
    x: Tensor, weights: Tensor, means: Tensor, covariances: Tensor
) -> Tensor:
    r"""The log-density of a full-covariance Gaussian mixture.

    Args:
        x: The points, with shape :math:`(*, D)`.
        weights: The mixture weights :math:`\pi`, with shape :math:`(K,)`, summing to 1.
        means: The means :math:`\mu`, with shape :math:`(K, D)`.
        covariances: The positive definite covariances :math:`\Sigma`, with shape
            :math:`(K, D, D)`.

    Returns:
        :math:`\log \sum_k \pi_k \mathcal{N}(x; \mu_k, \Sigma_k)`, with shape :math:`(*)`.
    """
    tril = torch.linalg.cholesky(covariances)
    return _log_prob_tril(x, weights.log(), means, tril)


class GaussianMixtureDistribution(Distribution):
    r"""A full-covariance Gaussian mixture :math:`\sum_k \pi_k \mathcal{N}(\mu_k, L_k L_k^\top)`.

    ``rsample`` draws the component :math:`k \sim \pi`, then :math:`z = \mu_k + L_k
    \varepsilon` with :math:`\varepsilon \sim \mathcal{N}(0, I)`: gradients reach the means
    and Cholesky factors but **not** the mixture weights (the component choice is discrete;
    ``log_prob`` carries the weights' gradients).

    Args:
        logits: The unconstrained mixture logits, with shape :math:`(K,)`.
        loc: The means :math:`\mu`, with shape :math:`(K, D)`.
        scale_tril: The Cholesky factors :math:`L` (lower triangular, positive diagonal),
            with shape :math:`(K, D, D)`.
        batch_shape: The batch shape: the same mixture for every batch element.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale_tril: Tensor,
        batch_shape: Size | Sequence[int] = (),
    ):
        self.logits, self.loc, self.scale_tril = logits, loc, scale_tril
        super().__init__(Size(batch_shape), loc.shape[-1:], validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        r"""The log-density, with shape :math:`(*)` for ``z`` with shape :math:`(*, D)`.

        ``(*)`` is broadcast against the batch shape.
        """
        d = self.event_shape[0]
        if z.shape[-1:] != (d,):
            raise ValueError(f"expected z with shape (*, {d}), got {tuple(z.shape)}")
        batch = torch.broadcast_shapes(z.shape[:-1], self.batch_shape)
        log_p = _log_prob_tril(z, self.logits.log_softmax(-1), self.loc, self.scale_tril)
        return log_p.expand(batch)

    def rsample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        r"""Samples, with shape ``sample_shape + batch_shape + (D,)``; see the class doc."""
        shape = Size(sample_shape) + self.batch_shape
        n = shape.numel()
        with torch.no_grad():
            k = torch.multinomial(self.logits.softmax(-1), n, replacement=True) if n else None
        eps = torch.randn(n, self.event_shape[0], dtype=self.loc.dtype, device=self.loc.device)
        if k is None:
            return eps.reshape(*shape, self.event_shape[0])
        z = self.loc[k]  # (n, D)
        # One product per component over all draws (not one (D, D) gather per draw).
        for j in range(self.loc.shape[0]):
            z = z + (k == j)[:, None] * (eps @ self.scale_tril[j].T)
        return z.reshape(*shape, self.event_shape[0])

    @property
    def mean(self) -> Tensor:  # noqa: D102
        mean = (self.logits.softmax(-1)[:, None] * self.loc).sum(0)
        return mean.expand(*self.batch_shape, -1)

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureDistribution(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)}, components={self.loc.shape[0]})"
        )


class GaussianMixture(LazyDistribution):
    r"""Lazy full-covariance Gaussian mixture base; :math:`\mathcal{N}(0, I)` when built.

    Parameters: the mixture ``logits`` :math:`(K,)`, the means ``loc`` :math:`(K, D)`, and
    the Cholesky factors :math:`L_k`, as their strictly lower part ``tril`` :math:`(K, D, D)`
    (the diagonal and upper part of that tensor are not used) and the log-diagonal
    ``log_diag`` :math:`(K, D)`. All start at zero, so every component is
    :math:`\mathcal{N}(0, I)`: an untrained flow starts at its standard normal base, as with
    :class:`~arflows.flows.StandardNormal`. Identical components get identical gradients, so
    they only separate once set apart: by :meth:`set_` (as :func:`~arflows.flows.initialize_`
    does, from EM) or by perturbing the parameters.

    The context is ignored: called with a context of shape :math:`(*, C)`, it returns a batch
    of shape :math:`(*)` of the same mixture. :meth:`set_` may change the number of
    components; a loaded state dict sets it too, so a saved flow rebuilt with another
    ``components`` still loads.

    Args:
        features: The number of features :math:`D`.
        components: The number of components :math:`K`. :func:`~arflows.flows.initialize_`
            chooses among at most this many (``components="auto"``).

    Example:
        >>> base = GaussianMixture(3, components=2).double()
        >>> z = torch.randn(5, 3, dtype=torch.float64)
        >>> normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        >>> torch.allclose(base().log_prob(z), normal)   # N(0, I) when built
        True
        >>> base(torch.zeros(4, 7)).sample().shape
        torch.Size([4, 3])
    """

    def __init__(self, features: int, components: int = 1):
        super().__init__()
        check_int("features", features, 1)
        check_int("components", components, 1)
        self.max_components = components
        self._allocate(components, features, torch.zeros(()))

    def _allocate(self, k: int, d: int, like: Tensor) -> None:
        shapes = {"logits": (k,), "loc": (k, d), "tril": (k, d, d), "log_diag": (k, d)}
        for name, shape in shapes.items():
            param = getattr(self, name, None)
            if isinstance(param, nn.Parameter):
                # The same Parameter objects, resized: an optimiser built before a load that
                # changes K (resuming a fit) still holds them.
                param.data = like.new_zeros(shape)
            else:
                setattr(self, name, nn.Parameter(like.new_zeros(shape)))

    @property
    def components(self) -> int:
        """The current number of components :math:`K`."""
        return self.logits.numel()

    @property
    def features(self) -> int:
        """The number of features :math:`D`."""
        return self.loc.shape[-1]

    def scale_tril(self) -> Tensor:
        """The Cholesky factors :math:`L_k`, with shape :math:`(K, D, D)`."""
        return self.tril.tril(-1) + torch.diag_embed(self.log_diag.exp())

    def forward(self, c: Tensor | None = None) -> GaussianMixtureDistribution:  # noqa: D102
        batch = () if c is None else c.shape[:-1]
        return GaussianMixtureDistribution(self.logits, self.loc, self.scale_tril(), batch)

    @torch.no_grad()
    def set_(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        r"""Sets the mixture (and its number of components) from its parameters.

        Args:
            weights: The positive mixture weights :math:`\pi`, with shape :math:`(K,)`.
            means: The means :math:`\mu`, with shape :math:`(K, D)`.
            covariances: The positive definite covariances, with shape :math:`(K, D, D)`.

        Raises:
            ValueError: For shapes that do not fit, non-positive weights or covariances that
                are not positive definite.
        """
        k, d = weights.numel(), self.features
        if weights.shape != (k,) or means.shape != (k, d) or covariances.shape != (k, d, d):
            raise ValueError(
                f"expected weights (K,), means (K, {d}) and covariances (K, {d}, {d}), got "
                f"{tuple(weights.shape)}, {tuple(means.shape)} and {tuple(covariances.shape)}"
            )
        if not bool((weights > 0).all()):
            raise ValueError("expected positive mixture weights")
        # The factorisation in float64 even for a float32 base: it is done once.
        tril, info = torch.linalg.cholesky_ex(covariances.to(torch.float64))
        if bool(info.any()):
            raise ValueError("expected positive definite covariances")
        like = self.loc.detach()
        self._allocate(k, d, like)
        self.logits.copy_(weights.to(torch.float64).log())
        self.loc.copy_(means)
        self.tril.copy_(tril.tril(-1))
        self.log_diag.copy_(tril.diagonal(dim1=-2, dim2=-1).log())

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, *args: object, **kwargs: object
    ) -> None:
        # The number of components is the one saved, whatever the flow was rebuilt with.
        logits = state_dict.get(prefix + "logits")
        if isinstance(logits, Tensor) and logits.dim() == 1 and logits.numel() >= 1:
            if logits.numel() != self.components:
                self._allocate(logits.numel(), self.features, self.loc.detach())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:  # noqa: D102
        return f"features={self.features}, components={self.components}"


@dataclass(frozen=True)
class MixtureFit:
    r"""A Gaussian mixture fitted by :func:`fit_gaussian_mixture`, in float64.

    Attributes:
        weights: The mixture weights, with shape :math:`(K,)`.
        means: The means, with shape :math:`(K, D)`.
        covariances: The covariances, with shape :math:`(K, D, D)`.
        history: The mean log-likelihood of the training rows after each EM step (one entry
            for :math:`K = 1`, fitted in closed form); for the best restart.
        converged: Whether the last step improved it by less than ``tol``.
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor
    history: tuple[float, ...]
    converged: bool

    @property
    def components(self) -> int:
        """The number of components :math:`K`."""
        return self.weights.numel()

    @property
    def log_likelihood(self) -> float:
        """The mean log-likelihood of the training rows."""
        return self.history[-1]

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The mixture's log-density of ``x`` with shape :math:`(*, D)`, in float64."""
        return gaussian_mixture_log_prob(
            x.to(torch.float64), self.weights, self.means, self.covariances
        )


def _floored(cov: Tensor, floor: float) -> Tensor:
    """Lifts every eigenvalue of each covariance to at least ``floor`` (none if above)."""
    low = torch.linalg.eigvalsh(cov)[..., 0]  # (K,), ascending
    lift = (floor - low).clamp(min=0)
    return cov + torch.diag_embed(lift[:, None].expand(-1, cov.shape[-1]))


def _m_step(x: Tensor, resp: Tensor, floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and (floored) covariances from responsibilities (N, K)."""
    counts = resp.sum(0) + 10 * torch.finfo(x.dtype).tiny  # (K,): an empty one stays finite
    means = resp.T @ x / counts[:, None]  # (K, D)
    cov = []
    for k in range(resp.shape[1]):  # one (N, D) product at a time, not (K, N, D)
        diff = x - means[k]
        cov.append((resp[:, k, None] * diff).T @ diff / counts[k])
    cov = torch.stack(cov)
    cov = 0.5 * (cov + cov.mT)
    return counts / counts.sum(), means, _floored(cov, floor)


def _e_step(x: Tensor, weights: Tensor, means: Tensor, cov: Tensor) -> tuple[Tensor, float]:
    """Responsibilities (N, K) and the mean log-likelihood."""
    tril = torch.linalg.cholesky(cov)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
    rows = max(1, _CHUNK // means.numel())
    terms = torch.cat(
        [_component_terms(part, weights.log(), means, tril, inverse) for part in x.split(rows)],
        1,
    )  # (K, N)
    log_p = torch.logsumexp(terms, 0)
    log_resp = terms - log_p
    # Below e^-230 (1e-100) a responsibility is zero: subnormal products of tinier ones make
    # the M-step's products some ten times slower on CPUs, and change nothing.
    resp = torch.where(log_resp > -230, log_resp.exp(), 0.0)
    return resp.T, log_p.mean().item()


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Hard responsibilities (N, K): k-means++ seeding, then a few Lloyd steps."""
    n = len(x)
    centers = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centers).square().amin(1)
        if float(d2.sum()) > 0:
            # Drawn on the CPU, where the generator is: the same centres on every device.
            pick = torch.multinomial((d2 / d2.sum()).cpu(), 1, generator=generator)
        else:  # every row on a centre already: any row
            pick = torch.randint(n, (1,), generator=generator)
        centers = torch.cat((centers, x[pick]))
    for _ in range(10):
        assign = torch.cdist(x, centers).argmin(1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        # An emptied cluster keeps its centre rather than becoming NaN.
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
    return nn.functional.one_hot(assign, k).to(x.dtype)


def fit_gaussian_mixture(
    x: Tensor,
    components: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    reg: float = 1e-6,
    restarts: int = 1,
) -> MixtureFit:
    r"""Fits a full-covariance Gaussian mixture to rows by maximum likelihood (EM).

    :math:`K = 1` is the closed form: the mean and the maximum likelihood (biased) covariance.
    For :math:`K > 1`, each restart seeds the responsibilities with k-means++ and a few Lloyd
    steps, then runs EM until the mean log-likelihood improves by less than ``tol``; the best
    restart is returned. EM never lowers the training log-likelihood. Every covariance's
    eigenvalues are lifted to at least ``reg`` times the rows' mean variance, so a singular
    or tiny cluster never gives NaN; covariances above that are left exactly as fitted.
    The arithmetic is in float64.

    Args:
        x: The rows, with shape :math:`(N, D)`, :math:`N \ge K`.
        components: The number of components :math:`K`.
        seed: The seed of the k-means++ draws (restart :math:`r` uses ``seed + r``).
        max_iter: The most EM steps per restart.
        tol: The convergence threshold on the mean log-likelihood.
        reg: The relative eigenvalue floor of the covariances.
        restarts: The number of k-means++ restarts.

    Returns:
        The fit.

    Raises:
        ValueError: For fewer rows than components or rows that are not finite.

    Example:
        >>> x = torch.cat((torch.randn(200, 2) - 4, torch.randn(200, 2) + 4)).double()
        >>> fit = fit_gaussian_mixture(x, 2)
        >>> fit.means[:, 0].sort().values.round().tolist()
        [-4.0, 4.0]
    """
    check_int("components", components, 1)
    check_int("max_iter", max_iter, 1)
    check_int("restarts", restarts, 1)
    if x.dim() != 2 or len(x) < components:
        raise ValueError(
            f"expected rows with shape (N, D) and N >= components = {components}, got "
            f"{tuple(x.shape)}"
        )
    x = x.detach().to(torch.float64)
    if not bool(x.isfinite().all()):
        raise ValueError("expected finite rows to fit a Gaussian mixture to")
    scale = float(x.var(0, correction=0).mean())
    floor = reg * (scale if scale > 0 else 1.0)
    if components == 1:
        weights, means, cov = _m_step(x, x.new_ones(len(x), 1), floor)
        return MixtureFit(weights, means, cov, (_e_step(x, weights, means, cov)[1],), True)
    best = None
    for r in range(restarts):
        generator = torch.Generator().manual_seed(seed + r)
        resp, history, converged = _kmeans_pp(x, components, generator), [], False
        for _ in range(max_iter):
            params = _m_step(x, resp, floor)
            resp, ll = _e_step(x, *params)
            converged = bool(history) and ll - history[-1] < tol
            history.append(ll)
            if converged:
                break
        if best is None or history[-1] > best.history[-1]:
            best = MixtureFit(*params, tuple(history), converged)
    return best


def select_gaussian_mixture(
    x: Tensor,
    valid: Tensor,
    components: Sequence[int] = COMPONENTS,
    *,
    patience: int = 2,
    **kwargs,
) -> tuple[MixtureFit, dict[int, float]]:
    r"""Fits mixtures of several sizes to ``x`` and keeps the best on ``valid``.

    Sizes that leave fewer than one row per free parameter are skipped
    (:math:`K (D + 1 + D (D + 1) / 2) > N`; :math:`K = 1` is always tried). The sizes are tried
    in increasing order and the search stops after ``patience`` sizes in a row that do not
    beat the best validation log-likelihood.

    Args:
        x: The training rows, with shape :math:`(N, D)`.
        valid: The validation rows, with shape :math:`(M, D)`.
        components: The sizes :math:`K` to try.
        patience: The sizes in a row without improvement before stopping.
        kwargs: Options of :func:`fit_gaussian_mixture` (``seed``, ``max_iter``, ``reg``,
            ``restarts``, ...).

    Returns:
        The best fit (on the training rows) and the mean validation log-likelihood of each
        size tried.

    Example:
        >>> x = torch.cat((torch.randn(300, 2) - 4, torch.randn(300, 2) + 4)).double()
        >>> fit, scores = select_gaussian_mixture(x[::2], x[1::2])
        >>> fit.components >= 2, scores[fit.components] > scores[1]
        (True, True)
    """
    check_int("patience", patience, 1)
    n, d = x.shape
    per_component = d + 1 + d * (d + 1) // 2
    sizes = sorted({k for k in components if k == 1 or k * per_component <= n})
    if not sizes:
        raise ValueError(f"expected at least one size to try, got components={components!r}")
    best, scores, worse = None, {}, 0
    for k in sizes:
        fit = fit_gaussian_mixture(x, k, **kwargs)
        scores[k] = fit.log_prob(valid).mean().item()
        if best is None or scores[k] > scores[best.components]:
            best, worse = fit, 0
        else:
            worse += 1
            if worse >= patience:
                break
    return best, scores
