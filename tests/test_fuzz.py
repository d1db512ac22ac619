"""Fuzzing constructors and inputs: bad arguments raise only ValueError or TypeError."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arflows
from arflows.nn import MADE

BUILDERS = [arflows.MAF, arflows.IAF, arflows.NSF, arflows.RealNVP, arflows.NICE, arflows.NAF]
DOCUMENTED = (ValueError, TypeError)

widths = st.lists(st.integers(-1, 6), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    builder=st.sampled_from(BUILDERS),
    features=st.integers(-1, 4),
    context=st.integers(-1, 3),
    transforms=st.integers(-1, 2),
    hidden=widths,
)
def test_builders_accept_or_refuse_clearly(builder, features, context, transforms, hidden):
    try:
        flow = builder(features, context, transforms, hidden_features=hidden)
    except DOCUMENTED as error:
        assert str(error)  # a message, naming the problem
        return
    c = torch.randn(3, context) if context else None
    with torch.no_grad():
        x = flow(c).sample()
        assert x.shape == (3, features) if context else x.shape == (features,)
        assert torch.isfinite(flow(c).log_prob(x)).all()


@settings(max_examples=60, deadline=None)
@given(
    features=st.integers(-1, 5),
    hidden=widths,
    param_dims=st.lists(st.integers(-1, 3), min_size=0, max_size=3).map(tuple),
    context=st.integers(-1, 3),
)
def test_made_accepts_or_refuses_clearly(features, hidden, param_dims, context):
    try:
        made = MADE(features, hidden, param_dims=param_dims, context=context)
    except DOCUMENTED as error:
        assert str(error)
        return
    out = made(torch.randn(2, features), torch.randn(2, context) if context else None)
    assert len(out) == len(param_dims)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    fill=st.sampled_from([0.0, float("nan"), float("inf"), 1e30]),
)
def test_log_prob_on_odd_inputs(shape, fill):
    flow = arflows.MAF(3, transforms=1, hidden_features=(8,))
    x = torch.full(shape, fill)
    try:
        log_p = flow().log_prob(x)
    except DOCUMENTED as error:
        assert str(error)
        return
    assert log_p.shape == shape[:-1]
