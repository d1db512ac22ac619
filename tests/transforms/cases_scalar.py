"""Registry cases (see cases.py) for the scalar transforms: name -> factory(features) -> Case."""

import torch

from arflows.flows import LazyInverse
from arflows.transforms.sigmoidal import MonotonicSigmoidalTransform
from tests.transforms.cases import Case, _made_transform, _params

_SIGMOIDAL = dict(univariate=MonotonicSigmoidalTransform, univariate_kwargs=dict(components=4))


def sigmoidal(d):
    return Case(MonotonicSigmoidalTransform(*(2 * _params(d, 5) for _ in range(3))))


def sigmoidal_spread(d):  # slopes at the floor and far above 1, shifts far apart
    slopes = 8 * _params(d, 6)
    return Case(MonotonicSigmoidalTransform(slopes, 6 * _params(d, 6), 3 * _params(d, 6)))


def sigmoidal_autoregressive(d):
    order = torch.randperm(d)
    lazy, c = _made_transform(d, context=2, order=order, residual=True, **_SIGMOIDAL)
    return Case(lazy(c), ranks=order.tolist())


def sigmoidal_autoregressive_passes(d):
    lazy, c = _made_transform(d, inverse="passes", **_SIGMOIDAL)
    return Case(lazy(c), ranks=list(range(d)))


def inverse_sigmoidal_autoregressive(d):
    lazy, c = _made_transform(d, context=2, **_SIGMOIDAL)
    return Case(LazyInverse(lazy)(c), ranks=list(range(d)))


CASES = {
    f.__name__: f
    for f in [
        sigmoidal,
        sigmoidal_spread,
        sigmoidal_autoregressive,
        sigmoidal_autoregressive_passes,
        inverse_sigmoidal_autoregressive,
    ]
}
