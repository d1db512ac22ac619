r"""arflows flows as density estimators of ``sbi``: NPE posteriors and NLE likelihoods.

Needs the optional extra ``arflows[sbi]`` (``pip install "arflows[sbi]"``).

:func:`posterior_nn` and :func:`likelihood_nn` return the builder that
``sbi.inference.NPE(prior, density_estimator=...)`` and ``sbi.inference.NLE(...)`` accept, in
place of sbi's own ``posterior_nn``/``likelihood_nn``. sbi calls it once with the training
simulations; it returns a :class:`FlowEstimator`, a conditional arflows flow with sbi's
estimator interface (``log_prob``, ``sample``, ``loss``, with sbi's shape conventions).
Parameters and simulations are z-scored with statistics of that batch, stored in the flow
(:attr:`~arflows.Flow.standardization` and :attr:`~arflows.Flow.context_standardization`), so
densities stay those of the raw values.

Sampling is where arflows pays: ``posterior.sample`` and ``posterior.sample_batched`` draw from
``flow(x).sample``, one batched call for all observations, and an autoregressive flow (the
default spline ``"nsf"``, or ``"maf"``) inverts each layer in one sweep (about one network
pass) instead of :math:`D` passes.

Example:
    >>> theta, x = torch.randn(200, 2), torch.randn(200, 3)
    >>> estimator = posterior_nn("maf", transforms=2, hidden_features=(16, 16))(theta, x)
    >>> observations = torch.randn(4, 3)
    >>> estimator.sample((1000,), observations).shape  # (*sample_shape, batch, D)
    torch.Size([1000, 4, 2])
    >>> estimator.log_prob(torch.randn(7, 4, 2), observations).shape  # (sample, batch)
    torch.Size([7, 4])
"""

from __future__ import annotations

__all__ = ["FlowEstimator", "likelihood_nn", "posterior_nn", "support_of"]

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'arflows.sbi needs sbi: install the extra with `pip install "arflows[sbi]"` '
        "(or `pip install sbi`)"
    ) from error

from .flows import Flow, Moments, build, flow_classes

_Z_SCORES = ("independent", "structured", "none", None)


class _ConditionEmbedding(nn.Module):
    """A condition as the flow's transforms see it: flattened, z-scored, then embedded."""

    def __init__(self, estimator: FlowEstimator):
        super().__init__()
        # A tuple hides the estimator from module registration: its parameters stay its own.
        self._estimator = (estimator,)

    def forward(self, condition: Tensor) -> Tensor:  # noqa: D102
        estimator = self._estimator[0]
        return estimator.flow.embed_context(estimator._context(condition))


