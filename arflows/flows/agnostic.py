r"""Order-agnostic MADE flows: training over several masks, and their ensemble.

A MADE with ``orders=K`` holds :math:`K` mask sets (:class:`~arflows.nn.MADE`). Training
with a different set per minibatch fits :math:`K` autoregressive models that share weights;
at evaluation their equal-weight mixture

.. math:: p(x) = \frac{1}{K} \sum_{k=1}^{K} p_k(x), \qquad
          \log p(x) = \operatorname{logsumexp}_k \log p_k(x) - \log K,

is a normalised density that is usually better than any single set. Set :math:`k` is used by
every layer at once, so each component is an ordinary flow.

References:
    MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015), section 4
    https://arxiv.org/abs/1502.03509
"""

from __future__ import annotations

__all__ = ["MaskEnsemble", "MaskMixture", "OrderAgnosticMAF", "mask_orders", "select_masks"]

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from ..nn import MADE
from .autoregressive import MAF
from .lazy import LazyDistribution


def _mades(module: nn.Module) -> list[MADE]:
    return [m for m in module.modules() if isinstance(m, MADE)]


def mask_orders(module: nn.Module) -> int:
    r"""The number of mask sets :math:`K` shared by every MADE inside ``module``.

    Raises:
        ValueError: If ``module`` holds no MADE, or MADEs with different numbers of sets.
    """
    counts = sorted({m.orders for m in _mades(module)})
    if not counts:
        raise ValueError(f"expected a module with MADE conditioners, got {type(module).__name__}")
    if len(counts) > 1:
        raise ValueError(f"expected every MADE to hold the same number of orders, got {counts}")
    return counts[0]


def select_masks(module: nn.Module, index: int) -> None:
    r"""Makes mask set ``index`` the active one in every MADE inside ``module``."""
    for made in _mades(module):
        made.select(index)


@contextmanager
def _selected(mades: Sequence[MADE], index: int) -> Iterator[None]:
    previous = [m.mask_index for m in mades]
    for m in mades:
        m.select(index)
    try:
        yield
    finally:
        for m, k in zip(mades, previous, strict=True):
            m.select(k)


