"""Registry cases (see cases.py) for the coupling transforms: name -> factory(features) -> Case."""

import torch

from arflows.flows.coupling import MaskedCouplingTransform
from arflows.transforms import MonotonicAffineTransform, MonotonicRQSTransform
from tests.helpers import randomize
from tests.transforms.cases import Case, _params


def _affine(d, scale, spread=3.0, **kwargs):
    log_scale = None if scale == "none" else spread * _params(d)
    return Case(MonotonicAffineTransform(_params(d), log_scale, scale=scale, **kwargs))


def affine_softplus(d):
    return _affine(d, "softplus")


def affine_softplus_floor(d):  # log-scales far below zero: scales at the floor
    return _affine(d, "softplus", spread=50.0)


def affine_exp(d):
    return _affine(d, "exp", spread=1.0)


def affine_exp_clamped(d):  # log-scales beyond the hard clamp
    return _affine(d, "exp", spread=50.0, bound=2.0)


def affine_stable(d):
    return _affine(d, "stable")


def affine_additive(d):
    return _affine(d, "none")


def _coupling(d, context=0, mask=None, **kwargs):
    lazy = MaskedCouplingTransform(d, context, mask=mask, hidden_features=(16, 16), **kwargs)
    randomize(lazy.double(), scale=0.4)
    c = _params(context) if context else None
    return lazy(c), lazy.mask.int().tolist()  # ranks: group A 0, group B 1


def coupling_affine(d):
    t, ranks = _coupling(d)
    return Case(t, ranks=ranks)


def coupling_affine_context_random_mask(d):
    mask = torch.rand(d) < 0.5
    mask[torch.randint(d, ())] = True  # at least one transformed feature
    t, ranks = _coupling(d, context=3, mask=mask, univariate_kwargs=dict(scale="softplus"))
    return Case(t, ranks=ranks)


def coupling_additive(d):
    t, ranks = _coupling(d, context=2, univariate_kwargs=dict(scale="none"))
    return Case(t, ranks=ranks)


def coupling_spline(d):
    t, ranks = _coupling(
        d, context=2, univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=5, bound=2.0)
    )
    return Case(t, ranks=ranks)


def coupling_spline_inverse(d):
    t, ranks = _coupling(
        d, univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=4, bound=2.0)
    )
    # The inverse is a coupling with the same groups: y_A = x_A, x_B = h^{-1}(y_B; y_A).
    return Case(t.inv, ranks=ranks)


CASES = {
    f.__name__: f
    for f in [
        affine_softplus,
        affine_softplus_floor,
        affine_exp,
        affine_exp_clamped,
        affine_stable,
        affine_additive,
        coupling_affine,
        coupling_affine_context_random_mask,
        coupling_additive,
        coupling_spline,
        coupling_spline_inverse,
    ]
}
