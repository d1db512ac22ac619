r"""Per-target conditional CDFs, quantiles and means of a flow: :func:`cdf`, :func:`quantiles`.

For one feature (:math:`D = 1`) both are exact. Every layer of a flow of one feature is an
increasing (or, for a user's own layer, possibly decreasing) scalar map :math:`T(\cdot\,; c)`,
so with the base's CDF :math:`F_Z`

.. math:: F(y \mid c) = F_Z(T(y; c)), \qquad F^{-1}(q \mid c) = T^{-1}(F_Z^{-1}(q); c)

(:math:`1 - F_Z(T(y; c))` and :math:`F_Z^{-1}(1 - q)` for a decreasing :math:`T`; the
direction is read off two points per context). The bases with a known CDF are the standard
normal, :class:`~arflows.flows.GaussianMixture` and the :class:`~arflows.flows.MADEMoG` of
one feature: each is a scalar mixture of normals, whose quantile is solved by bisection
(:func:`~arflows.flows.mixture.mixture_quantile`) in the base space, so a quantile costs one
inverse pass of the flow. For several features, or any other base or distribution, both are
Monte Carlo estimates from draws of :math:`p(\cdot \mid c)`.
"""

from __future__ import annotations

__all__ = ["cdf", "mean", "quantiles"]

import contextlib
import itertools
import numbers
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal
from torch.special import ndtr, ndtri

from .gmm import GaussianMixtureDistribution
from .lazy import Flow, NormalizingFlow
from .mixture import AutoregressiveMoG, mixture_quantile

# Rows evaluated per call of the flow on the exact path.
_ROWS = 8192
# Drawn points (samples x rows) per call of the flow on the Monte Carlo path: a few MB of
# draws and MADE activations at a time.
_DRAWS = 1 << 16
# Base quantiles that tell an increasing T from a decreasing one.
_PROBE = (0.25, 0.75)


def _device_and_dtype(flow: Flow) -> tuple[torch.device, torch.dtype]:
    tensors = itertools.chain(flow.parameters(), flow.buffers())
    first = next((t for t in tensors if t.is_floating_point()), None)
    if first is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return first.device, first.dtype


def _check_context(flow: Flow, c: Tensor | None, rows: int | None) -> None:
    """Refuses a missing, unexpected or misshapen context (``rows``: the rows it must have)."""
    if flow.context == 0:
        if c is not None:
            raise ValueError("the flow is unconditional: call it without a context (c=None)")
        return
    if c is None:
        raise ValueError(
            f"the flow is conditional on {flow.context} context features: give `c` with shape "
            f"(N, {flow.context})"
        )
    if not isinstance(c, Tensor):
        raise TypeError(f"expected `c` to be a tensor, got a {type(c).__name__}")
    if c.dim() != 2 or c.shape[1] != flow.context:
        raise ValueError(f"expected `c` with shape (N, {flow.context}), got {tuple(c.shape)}")
    if rows is not None and len(c) != rows:
        raise ValueError(f"expected `c` with one row per row of `y` ({rows}), got {len(c)} rows")


def _check_samples(samples: object) -> None:
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"expected an integer `samples >= 1`, got {samples!r}")


def _probabilities(q: Sequence[float] | Tensor) -> Tensor:
    """``q`` as a float64 vector of probabilities in (0, 1), or a clear error."""
    q = torch.as_tensor(q, dtype=torch.float64).detach().cpu()
    if q.dim() != 1 or len(q) == 0:
        raise ValueError(f"expected a non-empty sequence of probabilities, got shape {q.shape}")
    bad = ~((q > 0) & (q < 1))
    if bool(bad.any()):
        raise ValueError(
            f"expected probabilities strictly between 0 and 1, got {q[bad][0].item():g}"
        )
    return q


