"""Registry cases (see cases.py) for the layers between autoregressive transforms.

LU linear maps, batch normalisation in eval mode (fixed, non-trivial running statistics) and
initialised ActNorm: name -> factory(features) -> Case, in float64.
"""

import torch

from arflows.flows.linear import LULinear
from arflows.flows.marginal import MarginalSpline
from arflows.flows.normalization import ActNorm, BatchNorm
from arflows.transforms.linear import LULinearTransform
from arflows.transforms.normalization import BatchNormTransform
from tests.transforms.cases import Case, _params


def lu_linear(d):
    return Case(LULinearTransform(_params(d, d), _params(d, d), _params(d), _params(d)))


def lu_linear_permuted(d):
    lazy = LULinear(d, randperm=True, generator=torch.Generator().manual_seed(d)).double()
    with torch.no_grad():
        for p in lazy.parameters():
            p.copy_(0.5 * _params(*p.shape))
    return Case(lazy())


def batch_norm_eval(d):
    t = BatchNormTransform(_params(d), _params(d), _params(d), 0.1 + _params(d).square())
    return Case(t)


def batch_norm_module_eval(d):
    lazy = BatchNorm(d).double()
    lazy()(3 * _params(64, d) + 1)  # training mode: moves the running averages
    return Case(lazy.eval()())


def actnorm_initialized(d):
    lazy = ActNorm(d).double()
    lazy()(2 * _params(32, d) - 1)  # the first training batch initialises it
    return Case(lazy())


def marginal_spline(d):
    lazy = MarginalSpline(d, bins=6, bound=2.0).double()
    with torch.no_grad():
        for p in lazy.parameters():
            p.copy_(_params(*p.shape))
        lazy.loc.copy_(0.5 * _params(d))
        lazy.scale.copy_(1 + _params(d).abs())
    return Case(lazy())


def marginal_spline_initialized(d):
    lazy = MarginalSpline(d, bins=8).double()
    lazy.initialize_(_params(500, d).exp())  # skewed columns
    return Case(lazy())


CASES = {
    f.__name__: f
    for f in [
        lu_linear,
        lu_linear_permuted,
        batch_norm_eval,
        batch_norm_module_eval,
        actnorm_initialized,
        marginal_spline,
        marginal_spline_initialized,
    ]
}
