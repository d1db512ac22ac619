r"""Masked autoregressive flows: the lazy MADE transform, :class:`MAF` and :class:`IAF`."""

from __future__ import annotations

__all__ = ["IAF", "MAF", "MaskedAutoregressiveTransform", "autoregressive_layers"]

import math
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import LongTensor, Tensor, nn

from ..nn import MADE, made_sweep
from ..nn.made import check_int
from ..transforms import (
    AutoregressiveTransform,
    MonotonicAffineTransform,
    Transform,
    support_bounds,
)
from .bases import StandardNormal
from .gmm import GaussianMixture
from .lazy import Flow, LazyDistribution, LazyInverse, LazyTransform, check_sizes
from .linear import LULinear
from .marginal import MarginalSpline
from .mixture import MADEMoG
from .normalization import ActNorm, BatchNorm

_INVERSES = ("sweep", "passes")


def check_univariate(univariate: object) -> None:
    """Refuses a ``univariate`` that is not a Transform class declaring ``param_shapes``."""
    if not (
        isinstance(univariate, type)
        and issubclass(univariate, Transform)
        and callable(getattr(univariate, "param_shapes", None))
    ):
        raise TypeError(
            "expected `univariate` to be a Transform class with a `param_shapes` method (such "
            f"as MonotonicAffineTransform or MonotonicRQSTransform), got {univariate!r}"
        )


def univariate_map(
    univariate: type[Transform],
    kwargs: dict,
    shapes: Sequence[torch.Size],
    params: Sequence[Tensor],
) -> Transform:
    r"""A univariate map from a conditioner's flat outputs.

    Args:
        univariate: The monotone scalar map class.
        kwargs: Its keyword arguments.
        shapes: Its ``param_shapes(**kwargs)``: the shape of each parameter per feature.
        params: One tensor per shape, :math:`(*, F)` for scalars or :math:`(*, F, k)` with
            :math:`k` the product of the shape; reshaped to :math:`(*, F, *shape)`.
    """
    shaped = []
    for p, s in zip(params, shapes, strict=True):
        shape = (*p.shape[: p.dim() - (math.prod(s) > 1)], *s)
        shaped.append(p if p.shape == shape else p.reshape(shape))  # mostly shaped already
    return univariate(*shaped, **kwargs)