def _base_mixture(base: Distribution) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""A one-feature base as a scalar mixture of normals, or ``None`` if it is not one.

    Returns:
        The unconstrained logits, means and log-scales, each with shape
        :math:`(*, 1, K)` for the base's batch shape :math:`(*)`.
    """
    if isinstance(base, Independent) and isinstance(base.base_dist, Normal):
        if base.reinterpreted_batch_ndims != 1:
            return None
        loc, scale = base.base_dist.loc, base.base_dist.scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        return torch.zeros_like(loc)[..., None], loc[..., None], scale.log()[..., None]
    if isinstance(base, GaussianMixtureDistribution):
        shape = (*base.batch_shape, 1, base.logits.numel())
        log_scale = base.scale_tril[:, 0, 0].log()  # (K,): the factor of one feature
        return (
            base.logits.expand(shape),
            base.loc[:, 0].expand(shape),
            log_scale.expand(shape),
        )
    if isinstance(base, AutoregressiveMoG):
        weight = base.made.packed  # (its dtype and device)
        # One feature: its mixture depends on the context only, so any x gives it.
        x = torch.zeros(*base.batch_shape, 1, dtype=weight.dtype, device=weight.device)
        return base.params(x)
    return None


def _exact(dist: Distribution) -> tuple[NormalizingFlow, tuple[Tensor, Tensor, Tensor]] | None:
    """The distribution and its base's mixture, where the exact formulas apply."""
    if not isinstance(dist, NormalizingFlow) or dist.event_shape != (1,):
        return None
    mixture = _base_mixture(dist.base)
    return None if mixture is None else (dist, mixture)


def _base_quantile(mixture: tuple[Tensor, Tensor, Tensor], q: Tensor) -> Tensor:
    r"""The base's quantiles :math:`F_Z^{-1}(q)`: shape :math:`(Q, *, 1)` for ``q`` (Q,)."""
    logits, loc, log_scale = mixture
    z = ndtri(q.to(loc.dtype).to(loc.device))
    batch = torch.broadcast_shapes(logits.shape, loc.shape, log_scale.shape)[:-1]  # (*, 1)
    z = z.reshape(-1, *(1,) * len(batch)).expand(-1, *batch)  # (Q, *, 1)
    params = (p.expand(*z.shape, p.shape[-1]) for p in (logits, loc, log_scale))
    return mixture_quantile(z, *params)


def _base_cdf(mixture: tuple[Tensor, Tensor, Tensor], z: Tensor) -> Tensor:
    r""":math:`F_Z(z) = \sum_k \pi_k \Phi((z - \mu_k) / \sigma_k)`, for ``z`` with shape (*, 1)."""
    logits, loc, log_scale = mixture
    u = ndtr((z[..., None] - loc) * torch.exp(-log_scale))  # (*, 1, K)
    return (logits.softmax(-1) * u).sum(-1).clamp(0, 1)


