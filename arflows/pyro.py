r"""arflows flows inside Pyro: as transforms of a ``TransformedDistribution`` and as autoguides.

Needs the optional extra ``arflows[pyro]`` (``pip install "arflows[pyro]"``).

Directions: an arflows flow's transform :math:`f` maps **data to noise**; a Pyro (torch)
``TransformedDistribution`` applies its transforms **noise to data**. :class:`FlowTransform`
is therefore :math:`f^{-1}`, one Pyro part per flow layer, so that
``pyro.distributions.TransformedDistribution(flow().base, FlowTransform(flow))`` has the
density ``flow().log_prob``. Each part caches its last input/output pair (torch's
``cache_size=1``), so the density of a sample just drawn costs one parallel pass per layer in
either flow direction; an IAF draws it in one pass per layer too (a MAF with the one-sweep
inverse). Single arflows transforms are :class:`torch.distributions.Transform` objects and go
into a ``TransformedDistribution`` as they are (use ``t.inv`` for a data-to-noise map).

Example:
    >>> import arflows
    >>> import pyro.distributions as dist
    >>> flow = arflows.IAF(3, transforms=2, hidden_features=(8, 8))
    >>> q = dist.TransformedDistribution(flow().base, FlowTransform(flow))
    >>> x = q.sample((5,))
    >>> torch.allclose(q.log_prob(x), flow().log_prob(x), atol=1e-5)
    True
"""

from __future__ import annotations

__all__ = ["AutoFlow", "FlowTransform"]

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

try:
    from pyro.distributions.torch_transform import ComposeTransformModule
    from pyro.infer.autoguide import AutoNormalizingFlow
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'arflows.pyro needs Pyro: install the extra with `pip install "arflows[pyro]"` '
        "(or `pip install pyro-ppl`)"
    ) from error

from .flows import IAF, MAF, NSF, Flow

_FLOWS: dict[str, Callable[..., Flow]] = {"iaf": IAF, "maf": MAF, "nsf": NSF}


class _Layer(torch.distributions.Transform):
    """Layer ``index`` of a flow's data-to-noise composition, used noise to data (its inverse).

    Rebuilt from the flow's current parameters at every call, so it always follows training.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = 1

    def __init__(self, flow: Flow, index: int, context: Tensor | None):
        super().__init__(cache_size=1)
        # A tuple hides the flow from nn.Module registration (it is registered once, by
        # FlowTransform), and the layer is not itself a module.
        self._flow, self.index, self.context = (flow,), index, context

    def _part(self) -> torch.distributions.Transform:
        return self._flow[0](self.context).transform.transforms[self.index]

    def _call(self, u: Tensor) -> Tensor:
        return self._part().inv(u)

    def _inverse(self, v: Tensor) -> Tensor:
        return self._part()(v)

    def log_abs_det_jacobian(self, u: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        part = self._part()
        # With both ends known, the log-det is one parallel pass in either direction.
        ladj = -part.log_abs_det_jacobian(v, u)
        return ladj.sum(-1) if part.domain.event_dim == 0 else ladj


class FlowTransform(ComposeTransformModule):
    r"""An arflows flow as a Pyro transform module, :math:`z \mapsto x = f^{-1}(z; c)`.

    ``TransformedDistribution(flow(c).base, FlowTransform(flow, c))`` is ``flow(c)``: same
    samples map, same density. The flow's parameters are this module's (``pyro.module``
    and autoguides register them).

    Args:
        flow: The flow; its layer count is read once, here (call
            :meth:`~arflows.Flow.standardize_` before wrapping, not after).
        context: A fixed context :math:`c` with shape :math:`(*, C)`, or ``None``.

    Attributes:
        flow: The wrapped flow.
    """

    def __init__(self, flow: Flow, context: Tensor | None = None):
        if not isinstance(flow, Flow):
            raise TypeError(f"expected `flow` to be an arflows Flow, got {type(flow).__name__}")
        with torch.no_grad():
            n = len(flow(context).transform.transforms)
        super().__init__([_Layer(flow, i, context) for i in reversed(range(n))])
        self.append(flow)

    @property
    def flow(self) -> Flow:  # noqa: D102
        return self[0]


class AutoFlow(AutoNormalizingFlow):
    r"""A Pyro autoguide whose posterior over the unconstrained latents is an arflows flow.

    Like Pyro's ``AutoIAFNormal``: the model's latent sites are flattened into one vector of
    size :math:`D` in unconstrained space, whose guide is the flow (built lazily, once
    :math:`D` is known); samples are mapped to each site's support with its log-det. The
    same guide is ``AutoNormalizingFlow(model, lambda d: FlowTransform(IAF(d, ...)))``.

    Args:
        model: The Pyro model.
        flow: ``"iaf"`` (the default for VI: a sample and its density in one pass per
            layer), ``"maf"`` (sampling by the one-sweep inverse), ``"nsf"`` (spline MAF;
            give a ``bound`` wider than the posterior, or prefer an affine flow), or a
            function ``features -> Flow``.
        transforms: The number of flow layers.
        hidden_features: The hidden widths of each layer's MADE.
        kwargs: Further options of the flow class (``skip``, ``residual``, ``bins``, ...).

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.LogNormal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide = AutoFlow(model, transforms=2, hidden_features=(8, 8))
        >>> sample = guide()
        >>> sorted(sample), guide.latent_dim, type(guide.flow).__name__
        (['a', 'b'], 3, 'IAF')
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[[int], Flow] = "iaf",
        *,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        **kwargs,
    ):
        if isinstance(flow, str):
            if flow not in _FLOWS:
                raise ValueError(f"expected `flow` in {tuple(_FLOWS)} or a callable, got {flow!r}")
            make = _FLOWS[flow]

            def build(features: int) -> Flow:
                return make(
                    features, transforms=transforms, hidden_features=hidden_features, **kwargs
                )

        elif callable(flow):
            build = flow
        else:
            raise TypeError(
                f"expected `flow` to be a name or a callable, got {type(flow).__name__}"
            )
        super().__init__(model, lambda features: FlowTransform(build(features)))

    @property
    def flow(self) -> Flow:
        """The arflows flow over the unconstrained latent vector (after the first call)."""
        if self.transform is None:
            raise RuntimeError("the flow is built at the guide's first call; call it first")
        return self.transform.flow
