"""SupportTransform and support_bounds: exactness near bounds, outside points, flows, errors."""

import math

import pytest
import torch

from arflows.flows import Flow, MaskedAutoregressiveTransform, StandardNormal, Unconditional
from arflows.transforms.support import SupportTransform, support_bounds
from tests.helpers import randomize

F64 = torch.float64
SPEC = [(0, 1), (0, None), (None, 2), None, (-3, 5)]


def _transform(dtype=F64, spec=SPEC):
    return SupportTransform(*support_bounds(spec, len(spec), dtype=dtype))


def _flow(spec, seed=0, context=0):
    d = len(spec)
    support = Unconditional(SupportTransform, *support_bounds(spec, d))
    made = MaskedAutoregressiveTransform(d, context, hidden_features=(16, 16))
    flow = Flow([support, made], StandardNormal(d)).double()
    return randomize(flow, scale=0.3, seed=seed)


def test_bounds_are_parsed():
    lower, upper = support_bounds(SPEC, 5, dtype=F64)
    assert lower.tolist() == [0, 0, -math.inf, -math.inf, -3]
    assert upper.tolist() == [1, math.inf, 2, math.inf, 5]
    lower, upper = support_bounds([(-math.inf, 3.5), (1, math.inf)], 2)
    assert lower.dtype == torch.get_default_dtype()
    assert lower.tolist() == [-math.inf, 1] and upper.tolist() == [3.5, math.inf]


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ([None, None], ValueError, r"one entry per column \(3\), got 2"),
        ([None, (1, 0), None], ValueError, r"lower < upper for support column 1"),
        ([None, (2, 2), None], ValueError, r"lower < upper for support column 1"),
        ([None, None, (0, 1, 2)], ValueError, r"column 2 to be None or a pair"),
        ([None, None, 3], ValueError, r"column 2 to be None or a pair"),
        ([("a", 1), None, None], TypeError, r"lower bound of support column 0"),
        ([None, (0, True), None], TypeError, r"upper bound of support column 1"),
        ([(math.nan, 1), None, None], ValueError, r"lower bound for support column 0, got NaN"),
        ("abc", TypeError, r"expected `support` to be a list"),
        (None, TypeError, r"expected `support` to be a list"),
    ],
)
def test_bad_specs_are_named(spec, error, match):
    with pytest.raises(error, match=match):
        support_bounds(spec, 3)


def test_bad_bounds_are_named():
    with pytest.raises(ValueError, match="same shape"):
        SupportTransform(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"columns \[1\]"):
        SupportTransform(torch.zeros(2), torch.tensor([1.0, -1.0]))


def test_unbounded_columns_are_the_identity_and_half_bounds_far_from_it_too():
    t = _transform()
    x = torch.tensor([0.5, 60.0, -58.0, 123.4, 1.0], dtype=F64)
    y, ladj = t.call_and_ladj(x)
    assert y[3] == x[3] and ladj[3] == 0
    # The inverse softplus is log(e^t - 1) = t + log(1 - e^-t): the identity up to e^-60.
    assert torch.allclose(y[1:3], x[1:3] + torch.tensor([0.0, -2.0], dtype=F64), atol=1e-20)
    assert y[0] == 0  # the logit of the midpoint


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_log_det_is_exact_near_bounds_and_far_from_them(dtype):
    # The derivative by autograd (in float64) at points a hair from each bound, and far off.
    eps = 1e-6 if dtype == torch.float32 else 1e-12
    t64, t = _transform(F64), _transform(dtype)
    x = torch.tensor(
        [
            [eps, eps, 2 - 1e3, -1e6, -3 + 8 * eps],
            [1 - eps, 1e6, 2 - eps, 1e6, 5 - 8 * eps],
            [0.25, 1e-30, -1e30, 0.0, 4.9],
        ],
        dtype=dtype,
    )
    x64 = x.to(F64).requires_grad_()
    (grad,) = torch.autograd.grad(t64(x64).sum(), x64)
    y, ladj = t.call_and_ladj(x)
    assert y.dtype == ladj.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert torch.allclose(ladj.to(F64), grad.log(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), ladj)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_inverse_is_stable_for_extreme_values(dtype):
    t = _transform(dtype)
    y = torch.tensor([[-1e4] * 5, [1e4] * 5, [-80.0] * 5, [80.0] * 5], dtype=dtype)
    y.requires_grad_()
    x, ladj = t.inv.call_and_ladj(y)
    lower, upper = t.lower, t.upper
    assert torch.isfinite(x[:, [0, 4]]).all() and torch.isfinite(ladj).all()
    assert ((x >= lower) & (x <= upper)).all()
    (grad,) = torch.autograd.grad(x.sum(), y)
    assert torch.isfinite(grad).all()
    # log dx/dy from y stays exact where x rounds onto a bound: log(b - a) - |y| there.
    assert torch.allclose(ladj[2, 0], torch.tensor(-80.0, dtype=dtype), atol=1e-4)
    assert torch.allclose(ladj[3, 4], torch.tensor(math.log(8) - 80, dtype=dtype), atol=1e-4)
    assert torch.allclose(t.inv.log_abs_det_jacobian(y, x), ladj)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_round_trip_near_bounds(dtype):
    t = _transform(dtype)
    tiny = 1e-5 if dtype == torch.float32 else 1e-11
    x = torch.tensor(
        [[tiny, tiny, 2 - tiny, -4.0, -3 + tiny], [1 - tiny, 300.0, -300.0, 4.0, 5 - 8 * tiny]],
        dtype=dtype,
    )
    rel = 1e-5 if dtype == torch.float32 else 1e-9
    back = t.inv(t(x))
    # Relative to the distance from the nearest bound, where the digits that matter are.
    lower, upper = t.lower.to(dtype), t.upper.to(dtype)
    dist = torch.minimum(x - lower, upper - x).clamp(max=1.0)
    assert ((back - x).abs() <= rel * dist + 1e-30).all()


