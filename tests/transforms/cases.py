"""THE registry of transforms: name -> factory(features) -> Case, all in float64.

Adding a transform to arflows means adding one entry here; test_properties checks it.
"""

from dataclasses import dataclass

import torch

from arflows.flows import LazyInverse, MaskedAutoregressiveTransform
from arflows.transforms import (
    AutoregressiveTransform,
    ComposedTransform,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
    PermutationTransform,
    Transform,
)
from tests.helpers import randomize

F64 = torch.float64


@dataclass
class Case:
    transform: Transform
    # The rank of each feature if the transform is autoregressive (lower triangular Jacobian
    # in that order), else None.
    ranks: list[int] | None = None


def _params(*shape):
    return torch.randn(*shape, dtype=F64)


def affine(d):
    return Case(MonotonicAffineTransform(_params(d), 3 * _params(d)))


def affine_saturated(d):  # log-scales far beyond the soft-clip bound
    return Case(MonotonicAffineTransform(_params(d), 50 * _params(d), bound=2.0))


def spline(d):  # bound 1.5: standard normal points fall both inside and in the tails
    return Case(MonotonicRQSTransform(*(2 * _params(d, k) for k in (6, 6, 5)), bound=1.5))


def permutation(d):
    return Case(PermutationTransform(torch.randperm(d)))


def _made_transform(d, context=0, order=None, **kwargs):
    lazy = MaskedAutoregressiveTransform(
        d, context, order=order, hidden_features=(16, 16), **kwargs
    )
    randomize(lazy.double(), scale=0.4)
    c = _params(context) if context else None
    return lazy, c


def masked_autoregressive(d):
    lazy, c = _made_transform(d)
    return Case(lazy(c), ranks=list(range(d)))


def masked_autoregressive_context_order(d):
    order = torch.randperm(d)
    lazy, c = _made_transform(d, context=3, order=order, residual=True, skip=True)
    return Case(lazy(c), ranks=order.tolist())


def masked_autoregressive_random_degrees(d):
    lazy, c = _made_transform(d, context=2, hidden_degrees="random")
    return Case(lazy(c), ranks=list(range(d)))


def masked_autoregressive_passes(d):
    # The fixed-point inverse, so both inverse paths are property-tested.
    order = torch.randperm(d)
    lazy, c = _made_transform(
        d, context=2, order=order, skip=True, hidden_degrees="random", inverse="passes"
    )
    return Case(lazy(c), ranks=order.tolist())


def spline_autoregressive(d):
    order = torch.randperm(d)
    lazy, c = _made_transform(
        d,
        context=2,
        order=order,
        residual=True,
        univariate=MonotonicRQSTransform,
        univariate_kwargs=dict(bins=5, bound=2.0),
    )
    return Case(lazy(c), ranks=order.tolist())


def inverse_spline_autoregressive(d):
    lazy, c = _made_transform(
        d, univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=4, bound=2.0)
    )
    return Case(LazyInverse(lazy)(c), ranks=list(range(d)))


def inverse_autoregressive(d):
    lazy, c = _made_transform(d, context=2)
    return Case(LazyInverse(lazy)(c), ranks=list(range(d)))


def autoregressive_few_passes(d):
    # A chain that depends on x_{i-1} only: exact after D passes from any start.
    def meta(x):
        prev = torch.nn.functional.pad(x[..., :-1], (1, 0))
        return MonotonicAffineTransform(torch.sin(prev), torch.tanh(prev))

    return Case(AutoregressiveTransform(meta), ranks=list(range(d)))


def composed(d):
    lazy, c = _made_transform(d)
    t = ComposedTransform(
        MonotonicAffineTransform(_params(d), _params(d)),
        lazy(c),
        PermutationTransform.reverse(d),
        lazy(c).inv,
    )
    return Case(t)


CASES = {
    f.__name__: f
    for f in [
        affine,
        affine_saturated,
        spline,
        permutation,
        masked_autoregressive,
        masked_autoregressive_context_order,
        masked_autoregressive_random_degrees,
        masked_autoregressive_passes,
        inverse_autoregressive,
        spline_autoregressive,
        inverse_spline_autoregressive,
        autoregressive_few_passes,
        composed,
    ]
}


# Further families, each in its own module (they import Case from here, so this comes last).
from tests.transforms import (  # noqa: E402
    cases_coupling,
    cases_layers,
    cases_scalar,
    cases_support,
)

for _module in (cases_coupling, cases_layers, cases_scalar, cases_support):
    CASES.update(_module.CASES)
