"""Registry cases (see cases.py) for the support transforms: name -> factory(features) -> Case.

The property tests feed standard normal points, so every support contains them: wide bounds,
and tight ones (a few standard deviations) where the maps are far from linear.
"""

import torch

from arflows.transforms import ComposedTransform
from arflows.transforms.support import SupportTransform, support_bounds
from tests.transforms.cases import F64, Case, _made_transform

WIDE = [(-50, 60), (-40, None), (None, 45), None, (-30, 1000)]
TIGHT = [(-5.5, 6), (-4.5, None), None, (None, 5), (-7, 4.75)]


def _support(spec, d):
    return SupportTransform(*support_bounds([spec[i % len(spec)] for i in range(d)], d, dtype=F64))


# Elementwise maps are autoregressive in any order, with a diagonal Jacobian.
def support_wide(d):
    return Case(_support(WIDE, d), ranks=list(range(d)))


def support_tight(d):
    return Case(_support(TIGHT, d), ranks=list(range(d))[::-1])


def support_then_made(d):
    # The support map first, as a flow puts it: elementwise, so the MADE's order still holds.
    order = torch.randperm(d)
    lazy, c = _made_transform(d, context=2, order=order)
    return Case(ComposedTransform(_support(TIGHT, d), lazy(c)), ranks=order.tolist())


CASES = {f.__name__: f for f in [support_wide, support_tight, support_then_made]}
