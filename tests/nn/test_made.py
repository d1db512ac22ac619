import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from arflows.nn import MADE, DenseNN
from tests.helpers import randomize


@st.composite
def made_configs(draw):
    features = draw(st.integers(1, 12))
    depth = draw(st.integers(1, 3))
    residual = draw(st.booleans())
    widths = draw(st.lists(st.sampled_from([4, 8, 16, 33]), min_size=depth, max_size=depth))
    if residual:
        widths = [widths[0]] * depth
    return dict(
        features=features,
        hidden_features=tuple(widths),
        param_dims=draw(st.sampled_from([(1,), (1, 1), (2, 1, 3)])),
        context=draw(st.sampled_from([0, 1, 3])),
        order=draw(st.permutations(range(features))),
        hidden_degrees=draw(st.sampled_from(["sequential", "random"])),
        residual=residual,
        skip=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def build(config, activation=nn.ReLU):
    config = dict(config)
    seed = config.pop("seed")
    try:
        made = MADE(**config, activation=activation, generator=torch.Generator().manual_seed(seed))
    except ValueError as error:
        # Narrow layers may leave an output blind: that must be refused with a clear message.
        assert "too narrow" in str(error)
        assert min(config["hidden_features"]) < config["features"]
        return None
    return randomize(made.double(), scale=0.5, seed=seed)


def made_jacobians(made, samples=3, seed=0):
    """|d params / d x| and |d params / d c| summed over samples, as (D, P, D) and (D, P, C)."""
    d, ctx = made.features, made.context
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, d, dtype=torch.float64, generator=gen)
    c = torch.randn(samples, ctx, dtype=torch.float64, generator=gen) if ctx else None

    def params(x, c=None):
        out = made(x, c)
        return torch.cat([p.reshape(samples, d, -1) for p in out], -1).sum(0)

    jac = torch.autograd.functional.jacobian(params, (x,) if c is None else (x, c))
    jx = jac[0].abs().sum(2)  # (D, P, D)
    jc = jac[1].abs().sum(2) if c is not None else None
    return jx, jc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(made_configs(), st.sampled_from([nn.ReLU, nn.Tanh]))
def test_made_is_autoregressive(config, activation):
    made = build(config, activation=activation)
    if made is None:
        return
    ranks = torch.tensor(config["order"])
    jx, jc = made_jacobians(made, seed=config["seed"])
    forbidden = ranks[None, :] >= ranks[:, None]  # output i may not see input j
    dep = jx.amax(1)  # (D, D)
    assert (dep[forbidden] == 0).all(), "an output depends on a forbidden input"
    # The masks' product is the degree rule or a part of it, and the Jacobian stays within it.
    reach = made.connectivity()
    assert not (reach & forbidden).any()
    assert not ((dep != 0) & ~reach).any()
    if jc is not None and activation is nn.Tanh:
        # With ReLU a narrow layer's few context-only units may all be off at the sample
        # points; tanh never cuts a path, so every output must then see the context.
        assert (jc.amax(1) > 0).all(), "an output ignores the context"


@settings(max_examples=30, deadline=None)
@given(made_configs())
def test_made_connectivity_is_degree_rule_when_wide(config):
    config = dict(config, hidden_features=(24,) * len(config["hidden_features"]))
    config["hidden_degrees"] = "sequential"
    made = build(config, activation=nn.Tanh)
    ranks = torch.tensor(config["order"])
    allowed = ranks[None, :] < ranks[:, None]
    assert torch.equal(made.connectivity(), allowed)
    jx, _ = made_jacobians(made)
    assert torch.equal(jx.amax(1) != 0, allowed)  # with tanh every path carries signal


def test_param_dims_shapes():
    made = MADE(5, (16,), param_dims=(1, 4, 2), context=2)
    x, c = torch.randn(3, 7, 5), torch.randn(7, 2)
    a, b, d = made(x, c)
    assert a.shape == (3, 7, 5) and b.shape == (3, 7, 5, 4) and d.shape == (3, 7, 5, 2)
    assert made(torch.randn(5), torch.randn(2))[1].shape == (5, 4)


def test_outputs_start_at_zero():
    made = MADE(4, (16, 16), context=3, skip=True, residual=True)
    for p in made(torch.randn(10, 4), torch.randn(10, 3)):
        assert torch.equal(p, torch.zeros_like(p))
    net = DenseNN(3, 2, (8,), context=1)
    assert torch.equal(net(torch.randn(4, 3), torch.randn(4, 1)), torch.zeros(4, 2))


def test_hidden_units_sorted_by_degree():
    made = MADE(6, (13, 7), context=2, hidden_degrees="random")
    for deg in made.degrees:
        assert torch.equal(deg, deg.sort().values)
        assert deg.min() == 0  # context-only units exist


def test_narrow_hidden_layers():
    made = MADE(10, (3, 3))  # narrower than D: fewer degrees covered, still autoregressive
    reach = made.connectivity()
    assert not reach.triu().any()
    assert reach[1:].any(1).all()
    with pytest.raises(ValueError, match="too narrow.*features \\[1, 2, 3, 4\\]"):
        MADE(10, (2, 2), context=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=0), "features >= 1"),
        (dict(features=3, hidden_features=()), "at least one hidden layer"),
        (dict(features=3, param_dims=(0,)), "param_dims"),
        (dict(features=3, hidden_features=(8, 4), residual=True), "equal hidden widths"),
        (dict(features=3, hidden_degrees="nope"), "hidden_degrees"),
        (dict(features=3, order=[0, 0, 1]), "permutation"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_made_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MADE(**kwargs)


def test_made_call_errors():
    made = MADE(3, (8,), context=2)
    with pytest.raises(ValueError, match="shape \\(\\*, 3\\)"):
        made(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="expects a context of size 2"):
        made(torch.randn(4, 3))
    with pytest.raises(ValueError, match="context with shape"):
        made(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="no context"):
        MADE(3, (8,))(torch.randn(4, 3), torch.randn(4, 2))


def test_made_moves_dtype():
    made = MADE(3, (8,), context=2).double()
    out = made(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    assert out[0].dtype == torch.float64