class MaskedAutoregressiveTransform(LazyTransform):
    r"""Lazy autoregressive transform :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` with a MADE.

    The MADE computes the unconstrained parameters of every feature in one pass; the
    ``univariate`` class turns them into monotone scalar maps and declares their layout.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        order: The rank of each feature in the autoregressive order. Defaults to natural.
        univariate: The monotone scalar map class, with a ``param_shapes(**kwargs)`` method.
        univariate_kwargs: Keyword arguments of ``univariate`` and its ``param_shapes``.
        passes: The fixed-point passes of the ``"passes"`` inverse (see
            :class:`~arflows.transforms.AutoregressiveTransform`); defaults to :math:`D`.
        hidden_features: The MADE's hidden widths.
        inverse: How :math:`y \mapsto x` is computed. ``"sweep"``: the exact one-sweep MADE
            inverse (:func:`~arflows.nn.made_sweep`), about the cost of one network pass.
            ``"passes"``: the fixed-point iteration, up to :math:`D` network passes (kept for
            comparison and benchmarks).
        kwargs: Further :class:`~arflows.nn.MADE` options (``activation``, ``residual``,
            ``skip``, ``hidden_degrees``, ``generator``).

    Example:
        >>> t = MaskedAutoregressiveTransform(3, context=2)
        >>> x, c = torch.randn(7, 3), torch.randn(7, 2)
        >>> torch.equal(t(c)(x), x)   # identity at initialisation
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        order: Sequence[int] | LongTensor | None = None,
        univariate: type[Transform] = MonotonicAffineTransform,
        univariate_kwargs: dict | None = None,
        passes: int | None = None,
        hidden_features: Sequence[int] = (64, 64),
        inverse: str = "sweep",
        **kwargs,
    ):
        super().__init__()
        if inverse not in _INVERSES:
            raise ValueError(f"expected `inverse` in {_INVERSES}, got {inverse!r}")
        if passes is not None:
            check_int("passes", passes, 1)
        check_univariate(univariate)
        self.inverse = inverse
        self.univariate = univariate
        self.univariate_kwargs = dict(univariate_kwargs or {})
        self.shapes = univariate.param_shapes(**self.univariate_kwargs)
        self.passes = passes
        param_dims = [math.prod(shape) for shape in self.shapes]
        self.made = MADE(
            features,
            hidden_features,
            param_dims=param_dims,
            context=context,
            order=order,
            **kwargs,
        )

    def meta(self, x: Tensor, c: Tensor | None) -> Transform:
        r"""The elementwise map :math:`h(\cdot; \theta(x, c))`, for ``x`` with shape (*, D)."""
        # (*, D) or (*, D, k), * broadcast from x's and c's batch
        return self._transformer(self.made(x, c))

    def _transformer(self, params: tuple[Tensor, ...]) -> Transform:
        """The univariate map from MADE outputs with shapes (*, F) or (*, F, k)."""
        return univariate_map(self.univariate, self.univariate_kwargs, self.shapes, params)

    def solve(self, i: int, params: tuple[Tensor, ...], y_i: Tensor) -> Tensor:
        r"""Inverts feature ``i``'s scalar map, :math:`x_i = h^{-1}(y_i; \theta_i)`.

        The ``solve`` callback of :func:`~arflows.nn.made_sweep`.

        Args:
            i: The feature.
            params: Its unconstrained parameters, one tensor per MADE output, with shape
                :math:`(*)` or :math:`(*, k)`.
            y_i: Its value :math:`y_i`, with shape :math:`(*)`.

        Returns:
            :math:`x_i`, with shape :math:`(*)`.
        """
        one = [p.unsqueeze(y_i.dim()) for p in params]  # (*, 1) or (*, 1, k): one feature
        return self._transformer(one).inv(y_i[..., None])[..., 0]

    def forward(self, c: Tensor | None = None) -> AutoregressiveTransform:  # noqa: D102
        inverse = None
        if self.inverse == "sweep":
            inverse = partial(made_sweep, self.made, solve=self.solve, c=c)
        return AutoregressiveTransform(partial(self.meta, c=c), self.passes, inverse=inverse)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"(univariate): {self.univariate.__name__}({self.univariate_kwargs}), "
            f"inverse={self.inverse!r}"
        )


def _orders(
    features: int, transforms: int, randperm: bool, generator: torch.Generator | None
) -> Iterator[LongTensor]:
    for i in range(transforms):
        if randperm:
            yield torch.randperm(features, generator=generator)
        elif i % 2 == 0:
            yield torch.arange(features)
        else:
            yield torch.arange(features - 1, -1, -1)


_BASES = ("normal", "gaussian", "gmm", "mog")
_LINEARS = (None, "lu")
# MaskedAutoregressiveTransform's own options, which the MoG base's MADE does not take.
_TRANSFORM_ONLY = ("univariate", "univariate_kwargs", "passes", "inverse")


def autoregressive_layers(
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    *,
    randperm: bool = False,
    generator: torch.Generator | None = None,
    base: str = "normal",
    components: int = 10,
    marginals: bool = False,
    batch_norm: bool = False,
    actnorm: bool = False,
    linear: str | None = None,
    support: Sequence | None = None,
    flow_name: str = "MAF",
    **kwargs,
) -> tuple[list[LazyTransform], LazyDistribution]:
    r"""The layers and base of a masked autoregressive flow (see :class:`MAF` for the options).

    Data side first: the optional marginal maps, then for each layer :math:`k` an optional LU
    linear layer (:math:`k > 0`), the MADE layer and an optional batch norm or ActNorm. Each
    layer's order is drawn just before its MADE is built, then the ``"mog"`` base's, so a seed
    gives the same weights whichever flow class calls this.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        randperm: Random feature orders (drawn with ``generator``).
        generator: The random generator for ``randperm`` and random degrees.
        base: ``"normal"``, ``"gaussian"``, ``"gmm"`` or ``"mog"``.
        components: The components of the ``"mog"`` or ``"gmm"`` base.
        marginals: A :class:`~arflows.flows.MarginalSpline` first.
        batch_norm: Batch normalisation after every MADE layer.
        actnorm: ActNorm after every MADE layer.
        linear: ``"lu"`` for an LU linear layer between consecutive MADE layers, or ``None``.
        support: Only checked here (one entry per feature), before any layer is built; the
            flow maps the support itself.
        flow_name: The calling flow class's name, for error messages.
        kwargs: Options of :class:`MaskedAutoregressiveTransform`; the MADE options also reach
            the ``"mog"`` base's MADE.

    Returns:
        The lazy layers, data side first, and the lazy base distribution.
    """
    check_sizes(features, context, hidden_features)
    check_int("transforms", transforms, 1)
    if "order" in kwargs:
        # Each layer gets its own order; a shared `order=` would clash with them.
        raise TypeError(
            f"{flow_name} sets the order of each layer itself (alternating, or "
            "random with randperm=True); it takes no `order` argument"
        )
    if base not in _BASES:
        raise ValueError(f"expected `base` in {_BASES}, got {base!r}")
    if linear not in _LINEARS:
        raise ValueError(f"expected `linear` in {_LINEARS}, got {linear!r}")
    if batch_norm and actnorm:
        raise ValueError("expected at most one of `batch_norm` and `actnorm`, got both")
    if support is not None:
        support_bounds(support, features)  # one entry per feature, checked before any layer
    # Drawn lazily: each layer's order just before its MADE, as the random stream expects.
    orders = _orders(features, transforms + (base == "mog"), randperm, generator)
    layers = [MarginalSpline(features)] if marginals else []
    for k in range(transforms):
        if linear == "lu" and k > 0:
            layers.append(LULinear(features))
        layers.append(
            MaskedAutoregressiveTransform(
                features,
                context,
                order=next(orders),
                hidden_features=hidden_features,
                generator=generator,
                **kwargs,
            )
        )
        if batch_norm or actnorm:
            layers.append(BatchNorm(features) if batch_norm else ActNorm(features))
    lazy_base = StandardNormal(features)
    if base == "mog":
        made_kwargs = {k: v for k, v in kwargs.items() if k not in _TRANSFORM_ONLY}
        made_kwargs.update(order=next(orders), generator=generator)
        lazy_base = MADEMoG(features, context, components, hidden_features, **made_kwargs)
    elif base in ("gaussian", "gmm"):
        lazy_base = GaussianMixture(features, components if base == "gmm" else 1)
    return layers, lazy_base


class MAF(Flow):
    r"""Masked autoregressive flow: MADE transforms with alternating orders on a standard normal.

    Direction costs (in network passes per layer): ``log_prob`` of any :math:`x` is **one**
    pass (data to noise is the parallel direction, so training is fast); ``sample`` inverts
    each layer sequentially, at about the cost of one pass with the default one-sweep inverse
    (``inverse="sweep"``) and up to :math:`D` passes with ``inverse="passes"``.

    The MAF paper's options, data side first, for each autoregressive layer :math:`k`: an
    ``"lu"`` linear layer before every layer but the first (:class:`~arflows.flows.LULinear`,
    :math:`O(D^2)` each way), the MADE layer, then batch normalisation
    (:class:`~arflows.flows.BatchNorm`) or ActNorm (:class:`~arflows.flows.ActNorm`). With
    ``base="mog"`` the base is a MADE mixture of Gaussians conditioned on the context
    (:class:`~arflows.flows.MADEMoG`, "MAF (MoG)" in the paper): one more MADE pass for
    ``log_prob``, one more sweep (with a bisection per feature) for ``sample``. It starts as
    :math:`\mathcal{N}(0, I)` exactly, like the default base.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        randperm: Random feature orders (drawn with ``generator``) instead of alternating
            natural and reversed ones.
        generator: The random generator for ``randperm`` and random degrees.
        embedding: A module applied to the context once per call (see :class:`Flow`);
            ``context`` is then its output size.
        base: ``"normal"`` (standard normal), ``"gaussian"`` (a full-covariance Gaussian,
            :class:`~arflows.flows.GaussianMixture` with one component), ``"gmm"`` (a
            full-covariance Gaussian mixture of up to ``components`` components) or ``"mog"``
            (a MADE mixture of Gaussians, in the order following the last layer's). The
            ``"gaussian"`` and ``"gmm"`` bases start as :math:`\mathcal{N}(0, I)`;
            :func:`~arflows.flows.initialize_` fits them to the data (EM).
        components: The mixture components per feature of the ``"mog"`` base, or the most
            components of the ``"gmm"`` base.
        marginals: A :class:`~arflows.flows.MarginalSpline` first (data side, after the
            standardisation): per-column monotone maps that
            :func:`~arflows.flows.initialize_` sets to Gaussianise each column.
        batch_norm: Batch normalisation after every MADE layer. In training mode it
            normalises with the statistics of each batch (at least two points per call); call
            ``flow.eval()`` to evaluate single points with the running averages.
        actnorm: ActNorm after every MADE layer, initialised from the first training batch.
        linear: ``"lu"`` for an LU linear layer between consecutive MADE layers, or ``None``.
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Options of :class:`MaskedAutoregressiveTransform` (``univariate``,
            ``inverse``, ``passes``, ``activation``, ``residual``, ``skip``,
            ``hidden_degrees``, ...); the MADE options also reach the ``"mog"`` base's MADE.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057

    Example:
        >>> flow = MAF(3, context=2, transforms=2, hidden_features=(16, 16))
        >>> dist = flow(torch.randn(5, 2))
        >>> dist.batch_shape, dist.event_shape, dist.sample((4,)).shape
        (torch.Size([5]), torch.Size([3]), torch.Size([4, 5, 3]))
        >>> flow = MAF(3, transforms=2, base="mog", components=4, linear="lu", actnorm=True)
        >>> flow().log_prob(torch.randn(8, 3)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        *,
        randperm: bool = False,
        generator: torch.Generator | None = None,
        embedding: nn.Module | None = None,
        base: str = "normal",
        components: int = 10,
        marginals: bool = False,
        batch_norm: bool = False,
        actnorm: bool = False,
        linear: str | None = None,
        support: Sequence | None = None,
        **kwargs,
    ):
        layers, lazy_base = autoregressive_layers(
            features,
            context,
            transforms,
            hidden_features,
            randperm=randperm,
            generator=generator,
            base=base,
            components=components,
            marginals=marginals,
            batch_norm=batch_norm,
            actnorm=actnorm,
            linear=linear,
            support=support,
            flow_name=type(self).__name__,
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


class IAF(MAF):
    r"""Inverse autoregressive flow: a :class:`MAF`'s transforms used in the other direction.

    Each layer maps noise to data in one pass, :math:`x_i = h(z_i; \theta_i(z_{<i}))`.
    Direction costs (network passes per layer): ``sample`` and ``rsample_and_log_prob`` are
    **one** pass (sampling is fast, as needed for variational inference); ``log_prob`` of
    outside points inverts each layer sequentially, at about the cost of one pass with the
    default one-sweep inverse and up to :math:`D` passes with ``inverse="passes"``. Same
    arguments as :class:`MAF`, but without ``batch_norm`` and ``actnorm``: their statistics
    come from the data-to-noise direction's inputs, which an IAF never computes in its fast
    direction. ``linear="lu"`` works (each layer is inverted). ``base="mog"`` works too, with
    reparameterised base samples (see :class:`~arflows.flows.MADEMoG`), but sampling then
    adds the base's sweep with a bisection per feature to the one pass per layer.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        args: :class:`MAF`'s further positional arguments (``hidden_features``).
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: :class:`MAF`'s further options, except ``batch_norm`` and ``actnorm``.

    References:
        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        https://arxiv.org/abs/1606.04934

    Example:
        >>> flow = IAF(3, transforms=2, hidden_features=(16, 16))
        >>> x, log_p = flow().rsample_and_log_prob((10,))
        >>> x.shape, log_p.shape
        (torch.Size([10, 3]), torch.Size([10]))
    """

    def __init__(self, features: int, context: int = 0, transforms: int = 5, *args, **kwargs):
        for option in ("batch_norm", "actnorm"):
            if kwargs.get(option):
                raise ValueError(
                    f"IAF does not support `{option}=True`: its statistics come from the "
                    "data-to-noise inputs, which IAF never computes when sampling; use MAF, "
                    "or linear='lu'"
                )
        super().__init__(features, context, transforms, *args, **kwargs)
        # The marginal maps stay data to noise: their inverse is as cheap, and initialize_
        # sets them in that direction.
        self.transforms = nn.ModuleList(
            t if isinstance(t, MarginalSpline) else LazyInverse(t) for t in self.transforms
        )