def _increasing(dist: NormalizingFlow, mixture: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Whether :math:`T` increases, per context: shape (*, 1) for the batch shape (*)."""
    x = dist.transform.inv(_base_quantile(mixture, torch.tensor(_PROBE)))  # (2, *, 1)
    return x[1] >= x[0]


def _support(flow: Flow, like: Tensor) -> tuple[Tensor, Tensor]:
    """The lower and upper support bounds of each column, shape (D,) (infinite: unbounded)."""
    inf = torch.full((flow.features,), torch.inf, dtype=like.dtype, device=like.device)
    if not isinstance(flow, Flow) or flow.support is None:
        return -inf, inf
    support = flow.support()
    return support.lower.to(like), support.upper.to(like)


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Torch's global generator seeded from ``generator`` (restored after), or left alone."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _draws(flow: Flow, c: Tensor | None, samples: int) -> Iterator[tuple[slice, Tensor]]:
    r"""Draws of :math:`p(\cdot \mid c)` by chunk of rows: ``(rows, (S, n, D))``.

    Without a context, one chunk of draws of shape :math:`(S, 1, D)`.
    """
    if c is None:
        yield slice(None), flow().sample((samples,))[:, None]
        return
    rows = max(1, _DRAWS // samples)
    for i in range(0, len(c), rows):
        yield slice(i, i + rows), flow(c[i : i + rows]).sample((samples,))


def _mid_rank(draws: Tensor, y: Tensor) -> Tensor:
    """The share of draws (S, n, D) below y (N, D), ties counted as half; n is N or 1."""
    if draws.shape[1] == 1 and len(y) != 1:  # one set of draws for every row: sort it once
        ordered = draws[:, 0].T.sort(-1).values.contiguous()  # (D, S)
        column = y.T.contiguous()  # (D, N)
        below = torch.searchsorted(ordered, column, side="left")
        above = torch.searchsorted(ordered, column, side="right")
        return (0.5 * (below + above)).T.to(y.dtype) / len(draws)
    below = (draws < y).sum(0) + 0.5 * (draws == y).sum(0)
    return below.to(y.dtype) / len(draws)


@torch.no_grad()
def cdf(
    flow: Flow,
    y: Tensor,
    c: Tensor | None = None,
    *,
    samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The conditional marginal CDF :math:`F_j(y_{nj} \mid c_n)` of every target of every row.

    Exact for a flow of one feature on a normal, Gaussian mixture or MADE MoG base (see the
    module's description); otherwise the Monte Carlo estimate from ``samples`` draws of
    :math:`p(\cdot \mid c_n)` per row, counting ties as half (mid-rank), with standard error
    at most :math:`1 / (2 \sqrt{S})`. Values outside a column's support give 0 or 1. Without
    gradients, in the flow's current mode (call ``flow.eval()`` first for batch norm).

    Args:
        flow: The flow, of :math:`D` features and context size :math:`C`.
        y: The targets, with shape :math:`(N, D)`; infinities give 0 or 1.
        c: The contexts, with shape :math:`(N, C)`, or ``None`` for an unconditional flow
            (every row then has the same distribution).
        samples: The draws :math:`S` per row on the Monte Carlo path.
        generator: Seeds the draws (torch's global generator is left as it was); ``None``:
            torch's global generator.

    Returns:
        :math:`u_{nj} = F_j(y_{nj} \mid c_n)` in :math:`[0, 1]`, with shape :math:`(N, D)`, in
        the flow's dtype, on ``y``'s device.

    Raises:
        ValueError: For ``y`` not of shape :math:`(N, D)` or holding NaN, a context missing,
            unexpected or of the wrong shape, or ``samples < 1``.

    Example:
        >>> from arflows.flows import MAF
        >>> flow = MAF(1, transforms=1).double()   # the identity when built: N(0, 1)
        >>> y = torch.tensor([[0.0], [1.96]], dtype=torch.float64)
        >>> cdf(flow, y).squeeze(-1).round(decimals=3).tolist()
        [0.5, 0.975]
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"expected `y` to be a tensor, got a {type(y).__name__}")
    if y.dim() != 2 or y.shape[1] != flow.features:
        raise ValueError(f"expected `y` with shape (N, {flow.features}), got {tuple(y.shape)}")
    if bool(y.isnan().any()):
        raise ValueError("`y` holds NaN; expected numbers (infinities give 0 or 1)")
    _check_context(flow, c, len(y))
    _check_samples(samples)
    device, dtype = _device_and_dtype(flow)
    yd = y.to(device, dtype)
    cd = None if c is None else c.to(device, dtype)
    lower, upper = _support(flow, yd)
    inside = yd.clamp(lower, upper)
    if len(y) == 0:
        return yd.new_zeros(y.shape).to(y.device)
    probe = _exact(flow(None if cd is None else cd[:1]))
    if probe is not None:
        parts = []
        for i in range(0, len(y), _ROWS):
            dist, mixture = _exact(flow(None if cd is None else cd[i : i + _ROWS]))
            u = _base_cdf(mixture, dist.transform(inside[i : i + _ROWS]))
            parts.append(torch.where(_increasing(dist, mixture), u, 1 - u))
        u = torch.cat(parts)
    else:
        u = torch.empty_like(yd)
        with _seeded(generator, device):
            for rows, draws in _draws(flow, cd, samples):
                u[rows] = _mid_rank(draws, yd[rows])
    # Outside the support (and at infinities) the CDF is 0 or 1 whatever T does there.
    u = torch.where(yd <= lower, 0.0, torch.where(yd >= upper, 1.0, u))
    return u.to(y.device)


@torch.no_grad()
def quantiles(
    flow: Flow,
    q: Sequence[float] | Tensor,
    c: Tensor | None = None,
    *,
    samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The conditional marginal quantiles :math:`F_j^{-1}(q_k \mid c_n)` of every target.

    Exact for a flow of one feature on a normal, Gaussian mixture or MADE MoG base: the
    base's quantile (to the dtype's precision) mapped through :math:`T^{-1}`, one inverse
    pass of the flow for all ``q``. Otherwise the empirical quantiles (linear interpolation
    between order statistics) of ``samples`` draws of :math:`p(\cdot \mid c_n)` per row.
    Without gradients, in the flow's current mode (call ``flow.eval()`` first for batch norm).

    Args:
        flow: The flow, of :math:`D` features and context size :math:`C`.
        q: The probabilities, :math:`Q` of them, each strictly between 0 and 1.
        c: The contexts, with shape :math:`(N, C)`, or ``None`` for an unconditional flow
            (then :math:`N = 1`).
        samples: The draws :math:`S` per row on the Monte Carlo path.
        generator: Seeds the draws (torch's global generator is left as it was); ``None``:
            torch's global generator.

    Returns:
        The quantiles, with shape :math:`(N, Q, D)`, in the flow's dtype, on ``c``'s device
        (the flow's without a context).

    Raises:
        ValueError: For probabilities outside :math:`(0, 1)`, a context missing, unexpected
            or of the wrong shape, or ``samples < 1``.

    Example:
        >>> from arflows.flows import MAF
        >>> flow = MAF(1, transforms=1).double()   # the identity when built: N(0, 1)
        >>> quantiles(flow, [0.5, 0.975]).squeeze().round(decimals=3).tolist()
        [0.0, 1.96]
    """
    probs = _probabilities(q)
    _check_context(flow, c, None)
    _check_samples(samples)
    device, dtype = _device_and_dtype(flow)
    cd = None if c is None else c.to(device, dtype)
    out_device = device if c is None else c.device
    n = 1 if c is None else len(c)
    if n == 0:
        return torch.zeros(0, len(probs), flow.features, dtype=dtype, device=out_device)
    if _exact(flow(None if cd is None else cd[:1])) is not None:
        parts = []
        for i in range(0, n, _ROWS):
            dist, mixture = _exact(flow(None if cd is None else cd[i : i + _ROWS]))
            both = dist.transform.inv(_base_quantile(mixture, torch.cat((probs, 1 - probs))))
            up, down = both.reshape(2, len(probs), -1).unbind(0)  # (Q, n) each
            parts.append(torch.where(_increasing(dist, mixture).reshape(1, -1), up, down).T)
        return torch.cat(parts)[..., None].to(out_device)  # (N, Q, 1)
    parts = []
    with _seeded(generator, device):
        for _, draws in _draws(flow, cd, samples):
            qs = torch.quantile(draws, probs.to(device, dtype), dim=0)  # (Q, n, D)
            parts.append(qs.transpose(0, 1))
    return torch.cat(parts).to(out_device)


@torch.no_grad()
def mean(
    flow: Flow,
    c: Tensor | None = None,
    *,
    samples: int = 1000,
    generator: torch.Generator | None = None,
    apply: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""The Monte Carlo conditional mean :math:`\mathbb{E}[y \mid c_n]` of every target.

    The average of ``samples`` draws of :math:`p(\cdot \mid c_n)` per row (standard error
    :math:`\sigma_j / \sqrt{S}`). Without gradients, in the flow's current mode.

    Args:
        flow: The flow, of :math:`D` features and context size :math:`C`.
        c: The contexts, with shape :math:`(N, C)`, or ``None`` for an unconditional flow
            (then :math:`N = 1`).
        samples: The draws :math:`S` per row.
        generator: Seeds the draws (torch's global generator is left as it was); ``None``:
            torch's global generator.
        apply: A function of the draws, with shape :math:`(S, n, D)`, applied before
            averaging (for example one that puts them back onto a grid), or ``None``.

    Returns:
        The means, with shape :math:`(N, D)`, in the flow's dtype, on ``c``'s device (the
        flow's without a context).

    Raises:
        ValueError: For a context missing, unexpected or of the wrong shape, or
            ``samples < 1``.
    """
    _check_context(flow, c, None)
    _check_samples(samples)
    device, dtype = _device_and_dtype(flow)
    cd = None if c is None else c.to(device, dtype)
    parts = []
    with _seeded(generator, device):
        for _, draws in _draws(flow, cd, samples):
            parts.append((draws if apply is None else apply(draws)).mean(0))
    out = torch.cat(parts) if parts else torch.zeros(0, flow.features, dtype=dtype)
    return out.to(device if c is None else c.device)