def test_points_outside_get_minus_inf_never_nan():
    t = _transform()
    x = torch.tensor(
        [
            [-0.1, -1.0, 2.5, -math.inf, 5.5],  # outside
            [0.0, 0.0, 2.0, math.inf, -3.0],  # on a bound (or infinite)
            [1.0, math.nan, 3.0, math.nan, 5.0],
        ],
        dtype=F64,
    )
    y, ladj = t.call_and_ladj(x)
    assert torch.isfinite(y).all()
    assert (ladj == -math.inf).all()
    assert torch.equal(t.log_abs_det_jacobian(x, y), ladj)


def test_flow_log_prob_is_minus_inf_outside_with_finite_gradients():
    spec = [(0, 1), (0, None), None]
    flow = _flow(spec)
    x = torch.tensor([[0.5, 2.0, 0.3], [1.5, 2.0, 0.3], [0.5, -1.0, 0.3], [0.2, 0.7, -4.0]])
    x = x.double().requires_grad_()
    log_p = flow().log_prob(x)
    assert torch.isfinite(log_p[[0, 3]]).all()
    assert (log_p[[1, 2]] == -math.inf).all()
    log_p[[0, 3]].sum().backward()
    assert torch.isfinite(x.grad).all()
    for p in flow.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_flow_samples_stay_inside_and_round_trip_shapes():
    spec = [(0, 1), (0, None), (None, -2), (-1, 3)]
    flow = _flow(spec, context=2)
    c = torch.randn(3, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((500,))
    lower, upper = support_bounds(spec, 4, dtype=F64)
    assert x.shape == (500, 3, 4)
    assert ((x > lower) & (x < upper)).all()
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)


@pytest.mark.parametrize(
    ("bounds", "lo", "hi"),
    [((-1, 3), -1.0, 3.0), ((-2, None), -2.0, 60.0), ((None, 3), -60.0, 3.0)],
    ids=["both", "lower", "upper"],
)
def test_flow_density_integrates_to_one_in_1d(bounds, lo, hi):
    flow = _flow([bounds])
    # Points crowd at the bounds: a grid of x = t^-1(y), y uniform, sees them (the
    # trapezoid rule takes the uneven x spacing, so no log-det enters but the flow's).
    y = torch.linspace(-40, 40, 40001, dtype=F64)[:, None]
    with torch.no_grad():
        x = flow.transforms[0]().inv(y)
        density = flow().log_prob(x).exp()
    mass = torch.trapezoid(density, x[:, 0]).item()
    assert abs(mass - 1) < 1e-3
    assert float(x.min()) >= lo and float(x.max()) <= hi


def test_flow_density_integrates_to_one_in_2d():
    flow = _flow([(-1, 2), (0.5, None)], seed=1)
    n = 601
    y = torch.linspace(-20, 40, n, dtype=F64)
    with torch.no_grad():
        x = flow.transforms[0]().inv(torch.stack([y, y], dim=-1))  # (n, 2): each axis
        grid = torch.cartesian_prod(x[:, 0], x[:, 1])
        density = flow().log_prob(grid).exp().view(n, n)
    mass = torch.trapezoid(torch.trapezoid(density, x[:, 1]), x[:, 0]).item()
    assert abs(mass - 1) < 2e-3


def test_bounds_are_buffers_that_follow_moves_and_state_dicts():
    lazy = Unconditional(SupportTransform, *support_bounds(SPEC, 5))
    assert set(lazy.state_dict()) == {"_arg0", "_arg1"}
    lazy = lazy.to(F64)
    t = lazy()
    assert t.lower.dtype == F64 and t.lower[2] == -math.inf and t.upper[1] == math.inf
    x = torch.tensor([0.5, 1.0, 0.0, 3.0, 0.0], dtype=torch.float32)
    assert t(x).dtype == torch.float32  # data keep their dtype
    other = Unconditional(SupportTransform, torch.zeros(5), torch.ones(5))
    other.load_state_dict(lazy.state_dict())
    assert torch.equal(other().upper.isinf(), torch.tensor([False, True, False, True, False]))


def test_kinds_are_what_the_spec_says():
    # A kind swap (say, logit for a half-bounded column) would change these values.
    t = _transform()
    x = torch.tensor([0.75, 0.5, 1.5, -2.0, 1.0], dtype=F64)
    expected = [
        math.log(0.75 / 0.25),
        math.log(math.expm1(0.5)),
        -math.log(math.expm1(0.5)),
        -2.0,
        math.log(4 / 4),
    ]
    assert torch.allclose(t(x), torch.tensor(expected, dtype=F64), atol=1e-14)