class FlowEstimator(ConditionalDensityEstimator):
    r"""A conditional arflows flow as an sbi density estimator of :math:`p(\text{input} \mid c)`.

    For NPE the input is the parameters :math:`\theta` and the condition the simulation
    :math:`x`; for NLE the reverse. Conditions are flattened to
    :math:`F = \prod` ``condition_shape`` values before the flow sees them (its context, or its
    embedding's input, where an embedding first restores the shape).

    Shapes (sbi's conventions; :math:`S` samples, :math:`B` conditions, :math:`D` input
    features): ``log_prob(input, condition)`` takes inputs :math:`(S, B, D)` or
    :math:`(B, D)` and conditions :math:`(B, *)` or :math:`(S, B, *)` (batch sizes broadcast)
    and returns :math:`(S, B)`; ``sample(sample_shape, condition)`` returns
    ``sample_shape + (B, D)``; ``loss(input, condition)`` takes :math:`(B, D)` and
    :math:`(B, *)` and returns :math:`(B,)`.

    Args:
        flow: The flow, with :math:`D` features, taking the flattened condition (its
            ``context`` is :math:`F`, or its embedding's output size).
        input_shape: The event shape of the input, :math:`(D,)`.
        condition_shape: The event shape of the condition.

    Attributes:
        net: The flow (also :attr:`flow`).
    """

    def __init__(self, flow: Flow, input_shape: Sequence[int], condition_shape: Sequence[int]):
        if not isinstance(flow, Flow):
            raise TypeError(f"expected `flow` to be an arflows Flow, got {type(flow).__name__}")
        input_shape, condition_shape = Size(input_shape), Size(condition_shape)
        if len(input_shape) != 1 or input_shape[0] != flow.features:
            raise ValueError(
                f"expected `input_shape` ({flow.features},), the flow's features, got "
                f"{tuple(input_shape)}"
            )
        if len(condition_shape) < 1:
            raise ValueError("expected a condition with at least one dimension, got shape ()")
        super().__init__(flow, input_shape, condition_shape)

    @property
    def flow(self) -> Flow:
        """The conditional flow."""
        return self.net

    @property
    def embedding_net(self) -> nn.Module:
        """A module mapping conditions :math:`(N, *)` to what the flow's layers see.

        The flattening, the stored z-scoring and the embedding net, if any: sbi's
        misspecification check (``mode="embedding"``) compares observations in this space.
        """
        return _ConditionEmbedding(self)

    def _dtype(self) -> torch.dtype:
        return next(t.dtype for t in self.net.parameters() if t.is_floating_point())

    def _context(self, condition: Tensor) -> Tensor:
        """The condition, shape :math:`(*, *condition_shape)`, as :math:`(*, F)` flow context."""
        self._check_condition_shape(condition)
        n = len(self.condition_shape)
        return condition.to(self._dtype()).flatten(condition.dim() - n)

    def _input(self, input: Tensor) -> Tensor:
        self._check_input_shape(input)
        return input.to(self._dtype())

    def log_prob(self, input: Tensor, condition: Tensor) -> Tensor:
        r"""The log-density of the inputs given the conditions.

        Args:
            input: The inputs, with shape :math:`(S, B, D)` or :math:`(B, D)`.
            condition: The conditions, with shape :math:`(B, *)` or :math:`(S, B, *)`.

        Returns:
            The log-densities, with shape :math:`(S, B)` (:math:`S = 1` for 2-D inputs).
        """
        input, c = self._input(input), self._context(condition)
        if input.dim() == 2:
            input = input.unsqueeze(0)  # (1, B, D)
        if c.dim() <= 2:
            # One flow call per condition; the S inputs of each broadcast against it.
            return self.net(c).log_prob(input)
        # Conditions per sample: one flat batch, since embedding nets take (N, *) rows.
        batch = torch.broadcast_shapes(input.shape[:-1], c.shape[:-1])
        x = input.expand(*batch, input.shape[-1]).reshape(-1, input.shape[-1])
        c = c.expand(*batch, c.shape[-1]).reshape(-1, c.shape[-1])
        return self.net(c).log_prob(x).reshape(batch)

    def loss(self, input: Tensor, condition: Tensor) -> Tensor:
        r"""The negative log-density, with shape :math:`(B,)`, of inputs :math:`(B, D)`."""
        return -self.net(self._context(condition)).log_prob(self._input(input))

    def sample(self, sample_shape: Sequence[int], condition: Tensor) -> Tensor:
        r"""Samples, with shape ``sample_shape + (B, D)``, for conditions :math:`(B, *)`.

        All conditions in one call of the flow (one sweep per layer for autoregressive
        flows), without gradients.
        """
        return self.net(self._context(condition)).sample(Size(sample_shape))

    def sample_and_log_prob(
        self, sample_shape: Sequence[int], condition: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""Samples ``sample_shape + (B, D)`` and their log-densities ``sample_shape + (B,)``.

        One inverse pass gives both (reparameterised: gradients flow where enabled).
        """
        return self.net(self._context(condition)).rsample_and_log_prob(Size(sample_shape))

    def inverse_transform(self, input: Tensor, condition: Tensor) -> Tensor:
        r"""The noise :math:`z = f(\text{input}; c)`, with shape :math:`(*, D)`.

        Inputs :math:`(*, D)` broadcast against conditions :math:`(*, *)`; what sbi's
        ``LC2ST_NF`` calls ``flow_inverse_transform``.
        """
        return self.net(self._context(condition)).transform(self._input(input))


def _z_scored(kind: str | None, moments: Moments) -> Moments | None:
    """The moments to standardise with for an sbi z-score option, or ``None`` for none.

    ``"structured"``: one mean and one scale for all columns, those of all their values.
    """
    if kind in (None, "none"):
        return None
    if kind == "independent":
        return moments
    d, mean = moments.mean.numel(), moments.mean.mean()
    # The columns' squared deviations from the common mean, shared equally, so that each
    # column's variance is the pooled variance of all N * d values.
    m2 = (moments.m2.sum() + moments.count * ((moments.mean - mean) ** 2).sum()) / d
    return Moments(moments.count, mean.expand(d).clone(), m2.expand(d).clone())


def _check_z_score(name: str, value: object) -> None:
    if value not in _Z_SCORES:
        hint = (
            "; for bounded parameters pass `support=` to the flow instead"
            if value == "transform_to_unconstrained"
            else ""
        )
        raise ValueError(f"expected `{name}` in {_Z_SCORES}, got {value!r}{hint}")


def _embedding(condition_shape: Size, embedding_net: nn.Module | None) -> nn.Module | None:
    """The flow's embedding: flat conditions back to their shape, then the embedding net."""
    if len(condition_shape) == 1 or embedding_net is None:
        return embedding_net
    return nn.Sequential(nn.Unflatten(-1, condition_shape), embedding_net)


def _estimator(
    make: Callable[..., Flow],
    inputs: Tensor,
    conditions: Tensor,
    z_score_input: str | None,
    z_score_condition: str | None,
    embedding_net: nn.Module | None,
) -> FlowEstimator:
    """Builds the flow for these training rows, sets its z-scoring and wraps it."""
    for name, value in (("input", inputs), ("condition", conditions)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 2:
            raise ValueError(
                f"expected the {name} rows as a floating tensor with shape (N, *), got "
                f"{getattr(value, 'shape', type(value).__name__)}"
            )
    if inputs.dim() != 2:
        raise ValueError(
            f"expected the estimated variable with shape (N, D), got {tuple(inputs.shape)}: "
            "flatten it in the simulator (or the prior)"
        )
    if len(inputs) != len(conditions):
        raise ValueError(
            f"expected as many input rows as condition rows, got {len(inputs)} and "
            f"{len(conditions)}"
        )
    condition_shape = conditions.shape[1:]
    flat = conditions.reshape(len(conditions), math.prod(condition_shape))
    embedding = _embedding(condition_shape, embedding_net)
    context = flat.shape[1]
    if embedding is not None:
        embedding.to(device=flat.device, dtype=flat.dtype)
        with torch.no_grad():
            out = embedding(flat[:1])
        if out.dim() != 2:
            raise ValueError(
                f"expected the embedding net to return rows (N, E), got {tuple(out.shape)} "
                f"for a condition of shape {tuple(condition_shape)}"
            )
        context = out.shape[1]
    options = {} if embedding is None else {"embedding": embedding}
    flow = make(inputs.shape[1], context, **options).to(device=inputs.device, dtype=inputs.dtype)
    if not isinstance(flow, Flow) or flow.features != inputs.shape[1] or flow.context != context:
        raise TypeError(
            f"expected the model to build an arflows Flow with {inputs.shape[1]} features and "
            f"context {context}, got {flow!r}"
        )
    # Statistics of the finite rows only (sbi may keep invalid simulations).
    finite = inputs.isfinite().all(1) & flat.isfinite().all(1)
    moments_input, moments_condition = flow.moments(inputs[finite], flat[finite])
    moments_input = _z_scored(z_score_input, moments_input)
    moments_condition = _z_scored(z_score_condition, moments_condition)
    if moments_input is not None:
        flow.standardization.set_(moments_input)
    if moments_condition is not None:
        flow.context_standardization.set_(moments_condition)
    return FlowEstimator(flow, inputs.shape[1:], condition_shape)


def _family(model: str | Callable[..., Flow]) -> Callable[..., Flow]:
    """``make(features, context, **options) -> Flow`` for a family name or a flow callable."""
    if isinstance(model, str):
        if model.lower() not in flow_classes():
            raise ValueError(
                f"unknown flow {model!r}; available: {', '.join(sorted(flow_classes()))}"
            )
        return functools.partial(build, model)
    if callable(model):
        return model
    raise TypeError(
        f"expected `model` to be a flow name or a callable, got {type(model).__name__}"
    )


_BOUNDED = (  # constraint classes (torch names them in lower case) with plain bounds
    type(constraints.real),  # no bounds: (None, None)
    constraints.interval,
    constraints.half_open_interval,
    constraints.greater_than,
    constraints.greater_than_eq,
    constraints.less_than,
)


def _bounds(constraint: constraints.Constraint, size: int) -> list[tuple[float, float]]:
    """Per-column ``(lower, upper)`` bounds (infinite where none) of a prior's support."""
    if isinstance(constraint, constraints.independent):
        return _bounds(constraint.base_constraint, size)
    if isinstance(constraint, constraints.cat):  # sbi's MultipleIndependent priors
        lengths = constraint.lengths
        if sum(lengths) != size:
            raise ValueError(f"cannot split a support of {size} columns as {lengths}")
        return [
            b for part, n in zip(constraint.cseq, lengths, strict=True) for b in _bounds(part, n)
        ]
    if not isinstance(constraint, _BOUNDED):
        raise ValueError(
            f"cannot read column bounds from the support {constraint}; pass `support=` as a "
            "list of (lower, upper) pairs"
        )
    lower = torch.as_tensor(getattr(constraint, "lower_bound", -math.inf), dtype=torch.float64)
    upper = torch.as_tensor(getattr(constraint, "upper_bound", math.inf), dtype=torch.float64)
    return list(zip(lower.expand(size).tolist(), upper.expand(size).tolist(), strict=True))


def support_of(prior: Distribution) -> list[tuple[float | None, float | None]]:
    r"""The per-parameter bounds of a prior, as the ``support`` option of arflows flows.

    Reads ``prior.support``: intervals and half-lines (``BoxUniform``, ``Uniform``, ``Gamma``,
    ...), the real line, and sbi's ``MultipleIndependent`` priors column by column.

    Args:
        prior: A distribution over parameter vectors, with event shape :math:`(D,)`.

    Returns:
        :math:`D` pairs ``(lower, upper)``, ``None`` where unbounded.

    Raises:
        ValueError: For a support that is not a product of intervals (a simplex, integers).

    Example:
        >>> from torch.distributions import Gamma, Independent, Uniform
        >>> support_of(Independent(Uniform(torch.zeros(2), torch.tensor([1.0, 4.0])), 1))
        [(0.0, 1.0), (0.0, 4.0)]
        >>> support_of(Independent(Gamma(torch.ones(1), torch.ones(1)), 1))
        [(0.0, None)]
    """
    if not isinstance(prior, Distribution) or len(prior.event_shape) != 1:
        raise ValueError(
            "expected a distribution over parameter vectors (event shape (D,)), got "
            f"{getattr(prior, 'event_shape', type(prior).__name__)}"
        )
    bounds = _bounds(prior.support, prior.event_shape[0])
    return [tuple(b if math.isfinite(b) else None for b in pair) for pair in bounds]


def posterior_nn(
    model: str | Callable[..., Flow] = "nsf",
    *,
    transforms: int = 5,
    hidden_features: Sequence[int] = (50, 50),
    z_score_theta: str | None = "independent",
    z_score_x: str | None = "independent",
    embedding_net: nn.Module | None = None,
    **flow_options,
) -> Callable[[Tensor, Tensor], FlowEstimator]:
    r"""The builder of an arflows posterior estimator :math:`q(\theta \mid x)` for sbi's NPE.

    ``NPE(prior, density_estimator=posterior_nn(...))``: sbi calls the builder with the
    training parameters :math:`(N, D)` and simulations :math:`(N, *)`; it builds the flow for
    :math:`D` features and context :math:`F = \prod` (simulation shape), or the embedding
    net's output size, and stores the z-scoring of both.

    Args:
        model: A flow family of :func:`arflows.flows.flow_classes` (``"nsf"``: spline MAF,
            ``"maf"``, ``"realnvp"``, ...; ``"iaf"`` trains with a sequential density, so
            slowly), or a callable ``(features, context, **options) -> Flow``, such as a flow
            class, that takes the options below.
        transforms: The number of flow layers.
        hidden_features: The hidden widths of each layer's network.
        z_score_theta: How to z-score the parameters: ``"independent"`` (each column),
            ``"structured"`` (one mean and scale for all columns) or ``None``/``"none"``.
        z_score_x: How to z-score the simulations, before the embedding net; same options.
        embedding_net: A module mapping simulations :math:`(N, *)` to features
            :math:`(N, E)`, trained with the flow; ``None`` for the flattened simulations.
        flow_options: Further options of the flow family (``bins``, ``bound``, ``residual``,
            ...). ``support``: the bounds of the parameters, or the prior itself (read with
            :func:`support_of`); the flow then puts all its mass inside, so sbi's leakage
            rejection never rejects (without it, sampling observations whose posterior
            touches a bound can cost several times more draws).

    Returns:
        ``build(batch_theta, batch_x) -> FlowEstimator``.

    Raises:
        ValueError: For an unknown family or z-score option (at once); for an option the
            family does not take (when sbi calls the builder).

    Example:
        >>> build = posterior_nn("nsf", transforms=2, hidden_features=(16,), bins=4)
        >>> estimator = build(torch.rand(50, 3), torch.randn(50, 4))
        >>> type(estimator.flow).__name__, estimator.flow.features, estimator.flow.context
        ('NSF', 3, 4)
    """
    _check_z_score("z_score_theta", z_score_theta)
    _check_z_score("z_score_x", z_score_x)
    if isinstance(flow_options.get("support"), Distribution):
        flow_options["support"] = support_of(flow_options["support"])
    make = functools.partial(
        _family(model), transforms=transforms, hidden_features=hidden_features, **flow_options
    )

    def build_posterior_estimator(batch_theta: Tensor, batch_x: Tensor) -> FlowEstimator:
        return _estimator(make, batch_theta, batch_x, z_score_theta, z_score_x, embedding_net)

    return build_posterior_estimator


def likelihood_nn(
    model: str | Callable[..., Flow] = "nsf",
    *,
    transforms: int = 5,
    hidden_features: Sequence[int] = (50, 50),
    z_score_x: str | None = "independent",
    z_score_theta: str | None = "independent",
    embedding_net: nn.Module | None = None,
    **flow_options,
) -> Callable[[Tensor, Tensor], FlowEstimator]:
    r"""The builder of an arflows likelihood estimator :math:`q(x \mid \theta)` for sbi's NLE.

    ``NLE(prior, density_estimator=likelihood_nn(...))``: as :func:`posterior_nn` with the
    roles swapped: the flow models simulations :math:`(N, D_x)` (one-dimensional, as NLE
    requires) given parameters :math:`(N, *)`.

    Args:
        model: A flow family name or a flow callable, as for :func:`posterior_nn`.
        transforms: The number of flow layers.
        hidden_features: The hidden widths of each layer's network.
        z_score_x: How to z-score the simulations (``"independent"``, ``"structured"`` or
            ``None``/``"none"``).
        z_score_theta: How to z-score the parameters, before the embedding net.
        embedding_net: A module mapping parameters to features :math:`(N, E)`, or ``None``.
        flow_options: Further options of the flow family.

    Returns:
        ``build(batch_theta, batch_x) -> FlowEstimator`` (sbi's argument order).

    Example:
        >>> estimator = likelihood_nn("maf", transforms=2)(torch.randn(50, 2), torch.randn(50, 5))
        >>> estimator.input_shape, estimator.condition_shape
        (torch.Size([5]), torch.Size([2]))
    """
    _check_z_score("z_score_x", z_score_x)
    _check_z_score("z_score_theta", z_score_theta)
    make = functools.partial(
        _family(model), transforms=transforms, hidden_features=hidden_features, **flow_options
    )

    def build_likelihood_estimator(batch_theta: Tensor, batch_x: Tensor) -> FlowEstimator:
        return _estimator(make, batch_x, batch_theta, z_score_x, z_score_theta, embedding_net)

    return build_likelihood_estimator