class MaskMixture(Distribution):
    r"""Equal-weight mixture of one flow under several mask sets.

    .. math:: \log p(x) = \operatorname{logsumexp}_{k \in S} \log p_k(x) - \log |S|.

    Every evaluation activates its set first (and restores the previous selection), so the
    distribution stays correct whatever else selects masks meanwhile. ``rsample`` draws the
    component of each sample uniformly (torch's global generator) and then a reparameterised
    sample of that component: an exact mixture sample, differentiable in the flow's parameters
    because the weights are fixed.

    Args:
        build: Builds the single-set distribution from the context, such as
            :meth:`arflows.flows.Flow.forward`.
        c: The context, with shape :math:`(*, C)`, or ``None``.
        mades: The MADEs whose mask sets are switched.
        indices: The mask sets :math:`S` mixed.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        build: Callable[[Tensor | None], Distribution],
        c: Tensor | None,
        mades: Sequence[MADE],
        indices: Sequence[int],
    ):
        self.indices = [int(k) for k in indices]
        if not self.indices:
            raise ValueError("expected at least one mask set in `indices`, got none")
        self._build, self._c, self._mades = build, c, list(mades)
        self.components = []
        for k in self.indices:
            with _selected(self._mades, k):
                self.components.append(build(c))
        first = self.components[0]
        super().__init__(first.batch_shape, first.event_shape, validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The mixture log-density, with shape :math:`(*)` for ``x`` with shape :math:`(*, D)`."""
        parts = []
        for k, dist in zip(self.indices, self.components, strict=True):
            with _selected(self._mades, k):
                parts.append(dist.log_prob(x))
        if len(parts) == 1:
            return parts[0]
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))

    def rsample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        r"""Mixture samples, with shape ``sample_shape + batch_shape + event_shape``."""
        sample_shape = Size(sample_shape)
        if len(self.indices) == 1:
            with _selected(self._mades, self.indices[0]):
                return self.components[0].rsample(sample_shape)
        shape = sample_shape + self.batch_shape
        which = torch.randint(len(self.indices), shape).flatten()  # component per sample
        cells = self.batch_shape.numel()
        c = self._c
        per_row = c is not None and c.dim() > 1 and c.shape[:-1] == self.batch_shape
        if not per_row and self.batch_shape:
            # A batch not laid out by the context: draw everything from every component.
            draws = torch.stack([self._rsample(i, sample_shape) for i in range(len(self.indices))])
            pick = which.to(draws.device).view(1, *shape, *(1,) * len(self.event_shape))
            return draws.gather(0, pick.expand(1, *draws.shape[1:]))[0]
        chunks, positions = [], []
        for i in range(len(self.indices)):
            rows = (which == i).nonzero().flatten()
            if rows.numel() == 0:
                continue
            if per_row:
                rows_c = c.reshape(cells, c.shape[-1])[rows.to(c.device) % cells]  # (n_i, C)
                with _selected(self._mades, self.indices[i]):
                    chunks.append(self._build(rows_c).rsample())
            else:
                chunks.append(self._rsample(i, Size([rows.numel()])))
            positions.append(rows)
        x = torch.cat(chunks)  # (N, *event), grouped by component
        order = torch.cat(positions).argsort().to(x.device)
        return x[order].reshape(*shape, *self.event_shape)

    def _rsample(self, i: int, sample_shape: Size) -> Tensor:
        with _selected(self._mades, self.indices[i]):
            return self.components[i].rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples and their mixture log-density."""
        if len(self.indices) == 1:
            with _selected(self._mades, self.indices[0]):
                return self.components[0].rsample_and_log_prob(sample_shape)
        x = self.rsample(sample_shape)
        return x, self.log_prob(x)

    def sample_and_log_prob(
        self, sample_shape: Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        r"""Samples and their mixture log-density, without gradients."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)

    def expand(self, batch_shape: Size, _instance: object = None) -> MaskMixture:  # noqa: D102
        raise NotImplementedError(
            "a flow's batch shape comes from its context; call the flow with a batch of contexts"
        )

    def __repr__(self) -> str:
        return (
            f"MaskMixture(indices={self.indices}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )


def _distribution(
    owner: nn.Module, build: Callable[[Tensor | None], Distribution], c: Tensor | None
) -> MaskMixture:
    """Training: the next mask set alone (and selected); evaluation: all sets mixed."""
    mades, orders = _mades(owner), mask_orders(owner)
    if owner.training:
        index = owner.steps % orders
        owner.steps += 1
        for made in mades:
            made.select(index)
        return MaskMixture(build, c, mades, [index])
    return MaskMixture(build, c, mades, range(orders))


class MaskEnsemble(LazyDistribution):
    r"""Order-agnostic training and mask ensembling for any flow whose MADEs hold :math:`K` sets.

    In training mode, call :math:`n` (counted by :attr:`steps`) uses mask set :math:`n \bmod K`
    in every MADE, a different ordering per minibatch as in the MADE paper, and returns that
    single flow's distribution (a one-component :class:`MaskMixture`). In evaluation mode it
    returns the equal-weight mixture over all :math:`K` sets, which costs :math:`K` network
    passes per ``log_prob``.

    Args:
        flow: The flow, for example ``IAF(..., orders=K)``.

    Example:
        >>> from arflows import IAF
        >>> ensemble = MaskEnsemble(IAF(3, transforms=2, hidden_features=(16,), orders=3))
        >>> ensemble.eval()(None).log_prob(torch.randn(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, flow: LazyDistribution):
        super().__init__()
        self.orders = mask_orders(flow)
        self.flow = flow
        self.steps = 0

    def forward(self, c: Tensor | None = None) -> MaskMixture:
        r"""The distribution :math:`p(\cdot \mid c)` (see the class description).

        Args:
            c: The context, with shape :math:`(*, C)`, or ``None``.
        """
        return _distribution(self, self.flow, c)


class OrderAgnosticMAF(MAF):
    r"""A :class:`MAF` trained over :math:`K` orders per layer and evaluated as their ensemble.

    Each MADE holds ``orders`` mask sets: set 0 uses the layer's usual order (alternating, or
    random with ``randperm``), the others random orders with their own hidden degrees, drawn
    with ``generator``. In training mode, call :math:`n` (counted by :attr:`steps`) uses set
    :math:`n \bmod K` in every layer (a different ordering per minibatch) and returns that
    flow's distribution. In evaluation mode the flow is the equal-weight mixture over the
    sets, :math:`\log p(x) = \operatorname{logsumexp}_k \log p_k(x) - \log K`, which is
    normalised, samples exactly (the component drawn per sample) and costs :math:`K` times a
    MAF's ``log_prob``.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        orders: The number of mask sets :math:`K` per layer.
        randperm: Random orders for set 0 instead of alternating natural and reversed ones.
        generator: The random generator for the orders and random degrees.
        embedding: A module applied to the context once per call (see
            :class:`~arflows.flows.Flow`).
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Options of :class:`~arflows.flows.MaskedAutoregressiveTransform`.

    References:
        MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
        https://arxiv.org/abs/1502.03509

    Example:
        >>> flow = OrderAgnosticMAF(3, transforms=2, hidden_features=(16,), orders=4)
        >>> [flow().indices for _ in range(5)]   # training mode: one set per call, cycling
        [[0], [1], [2], [3], [0]]
        >>> flow.eval()().indices
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        *,
        orders: int = 4,
        randperm: bool = False,
        generator: torch.Generator | None = None,
        embedding: nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(
            features,
            context,
            transforms,
            hidden_features,
            randperm=randperm,
            generator=generator,
            embedding=embedding,
            orders=orders,
            **kwargs,
        )
        self.orders = orders
        self.steps = 0

    def forward(self, c: Tensor | None = None) -> MaskMixture:
        r"""The distribution :math:`p(\cdot \mid c)` (see the class description).

        Args:
            c: The context, with shape :math:`(*, C)`, or ``None`` for unconditional flows.
        """
        return _distribution(self, super().forward, c)
