r"""Lazy transforms and distributions, and the :class:`Flow` that composes them.

Lazy objects are modules that own parameters and, called with an optional context, return a
transform or a distribution.
"""

from __future__ import annotations

__all__ = [
    "Flow",
    "FlowLogProb",
    "LazyDistribution",
    "LazyInverse",
    "LazyTransform",
    "NormalizingFlow",
    "Unconditional",
]

import abc
import inspect
import itertools
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from ..checks import values_checked
from ..transforms import ComposedTransform, SupportTransform, Transform, support_bounds
from ..transforms.support import SHARPNESS
from .standardize import Moments, Standardization


def check_sizes(features: object, context: object, hidden_features: object = ()) -> None:
    """Refuses feature and context sizes that are not integers, or below 1 and 0."""
    if not isinstance(hidden_features, Sequence) or not all(
        isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in hidden_features
    ):
        raise TypeError(
            f"expected `hidden_features` to be a sequence of ints, got {hidden_features!r}"
        )
    for name, value, low in (("features", features, 1), ("context", context, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected `{name}` to be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"expected `{name} >= {low}`, got {value}")


class LazyTransform(nn.Module, abc.ABC):
    r"""A module that returns a transform :math:`f(\cdot\,; c)` when called with a context."""

    @abc.abstractmethod
    def forward(self, c: Tensor | None = None) -> Transform:
        r"""Args: c: The context, with shape :math:`(*, C)`, or ``None``."""


class LazyDistribution(nn.Module, abc.ABC):
    r"""A module that returns a distribution :math:`p(\cdot \mid c)` when called."""

    @abc.abstractmethod
    def forward(self, c: Tensor | None = None) -> Distribution:
        r"""Args: c: The context, with shape :math:`(*, C)`, or ``None``."""


class LazyInverse(LazyTransform):
    r"""The inverse :math:`f^{-1}(\cdot\,; c)` of a lazy transform (same parameters).

    Args:
        transform: The lazy transform to invert.
    """

    def __init__(self, transform: LazyTransform):
        super().__init__()
        self.transform = transform

    def forward(self, c: Tensor | None = None) -> Transform:  # noqa: D102
        return self.transform(c).inv


class Unconditional(LazyTransform):
    r"""A lazy transform that ignores the context: ``meta(*args)`` on every call.

    Tensor arguments are registered as buffers (or parameters with ``buffer=False``), so they
    follow ``.to(...)`` moves.

    Args:
        meta: A function or class returning a transform.
        args: Its positional arguments.
        buffer: Whether tensor arguments are buffers (fixed) rather than parameters.

    Example:
        >>> from arflows.transforms import PermutationTransform
        >>> t = Unconditional(PermutationTransform, torch.tensor([1, 0]))
        >>> t()(torch.tensor([1.0, 2.0])).tolist()
        [2.0, 1.0]
    """

    def __init__(self, meta: Callable[..., Transform], *args: object, buffer: bool = True):
        super().__init__()
        self.meta = meta
        self._n_args = len(args)
        for i, arg in enumerate(args):
            name = f"_arg{i}"
            if isinstance(arg, Tensor):
                if buffer:
                    self.register_buffer(name, arg)
                else:
                    self.register_parameter(name, nn.Parameter(arg))
            else:
                setattr(self, name, arg)

    def forward(self, c: Tensor | None = None) -> Transform:  # noqa: D102
        return self.meta(*(getattr(self, f"_arg{i}") for i in range(self._n_args)))

    def extra_repr(self) -> str:  # noqa: D102
        return getattr(self.meta, "__name__", repr(self.meta))


def checked_values(
    name: str,
    value: object,
    dtype: torch.dtype | None,
    bounded: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor:
    r"""``value`` as a real tensor of ``dtype`` (the flow's), or a clear error.

    Integer and boolean tensors are converted; anything else that is not a tensor of
    ``dtype`` is refused (torch would fail deep inside a layer instead). While torch's
    distribution validation is on (its default; :func:`arflows.fit` turns it off after its
    own checks), NaN is refused, and so is an infinity, except in columns where ``bounded``
    is true: those have a finite support bound, so an infinity lies outside the support and
    gets log-density :math:`-\infty`. Unchecked, NaN or infinity comes out as a NaN
    log-density or as torch's complaint about the base distribution's argument.

    Args:
        name: The argument's name, for errors (``"x"``, ``"context"``).
        value: The value.
        dtype: The flow's floating point type, or ``None`` for torch's default (then any
            floating type passes).
        bounded: Which columns (last dimension) may hold infinities, or ``None`` for none.
        device: The flow's device, where ``value`` must be (``None``: anywhere).
    """
    if not isinstance(value, Tensor):
        raise TypeError(
            f"expected `{name}` to be a tensor, got a {type(value).__name__}; convert it with "
            "torch.as_tensor(...)"
        )
    if value.is_complex():
        raise TypeError(f"expected `{name}` to hold real numbers, got dtype {value.dtype}")
    if not value.is_floating_point():
        value = value.to(dtype or torch.get_default_dtype())
    elif dtype is not None and value.dtype != dtype:
        raise TypeError(
            f"expected `{name}` of dtype {dtype} (the flow's), got {value.dtype}; convert it "
            f"with .to({dtype}) or the flow with .to({value.dtype})"
        )
    if device is not None and value.device != device:
        # Refused here, naming both: torch would fail inside a layer.
        raise ValueError(
            f"expected `{name}` on {device} (the flow's device), got it on {value.device}; "
            f"move it with .to({str(device)!r}) or the flow with .to({str(value.device)!r})"
        )
    if value.numel() and values_checked():
        bad = value.isnan()
        if bounded is None:
            bad = bad | value.isinf()
        else:
            bad = bad | (value.isinf() & ~bounded.to(value.device))
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            what = value[where].item()
            hint = "" if bounded is None else " (infinities only in columns with a support bound)"
            raise ValueError(
                f"`{name}` holds {'NaN' if what != what else what} at index {where}; a flow "
                f"needs finite values{hint}"
            )
    return value


class NormalizingFlow(Distribution):
    r"""The distribution of :math:`x = f^{-1}(z)`, :math:`z \sim p_Z`.

    .. math:: \log p(x) = \log p_Z(f(x)) + \log |\det J_f(x)|.

    Args:
        transform: The transform :math:`f`, data to noise.
        base: The base distribution :math:`p_Z`; its batch and event shapes are the flow's.
        dtype: The flow's floating point type: :meth:`log_prob` converts integer data to
            it and refuses other floating types (see :func:`checked_values`).
        bounded: The columns with a finite support bound, where :meth:`log_prob` takes
            infinities (outside the support: :math:`-\infty`), or ``None`` for none.
        device: The flow's device: :meth:`log_prob` refuses ``x`` elsewhere (``None``: not
            checked).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        transform: Transform,
        base: Distribution,
        *,
        dtype: torch.dtype | None = None,
        bounded: Tensor | None = None,
        device: torch.device | None = None,
    ):
        self.transform, self.base = transform, base
        self.dtype, self.bounded, self.device = dtype, bounded, device
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def _ladj(self, ladj: Tensor) -> Tensor:
        extra = len(self.event_shape) - self.transform.domain.event_dim
        return ladj.sum(tuple(range(-extra, 0))) if extra > 0 else ladj

    def _check(self, x: Tensor) -> None:
        n = len(self.event_shape)
        if x.dim() < n or x.shape[x.dim() - n :] != self.event_shape:
            raise ValueError(
                f"expected x with shape (*, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The log-density :math:`\log p(x)`.

        Args:
            x: The data, with shape :math:`(*, D)`, broadcast against the batch shape.

        Returns:
            The log-densities, with shape :math:`(*)`.

        Raises:
            TypeError: For ``x`` that is not a real tensor of the flow's dtype (integer
                tensors are converted).
            ValueError: For ``x`` on another device than the flow's, the wrong shape, a
                batch shape that does not broadcast against the context's, or (while torch
                validates distribution arguments) NaN or an infinity outside a bounded column.
        """
        x = checked_values("x", x, self.dtype, self.bounded, self.device)
        self._check(x)
        n = len(self.event_shape)
        try:
            batch = x.shape[: x.dim() - n]
            if batch != self.batch_shape and self.batch_shape:  # (a cheap common case first)
                batch = torch.broadcast_shapes(batch, self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"x with shape {tuple(x.shape)} does not broadcast against the batch shape "
                f"{tuple(self.batch_shape)} of the distribution (the context's rows)"
            ) from None
        if batch.numel() == 0:  # torch's reductions refuse some empty reshapes
            return x.new_zeros(batch)
        z, ladj = self.transform.call_and_ladj(x)
        return self.base.log_prob(z) + self._ladj(ladj)

    def rsample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        r"""Reparameterised samples, with shape ``sample_shape + batch_shape + event_shape``."""
        z = self.base.rsample(Size(sample_shape))
        return self.transform.inv(z)

    def rsample_and_log_prob(
        self, sample_shape: Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples and their log-density, in one inverse pass."""
        z = self.base.rsample(Size(sample_shape))
        x, ladj = self.transform.inv.call_and_ladj(z)
        return x, self.base.log_prob(z) - self._ladj(ladj)

    def sample_and_log_prob(
        self, sample_shape: Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        r"""Samples and their log-density, without gradients."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)

    def expand(self, batch_shape: Size, _instance: object = None) -> NormalizingFlow:  # noqa: D102
        raise NotImplementedError(
            "a flow's batch shape comes from its context; call the flow with a batch of contexts"
        )

    def __repr__(self) -> str:
        return (
            f"NormalizingFlow(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )


def _logit_if_saved_without_knee(
    module: nn.Module, state_dict: dict, prefix: str, *args: object
) -> None:
    """Loads support weights saved before the knee existed with the plain logit.

    Those hold the two bounds only and were fitted with the logit (sharpness 0): loaded so,
    they keep their densities.
    """
    if prefix + "_arg0" in state_dict and prefix + "_arg2" not in state_dict:
        state_dict[prefix + "_arg2"] = torch.zeros_like(state_dict[prefix + "_arg0"])


def _event_size(base: LazyDistribution) -> int:
    """The number of features of an unconditional lazy base, for flows built without one."""
    try:
        with torch.no_grad():
            shape = base().event_shape
    except Exception as error:
        raise TypeError(
            f"cannot find the number of features from the base {type(base).__name__} "
            f"({error}); pass `features=` to Flow"
        ) from None
    if len(shape) != 1:
        raise TypeError(
            f"expected a base with event shape (D,), got {tuple(shape)}; pass `features=`"
        )
    return shape[0]


class Flow(LazyDistribution):
    r"""A normalizing flow: lazy transforms :math:`f_1, \dots, f_n` on a lazy base.

    The transforms map **data to noise**: :math:`z = f(x) = f_n \circ \dots \circ f_1(x)`, so

    .. math:: \log p(x \mid c) = \log p_Z(f(x; c) \mid c) + \log |\det J_f(x; c)|,

    and sampling computes :math:`x = f^{-1}(z)`. ``flow(c)`` returns a
    :class:`NormalizingFlow` distribution whose batch shape is ``c.shape[:-1]`` and event
    shape :math:`(D,)`; a batch of contexts gives a batch of distributions.

    Before the transforms, the flow applies, in this order: the support map of bounded
    columns (``support``), then the stored standardisation of the data
    (:attr:`standardization`, set by :meth:`standardize_` or :func:`arflows.fit`; its
    log-determinant is included, so densities stay those of the raw data). The context is
    standardised (:attr:`context_standardization`) and then passed through ``embedding``
    once per call, before any transform sees it.

    Args:
        transforms: The lazy transforms :math:`f_1, \dots, f_n`, data side first.
        base: The lazy base distribution.
        embedding: A module applied to the context once per call; the transforms then see
            its output, so their ``context`` size is the embedding's output size.
        support: The support of each data column, mapped to the real line first (see
            :class:`~arflows.transforms.SupportTransform`): a list of length :math:`D` of
            ``None`` (unbounded), ``(a, b)``, ``(a, None)`` or ``(None, b)``. Points outside
            get log-density :math:`-\infty`; samples lie inside.
        features: The number of features :math:`D`; by default the event size of
            ``base()`` (pass it when the base needs a context).
        context: The context size :math:`C` the transforms and base take (0 for
            unconditional flows).

    Attributes:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional flows); with an
            ``embedding``, the embedding's output size.
        columns: The names of the :math:`D` data columns, or ``None``. Set by the user, by
            :func:`arflows.load` and by the command line; :func:`arflows.save` stores them.
        context_columns: The names of the :math:`C` context columns, or ``None``.
        metadata: JSON-safe information kept with the model (a dict, empty by default);
            :func:`arflows.save` stores it and :func:`arflows.load` restores it.

    The constructor arguments of every subclass are recorded in :attr:`config` (the call as
    written), so :func:`arflows.save` can rebuild the flow without pickling code.
    """

    def __new__(cls, *args: object, **kwargs: object) -> Flow:  # noqa: D102
        self = super().__new__(cls)
        # The outermost constructor's arguments: what a user wrote, so a load can replay it.
        self._config_call = (args, kwargs)
        return self

    def __init__(
        self,
        transforms: Sequence[LazyTransform],
        base: LazyDistribution,
        *,
        embedding: nn.Module | None = None,
        support: Sequence | None = None,
        features: int | None = None,
        context: int = 0,
    ):
        super().__init__()
        self.features: int = _event_size(base) if features is None else features
        self.context: int = context
        self.columns: list[str] | None = None
        self.context_columns: list[str] | None = None
        self.metadata: dict = {}
        self.transforms = nn.ModuleList(transforms)
        self.base = base
        self.embedding = embedding
        self.support: LazyTransform | None = None
        if support is not None:
            lower, upper = support_bounds(support, len(support))
            sharpness = torch.full_like(lower, SHARPNESS)
            self.support = Unconditional(SupportTransform, lower, upper, sharpness)
            self.support.register_load_state_dict_pre_hook(_logit_if_saved_without_knee)
        self.standardization = Standardization()
        self.context_standardization = Standardization()

    @property
    def config(self) -> dict:
        """The flow's class name and constructor arguments by name (defaults left out)."""
        args, kwargs = getattr(self, "_config_call", ((), {}))
        bound = inspect.signature(type(self).__init__).bind(None, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
                arguments.update(arguments.pop(name))
        return {"flow": type(self).__name__, "arguments": arguments}

    @torch.no_grad()
    def standardize_(self, x: Tensor | Moments, c: Tensor | Moments | None = None) -> None:
        r"""Stores the means and scales of the data (after the support map) and the context.

        Args:
            x: The data, with shape :math:`(N, D)`, or the :meth:`moments` of data read in
                batches.
            c: The context, with shape :math:`(N, C)`, its moments, or ``None``.
        """
        if self.support is not None and not isinstance(x, Moments):
            x = self.support()(x)
        self.standardization.set_(x)
        if c is not None:
            self.context_standardization.set_(c)

    @torch.no_grad()
    def moments(self, x: Tensor, c: Tensor | None = None) -> tuple[Moments, Moments | None]:
        r"""The moments :meth:`standardize_` needs, of one batch; batches' moments add up.

        Args:
            x: The data, with shape :math:`(N, D)`.
            c: The context, with shape :math:`(N, C)`, or ``None``.

        Returns:
            The moments of the data after the support map, and of the context (or ``None``).
        """
        if self.support is not None:
            x = self.support()(x)
        return Moments.of(x), None if c is None else Moments.of(c)

    def embed_context(self, c: Tensor | None) -> Tensor | None:
        r"""The context as the transforms see it: standardised, then embedded."""
        if c is None:
            return None
        c = self.context_standardization.apply(c)
        return c if self.embedding is None else self.embedding(c)

    def _dtype(self) -> torch.dtype | None:
        """The floating point type of the flow's first floating parameter or buffer."""
        tensors = itertools.chain(self.parameters(), self.buffers())  # lazily: the first
        return next((t.dtype for t in tensors if t.is_floating_point()), None)

    def _device(self) -> torch.device | None:
        """The device of the flow's first parameter or buffer (``None`` without any)."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.device for t in tensors), None)

    def forward(self, c: Tensor | None = None) -> NormalizingFlow:
        r"""The distribution :math:`p(\cdot \mid c)`.

        Args:
            c: The context, with shape :math:`(*, C)`, or ``None`` for unconditional flows;
                on the flow's device (else a ``ValueError`` names both); integer tensors are
                converted to the flow's dtype, NaN and infinities are refused while torch
                validates distribution arguments (see :func:`checked_values`).
        """
        dtype, device = self._dtype(), self._device()
        if c is not None:
            c = checked_values("context", c, dtype, device=device)
        c = self.embed_context(c)
        parts, bounded = [], None
        if self.support is not None:
            support = self.support(c)
            parts.append(support)
            bounded = support.lower.isfinite() | support.upper.isfinite()
        standardize = self.standardization.transform()
        if standardize is not None:
            parts.append(standardize)
        parts.extend(t(c) for t in self.transforms)
        return NormalizingFlow(
            ComposedTransform(*parts), self.base(c), dtype=dtype, bounded=bounded, device=device
        )


class FlowLogProb(nn.Module):
    r"""``flow(c).log_prob(x)`` as a module's forward, for wrappers that call modules.

    DistributedDataParallel and :func:`torch.func.functional_call` act on a module's call;
    a flow's call returns a distribution, this one the log-density, with shape :math:`(*,)`.
    """

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:  # noqa: D102
        return self.flow(c).log_prob(x)
