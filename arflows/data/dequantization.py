r"""Uniform dequantization of integer-valued columns, and discrete likelihoods of flows.

A continuous density :math:`p` fitted to :math:`x = k + u`, :math:`u \sim U[0, 1)^d`, defines
a discrete distribution on the integer columns,

.. math:: P(k) = \int_{[0, 1)^d} p(k + u) \, du,

and maximising :math:`\mathbb{E}_u \log p(k + u)` maximises a lower bound on
:math:`\log P(k)` (Jensen's inequality), so discrete data get a valid likelihood instead of
the degenerate spikes a density would put on integers.

References:
    A note on the evaluation of generative models (Theis et al., 2016)
    https://arxiv.org/abs/1511.01844
"""

from __future__ import annotations

__all__ = ["dequantize", "discrete_log_prob", "integer_columns"]

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution


def _check_data(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected `{name}` to be a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"expected `{name}` with shape (*, D), got a scalar")


def integer_columns(x: Tensor) -> list[int]:
    r"""The columns whose values are all (finite) integers.

    Args:
        x: The data, with shape :math:`(*, D)`. Integer and boolean dtypes have only integer
            columns.

    Returns:
        The indices of the integer-valued columns, ascending.

    Example:
        >>> integer_columns(torch.tensor([[0.0, 1.5, 3.0], [2.0, 0.5, -1.0]]))
        [0, 2]
    """
    _check_data(x, "x")
    if not (x.is_floating_point() or x.is_complex()):
        return list(range(x.shape[-1]))
    flat = x.reshape(-1, x.shape[-1])
    whole = (torch.isfinite(flat) & (flat == flat.round())).all(dim=0)
    return whole.nonzero().flatten().tolist()


def _columns(columns: Sequence[int] | None, x: Tensor) -> list[int]:
    d = x.shape[-1]
    if columns is None:
        return integer_columns(x)
    if isinstance(columns, int | str) or not isinstance(columns, Sequence):
        raise TypeError(f"expected `columns` to be a list of ints or None, got {columns!r}")
    out = []
    for col in columns:
        if isinstance(col, bool) or not isinstance(col, int) or not -d <= col < d:
            raise ValueError(f"expected `columns` entries to be ints in 0..{d - 1}, got {col!r}")
        out.append(col % d)
    if len(set(out)) != len(out):
        raise ValueError(f"expected distinct `columns`, got {list(columns)}")
    return out


def dequantize(
    x: Tensor, columns: Sequence[int] | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Adds uniform noise :math:`u \sim U[0, 1)` to integer-valued columns.

    Integer :math:`k` becomes :math:`k + u`, so the cell :math:`[k, k + 1)` carries the mass of
    :math:`k` and :math:`\lfloor x \rfloor` recovers it. Draw fresh noise every epoch.

    Args:
        x: The data, with shape :math:`(*, D)`; integer dtypes become the default float dtype.
        columns: The columns to dequantize. Defaults to :func:`integer_columns` of ``x``.
        generator: The random generator of the noise.

    Returns:
        A floating-point copy of ``x`` with noise added to ``columns``, shape :math:`(*, D)`.

    Example:
        >>> k = torch.tensor([[0.0, 0.5], [3.0, -1.5]])
        >>> x = dequantize(k)   # column 0 is integer-valued, column 1 is not
        >>> torch.equal(x.floor()[:, 0], k[:, 0]), torch.equal(x[:, 1], k[:, 1])
        (True, True)
    """
    _check_data(x, "x")
    cols = _columns(columns, x)
    x = x.clone() if x.is_floating_point() else x.to(torch.get_default_dtype())
    if cols:
        shape = (*x.shape[:-1], len(cols))
        noise = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
        x[..., cols] += noise
    return x


def discrete_log_prob(
    flow: Distribution | Callable[[Tensor], Tensor],
    k: Tensor,
    columns: Sequence[int] | None = None,
    *,
    samples: int = 1000,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Monte Carlo estimate of the discrete log-probability of integer columns.

    With :math:`u_s \sim U[0, 1)^d` (the uniform proposal, whose density on the cell is 1),

    .. math:: \log P(k) = \log \int_{[0, 1)^d} p(k + u)\, du
              \approx \operatorname{logsumexp}_s \log p(k + u_s) - \log S,

    the log of an unbiased estimate of :math:`P(k)` (an average in probability space); it is
    consistent as :math:`S \to \infty` and, by the delta method, biased low by about
    :math:`\mathrm{Var}_u[p(k + u)] / (2 S P(k)^2)`.
    The training objective :math:`\mathbb{E}_u \log p(k + u)` is a lower bound on
    :math:`\log P(k)` (Theis et al., 2016), often a loose one; this estimate is the one to
    report. Columns not in ``columns`` stay continuous: the result is then the log of a mixed
    probability (mass in the integer columns, density in the others).

    Args:
        flow: A distribution (its ``log_prob`` is used) or a function ``x -> log p(x)`` with
            shapes :math:`(S, *, D) \to (S, *)`.
        k: The integer values, with shape :math:`(*, D)`.
        columns: The integer columns. Defaults to :func:`integer_columns` of ``k``.
        samples: The number :math:`S` of noise draws per point.
        chunk_size: The most draws evaluated at once (memory scales with it).
        generator: The random generator of the noise.

    Returns:
        The estimates of :math:`\log P(k)`, with shape :math:`(*)` (broadcast with the
        distribution's batch shape).

    Example:
        >>> normal = torch.distributions.Normal(torch.zeros(1), torch.ones(1))
        >>> dist = torch.distributions.Independent(normal, 1)
        >>> est = discrete_log_prob(dist, torch.tensor([[0.0]]), samples=4000)
        >>> exact = (normal.cdf(torch.ones(1)) - normal.cdf(torch.zeros(1))).log()
        >>> torch.allclose(est, exact, atol=0.01)
        True
    """
    _check_data(k, "k")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"expected `samples` to be an int >= 1, got {samples!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"expected `chunk_size` to be an int >= 1, got {chunk_size!r}")
    if isinstance(flow, Distribution):
        log_prob = flow.log_prob
    elif callable(flow):
        log_prob = flow
    else:
        raise TypeError(f"expected a distribution or a callable, got {type(flow).__name__}")
    cols = _columns(columns, k)
    if not k.is_floating_point():
        k = k.to(torch.get_default_dtype())
    if isinstance(flow, Distribution):  # the draws must not be mistaken for a batch of contexts
        batch = torch.broadcast_shapes(k.shape[:-1], flow.batch_shape)
        k = k.expand(*batch, k.shape[-1])
    parts = []
    for start in range(0, samples, chunk_size):
        n = min(chunk_size, samples - start)
        x = k.expand(n, *k.shape).clone()  # (S', *, D)
        if cols:
            shape = (*x.shape[:-1], len(cols))
            x[..., cols] += torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
        parts.append(log_prob(x))  # (S', *)
    return torch.logsumexp(torch.cat(parts), dim=0) - math.log(samples)
