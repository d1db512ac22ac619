r"""Neural spline flows: rational-quadratic spline transformers, autoregressive or coupling."""

from __future__ import annotations

__all__ = ["NSF"]

from collections.abc import Sequence
from typing import ClassVar

from ..transforms import MonotonicRQSTransform, support_bounds
from .autoregressive import MAF, autoregressive_layers
from .bases import StandardNormal
from .coupling import coupling_layers
from .lazy import Flow


class NSF(Flow):
    r"""Neural spline flow: monotone rational-quadratic splines, MADE- or coupling-conditioned.

    Each layer maps :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` with :math:`h` a spline of
    ``bins`` bins on :math:`[-B, B]` and the identity outside (see
    :class:`~arflows.transforms.MonotonicRQSTransform`); standardised data should mostly lie
    inside :math:`[-B, B]`.

    Direction costs (network passes per layer). Autoregressive (the default, a :class:`MAF`
    with splines): ``log_prob`` is one pass, ``sample`` one sweep (about one pass, sequential
    in the features; ``inverse="sweep"``). Coupling (``coupling=True``, a
    :class:`~arflows.flows.RealNVP` with splines: :math:`y_A = x_A`,
    :math:`y_B = h(x_B; \theta(x_A, c))` with alternating halves): one pass both ways, fully
    parallel, but each layer is less expressive.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        bins: The number of spline bins :math:`K`.
        bound: The half-width :math:`B` of the splines' interval.
        coupling: Coupling layers with dense networks instead of MADE layers.
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Further :class:`MAF` options (``randperm``, ``residual``, ``inverse``, ...),
            or with ``coupling=True`` :class:`~arflows.flows.RealNVP` options (``randperm``,
            ``generator``, ``embedding``, ``activation``).

    References:
        Neural Spline Flows (Durkan et al., 2019)
        https://arxiv.org/abs/1906.04032

    Example:
        >>> flow = NSF(3, context=2, transforms=2, bins=6, hidden_features=(16, 16))
        >>> dist = flow(torch.randn(5, 2))
        >>> dist.log_prob(torch.randn(5, 3)).shape, dist.sample((4,)).shape
        (torch.Size([5]), torch.Size([4, 5, 3]))
        >>> flow = NSF(3, transforms=2, bins=6, hidden_features=(16,), coupling=True)
        >>> flow().sample((4,)).shape
        torch.Size([4, 3])
    """

    #: The family whose options ``**kwargs`` takes by default (autoregressive layers), which
    #: :func:`~arflows.flows.flow_options` lists after NSF's own.
    options_from: ClassVar[type[Flow]] = MAF

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        *,
        bins: int = 8,
        bound: float = 5.0,
        coupling: bool = False,
        **kwargs,
    ):
        # A clear error for bad `bins` or `bound` before any network is built.
        MonotonicRQSTransform.param_shapes(bins=bins, bound=bound)
        spline = dict(
            univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=bins, bound=bound)
        )
        embedding = kwargs.pop("embedding", None)
        support = kwargs.pop("support", None)
        if coupling:
            if support is not None:
                support_bounds(support, features)  # one entry per feature, before any layer
            layers = coupling_layers(
                features, context, transforms, hidden_features=hidden_features, **spline, **kwargs
            )
            lazy_base = StandardNormal(features)
        else:
            layers, lazy_base = autoregressive_layers(
                features,
                context,
                transforms,
                hidden_features,
                support=support,
                flow_name=type(self).__name__,
                **spline,
                **kwargs,
            )
        super().__init__(
            layers,
            lazy_base,
            embedding=embedding,
            support=support,
            features=features,
            context=context,
        )
