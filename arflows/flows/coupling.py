r"""Coupling flows: the two-group special case of autoregressive flows (Real NVP, NICE)."""

from __future__ import annotations

__all__ = [
    "NICE",
    "MaskedCouplingTransform",
    "RealNVP",
    "coupling_layers",
]

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
from torch import BoolTensor, Tensor, nn

from ..nn import DenseNN
from ..nn.made import check_int, split_params
from ..transforms import CouplingTransform, MonotonicAffineTransform, Transform, support_bounds
from ..transforms.coupling import check_coupling_mask
from .autoregressive import check_univariate, univariate_map
from .bases import StandardNormal
from .lazy import Flow, LazyTransform, Unconditional, check_sizes


class MaskedCouplingTransform(LazyTransform):
    r"""Lazy coupling transform :math:`y_A = x_A,\ y_B = h(x_B; \theta(x_A, c))` with a dense net.

    A :class:`~arflows.nn.DenseNN` reads the identity group :math:`x_A` and the context and
    returns the unconstrained parameters of the ``univariate`` map of every transformed feature;
    its last layer starts at zero, so the transform starts as the identity (for univariate maps
    whose zero parameters are the identity). Forward and inverse are **one** network pass each.

    With no identity group (one feature, or a ``mask`` of all True) the parameters depend on the
    context only; with no context either they are learned constants, and the layer is a plain
    elementwise map.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        mask: Which features are transformed (group :math:`B`), a boolean tensor of shape
            :math:`(D,)`. Defaults to the second half, features :math:`\lfloor D/2 \rfloor`
            to :math:`D - 1` (the only feature when :math:`D = 1`).
        univariate: The monotone scalar map class, with a ``param_shapes(**kwargs)`` method.
        univariate_kwargs: Keyword arguments of ``univariate`` and its ``param_shapes``.
        hidden_features: The hidden widths of the dense network.
        activation: The activation class of the dense network.

    Example:
        >>> t = MaskedCouplingTransform(3, context=2)
        >>> x, c = torch.randn(7, 3), torch.randn(7, 2)
        >>> torch.equal(t(c)(x), x)   # identity at initialisation
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        mask: Sequence[bool] | BoolTensor | None = None,
        univariate: type[Transform] = MonotonicAffineTransform,
        univariate_kwargs: dict | None = None,
        hidden_features: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        check_sizes(features, context, hidden_features)
        check_univariate(univariate)
        if mask is None:
            mask = torch.arange(features) >= features // 2
        mask = torch.as_tensor(mask)
        check_coupling_mask(mask, features)
        self.register_buffer("mask", mask.clone())
        self.univariate = univariate
        self.univariate_kwargs = dict(univariate_kwargs or {})
        self.shapes = univariate.param_shapes(**self.univariate_kwargs)
        self.param_dims = tuple(math.prod(shape) for shape in self.shapes)
        self.context = context
        identity, transformed = int((~mask).sum()), int(mask.sum())
        if identity + context > 0:
            self.net = DenseNN(
                identity, transformed, hidden_features, context, self.param_dims, activation
            )
            self.constant = None
        else:  # nothing to condition on: learned constants, zero so the layer starts at identity
            self.net = None
            self.constant = nn.Parameter(torch.zeros(transformed, sum(self.param_dims)))

    def meta(self, x_a: Tensor, c: Tensor | None) -> Transform:
        r"""The elementwise map :math:`h(\cdot; \theta(x_A, c))` of the transformed features.

        Args:
            x_a: The identity group :math:`x_A`, with shape :math:`(*, |A|)`.
            c: The context, with shape :math:`(*, C)`, or ``None``.

        Returns:
            A transform of :math:`(*, |B|)` values.
        """
        if self.net is not None:
            params = self.net(x_a, c)  # (*, |B|) or (*, |B|, k) each
        else:
            if c is not None:
                raise ValueError("this layer has no context (context=0) but a context was given")
            params = split_params(self.constant, self.param_dims)  # (|B|,) or (|B|, k) each
        return univariate_map(self.univariate, self.univariate_kwargs, self.shapes, params)

    def forward(self, c: Tensor | None = None) -> CouplingTransform:  # noqa: D102
        return CouplingTransform(partial(self.meta, c=c), self.mask)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"(mask): {self.mask.int().tolist()}, "
            f"(univariate): {self.univariate.__name__}({self.univariate_kwargs})"
        )


def _masks(
    features: int, transforms: int, randperm: bool, generator: torch.Generator | None
) -> Iterator[BoolTensor]:
    """Alternating halves: layers 2k and 2k + 1 transform complementary halves of an order."""
    for i in range(transforms):
        if i % 2 == 0:
            if randperm:
                order = torch.randperm(features, generator=generator)
            else:
                order = torch.arange(features)
            mask = torch.zeros(features, dtype=torch.bool)
            mask[order[features // 2 :]] = True
        elif features > 1:  # one feature has no complement: it is transformed by every layer
            mask = ~mask
        yield mask


def coupling_layers(
    features: int,
    context: int = 0,
    transforms: int = 5,
    *,
    randperm: bool = False,
    generator: torch.Generator | None = None,
    **kwargs,
) -> list[MaskedCouplingTransform]:
    r"""Coupling layers whose masks alternate, so every feature is transformed every two layers.

    Layer :math:`2k` transforms the second half of an order (features
    :math:`\lfloor D/2 \rfloor` onwards) given the first; layer :math:`2k + 1` the first half
    given the second. The order is natural, or a fresh random permutation for each pair of
    layers with ``randperm``.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        transforms: The number of layers.
        randperm: Random halves (drawn with ``generator``) instead of the natural ones.
        generator: The random generator for ``randperm``.
        kwargs: Options of :class:`MaskedCouplingTransform` (``univariate``,
            ``univariate_kwargs``, ``hidden_features``, ``activation``).

    Returns:
        The ``transforms`` lazy coupling layers, data side first.

    Example:
        >>> [t.mask.int().tolist() for t in coupling_layers(3, transforms=3)]
        [[0, 1, 1], [1, 0, 0], [0, 1, 1]]
    """
    check_int("transforms", transforms, 1)
    check_sizes(features, context, kwargs.get("hidden_features", ()))
    return [
        MaskedCouplingTransform(features, context, mask=mask, **kwargs)
        for mask in _masks(features, transforms, randperm, generator)
    ]


class RealNVP(Flow):
    r"""Real NVP: affine coupling layers with alternating halves on a standard normal.

    Each layer maps :math:`y_A = x_A`, :math:`y_B = h(x_B; \theta(x_A, c))` with a dense
    network :math:`\theta` and, by default, the affine
    :math:`h(x; t, \tilde s) = x e^{s} + t` (:class:`~arflows.transforms.MonotonicAffineTransform`;
    any univariate class with ``param_shapes`` can replace it, see ``univariate``). Layers
    alternate the halves (see :func:`coupling_layers`).

    Direction costs (network passes per layer): ``log_prob`` is **one** pass and ``sample`` /
    ``rsample_and_log_prob`` are **one** pass too: both directions are parallel. The price is
    expressiveness: each layer updates half of the features, from the other half only, so
    coupling flows need more layers than autoregressive ones for the same fit.

    Args:
        features: The number of features :math:`D`. With :math:`D = 1` there is nothing to
            condition on: each layer's parameters depend on the context only, or are learned
            constants without one.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of coupling layers.
        hidden_features: The hidden widths of each dense network.
        univariate: The monotone scalar map class :math:`h`.
        univariate_kwargs: Its keyword arguments (e.g. ``scale="softplus"``).
        randperm: Random halves for each pair of layers (drawn with ``generator``).
        generator: The random generator for ``randperm``.
        embedding: A module applied to the context once per call (see :class:`Flow`);
            ``context`` is then its output size.
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Further :class:`MaskedCouplingTransform` options (``activation``).

    References:
        Density estimation using Real NVP (Dinh et al., 2017)
        https://arxiv.org/abs/1605.08803

    Example:
        >>> flow = RealNVP(3, context=2, transforms=2, hidden_features=(16, 16))
        >>> dist = flow(torch.randn(5, 2))
        >>> dist.log_prob(torch.randn(5, 3)).shape, dist.sample((4,)).shape
        (torch.Size([5]), torch.Size([4, 5, 3]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        *,
        univariate: type[Transform] = MonotonicAffineTransform,
        univariate_kwargs: dict | None = None,
        randperm: bool = False,
        generator: torch.Generator | None = None,
        embedding: nn.Module | None = None,
        support: Sequence | None = None,
        **kwargs,
    ):
        if support is not None:
            support_bounds(support, features)  # one entry per feature, checked before any layer
        layers = coupling_layers(
            features,
            context,
            transforms,
            randperm=randperm,
            generator=generator,
            univariate=univariate,
            univariate_kwargs=univariate_kwargs,
            hidden_features=hidden_features,
            **kwargs,
        )
        super().__init__(
            layers,
            StandardNormal(features),
            embedding=embedding,
            support=support,
            features=features,
            context=context,
        )


def _diagonal_scale(log_scale: Tensor) -> Transform:
    return MonotonicAffineTransform(torch.zeros_like(log_scale), log_scale)


class NICE(RealNVP):
    r"""NICE: additive coupling layers and a final learned diagonal scaling.

    Each coupling layer is volume preserving, :math:`y_A = x_A`,
    :math:`y_B = x_B + t(x_A, c)` (log-determinant 0; ``scale="none"`` of
    :class:`~arflows.transforms.MonotonicAffineTransform`). As in the paper, a last layer
    :math:`z = x \odot e^{s}` with a learned vector :math:`s` (unconditional, soft-clipped to
    :math:`[-5, 5]`, zero at initialisation) lets the flow change volume; its log-determinant
    :math:`\sum_i s_i` is the whole flow's. Direction costs are those of :class:`RealNVP`: one
    network pass per layer both ways.

    Args:
        features: The number of features :math:`D` (see :class:`RealNVP` for :math:`D = 1`).
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of coupling layers (4 in the paper).
        hidden_features: The hidden widths of each dense network.
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Further :class:`RealNVP` options (``randperm``, ``generator``, ``embedding``,
            ``activation``).

    References:
        NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        https://arxiv.org/abs/1410.8516

    Example:
        >>> flow = NICE(4, transforms=2, hidden_features=(16,))
        >>> x = torch.randn(6, 4)
        >>> torch.allclose(flow().log_prob(x), flow.base().log_prob(x))   # identity at init
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 4,
        hidden_features: Sequence[int] = (64, 64),
        **kwargs,
    ):
        super().__init__(
            features,
            context,
            transforms,
            hidden_features,
            univariate=MonotonicAffineTransform,
            univariate_kwargs=dict(scale="none"),
            **kwargs,
        )
        self.transforms.append(Unconditional(_diagonal_scale, torch.zeros(features), buffer=False))
