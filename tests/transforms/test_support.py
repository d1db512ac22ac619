"""SupportTransform and support_bounds: exactness near bounds, outside points, flows, errors."""

import math

import pytest
import torch

import arflows
from arflows.flows import Flow, MaskedAutoregressiveTransform, StandardNormal, Unconditional
from arflows.transforms.support import SHARPNESS, SupportTransform, support_bounds
from tests.helpers import randomize

F64 = torch.float64
SPEC = [(0, 1), (0, None), (None, 2), None, (-3, 5)]


def _transform(dtype=F64, spec=SPEC, sharpness=None):
    return SupportTransform(*support_bounds(spec, len(spec), dtype=dtype), sharpness)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _outermost(lower, upper):
    """The points nearest the bounds that samples reach: the bounds' inner neighbours, but
    at least the smallest normal number away (gradients of log(gap) stay finite)."""
    tiny = torch.finfo(lower.dtype).tiny
    first = torch.maximum(torch.nextafter(lower, upper), lower + tiny)
    last = torch.minimum(torch.nextafter(upper, lower), upper - tiny)
    return first, last


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


@pytest.mark.parametrize("sharpness", [SHARPNESS, 0.0], ids=["knee", "logit"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_samples_are_strictly_inside_for_any_finite_y(dtype, sharpness):
    # A plain a + (b - a) sigmoid(y) rounds onto a bound once the gap falls below half an ulp:
    # at y = 17 already for (-3, 5) in float32.
    t = _transform(dtype, sharpness=sharpness)
    big = torch.finfo(dtype).max
    y = torch.tensor(
        [
            [v] * 5
            for v in (-big, -1e30, -1e4, -200.0, -40.0, -17.0, 17.0, 40.0, 200.0, 1e4, 1e30, big)
        ],
        dtype=dtype,
    )
    y = torch.cat([y, 30 * torch.randn(2000, 5, dtype=dtype, generator=_gen())])
    y.requires_grad_()
    x, ladj = t.inv.call_and_ladj(y)
    lower, upper = t.lower.to(dtype), t.upper.to(dtype)
    assert ((x > lower) & (x < upper)).all() and torch.isfinite(x).all()
    assert torch.isfinite(ladj).all()
    (grad,) = torch.autograd.grad(x.sum() + ladj.sum(), y)
    assert torch.isfinite(grad).all()
    # Every sample scores finite, and where the inverse clamped (x on the outermost float
    # inside a bound), its log-determinant is the forward one at that point.
    y_back, ladj_back = t.call_and_ladj(x.detach())
    assert torch.isfinite(y_back).all() and torch.isfinite(ladj_back).all()
    assert torch.equal(ladj, -ladj_back)  # everywhere, clamped points included
    first, last = _outermost(lower, upper)
    edge = (x == first) | (x == last)
    # y = +-max, +-1e30, +-1e4: on the outermost floats of the intervals, and of the
    # half-bounded columns on their bounded side.
    assert edge[:3][:, [0, 1, 4]].all() and edge[9:12][:, [0, 2, 4]].all()
    assert torch.equal(t.inv.log_abs_det_jacobian(y, x), ladj)


@pytest.mark.parametrize("sharpness", [SHARPNESS, 0.0, 1.0], ids=["knee", "logit", "wide"])
def test_inverse_log_det_matches_autograd(sharpness):
    # Down to gaps of 1e-30 next to the bound at 0 (column 0), where x keeps its digits.
    t = _transform(F64, sharpness=sharpness)
    y = 3 * torch.randn(500, 5, dtype=F64, generator=_gen())
    y_far = t(torch.tensor([1e-31, 1.0, 1.0, 1.0, 1.0], dtype=F64))[0].item()
    y[:, 0] = torch.linspace(y_far, 0.4, 500)
    y.requires_grad_()
    x, ladj = t.inv.call_and_ladj(y)
    (grad,) = torch.autograd.grad(x.sum(), y)
    # Away from the bounds that x approaches from within a few ulps of them (columns 1-4).
    lower, upper = t.lower.to(F64), t.upper.to(F64)
    gap = torch.minimum(x - lower, upper - x).detach()
    keep = gap > 1e-8 * torch.maximum(lower.abs(), upper.abs()).nan_to_num(posinf=0.0)
    keep[:, 0] = True
    assert (gap[:, 0] < 1e-30).any()
    assert torch.allclose(ladj[keep], grad.log()[keep], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sharpness", [SHARPNESS, 0.0], ids=["knee", "logit"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_points_next_to_the_bounds_are_finite_and_round_trip(dtype, sharpness):
    t = _transform(dtype, sharpness=sharpness)
    lower, upper = t.lower.to(dtype), t.upper.to(dtype)
    first, last = _outermost(lower, upper)
    x = torch.stack(
        [
            torch.where(lower.isfinite(), first, torch.where(upper.isfinite(), upper - 1, 7.0)),
            torch.where(upper.isfinite(), last, torch.where(lower.isfinite(), lower + 1, 7.0)),
        ]
    )
    y, ladj = t.call_and_ladj(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    # The outermost points are reached again, to the relative precision |log gap| eps that
    # the gap computed as exp(log gap) has (exactly, for gaps of one ulp).
    back, eps = t.inv(y), torch.finfo(dtype).eps
    gap = torch.minimum(x - lower, upper - x).clamp(max=1.0)
    assert ((back - x).abs() <= 2 * gap.log().abs() * eps * gap).all()
    assert torch.equal(back[:, 2:], x[:, 2:])
    # Closer still (a subnormal gap at 0): finite too, and the inverse stops at the tiny gap.
    sub = torch.nextafter(lower[:2], upper[:2])
    y, ladj = t.call_and_ladj(torch.cat([sub, x[0, 2:]]))
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert torch.allclose(t.inv(y)[:2], first[:2], rtol=1e-12 if dtype == F64 else 1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_flow_pressed_against_the_bounds_samples_inside_with_finite_log_prob(dtype):
    # A flow whose samples crowd the bounds (scales 8 times too wide after the support map):
    # before the clamp, most float32 samples landed on +-3 exactly with log_prob -inf.
    gen = torch.Generator().manual_seed(0)
    flow = arflows.MAF(features=5, context=8, support=[(-3.0, 3.0)] * 5).to(dtype)
    randomize(flow, scale=0.3, seed=1)
    x = torch.rand(1000, 5, generator=gen, dtype=dtype) * 6 - 3
    flow.standardize_(x, torch.randn(1000, 8, generator=gen, dtype=dtype))
    flow.standardization.scale.mul_(8)
    c = torch.randn(4, 8, generator=gen, dtype=dtype)
    with torch.no_grad():
        x, log_p = flow(c).sample_and_log_prob((5000,))
        assert ((x > -3) & (x < 3)).all()
        log_p_again = flow(c).log_prob(x)
    assert torch.isfinite(log_p).all() and torch.isfinite(log_p_again).all()
    crowded = ((x - 3).abs() < 1e-3) | ((x + 3).abs() < 1e-3)
    assert crowded.any(-1).float().mean() > 0.5  # the bounds were pressed indeed


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


@pytest.mark.parametrize("standardized", [True, False])
def test_flow_samples_stay_inside_and_round_trip_shapes(standardized):
    spec = [(0, 1), (0, None), (None, -2), (-1, 3)]
    made = MaskedAutoregressiveTransform(4, 2, hidden_features=(16, 16))
    flow = randomize(Flow([made], StandardNormal(4), support=spec).double(), scale=0.1)
    lower, upper = support_bounds(spec, 4, dtype=F64)
    if standardized:  # as fit() does: data spread over the support
        u = torch.rand(2000, 4, dtype=F64, generator=_gen())
        flow.standardize_(
            torch.stack([u[:, 0], 3 * u[:, 1], -2 - 3 * u[:, 2], 4 * u[:, 3] - 1], -1)
        )
    c = torch.randn(3, 2, dtype=F64, generator=_gen(1))
    x, log_p = flow(c).rsample_and_log_prob((500,))
    assert x.shape == (500, 3, 4)
    assert ((x > lower) & (x < upper)).all()
    log_p_again = flow(c).log_prob(x)
    assert torch.isfinite(log_p_again).all()
    # A sample the inverse clamped onto the outermost float carries the mass of the gaps too
    # small to represent. Unstandardised, this flow is as wide as N(0, 1) for (0, 1) and
    # (-1, 3): its tails crowd the bounds.
    first, last = _outermost(lower, upper)
    clamped = ((x == first) | (x == last)).any(-1)
    assert clamped.float().mean() < (0.01 if standardized else 0.3)
    # Where x keeps its digits (gaps to the bounds > 1e-6), its density is log_prob's: near a
    # bound x is rounded, and log_prob sees the rounded point.
    far = (torch.minimum(x - lower, upper - x) > 1e-6).all(-1)
    assert far.float().mean() > 0.5
    assert torch.allclose(log_p[far], log_p_again[far], atol=1e-8)


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
    n = 801
    # Each axis fine enough for its map: the interval's knees are (b - a) / 32 wide.
    y = torch.stack([torch.linspace(-5, 5, n), torch.linspace(-20, 40, n)], -1).double()
    with torch.no_grad():
        x = flow.transforms[0]().inv(y)  # (n, 2): each axis
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


@pytest.mark.parametrize("sharpness", [SHARPNESS, 0.0], ids=["knee", "logit"])
def test_kinds_are_what_the_spec_says(sharpness):
    # A kind swap (say, logit for a half-bounded column) would change these values.
    t = _transform(sharpness=sharpness)
    x = torch.tensor([0.75, 0.5, 1.5, -2.0, 1.0], dtype=F64)

    def interval(x, a, b):
        if sharpness == 0:
            return math.log((x - a) / (b - a) / (1 - (x - a) / (b - a)))
        s = (b - a) / sharpness

        def inverse_softplus(t):
            return math.log(math.expm1(t))

        return s / 2 * (inverse_softplus((x - a) / s) - inverse_softplus((b - x) / s))

    expected = [
        interval(0.75, 0, 1),
        math.log(math.expm1(0.5)),
        -math.log(math.expm1(0.5)),
        -2.0,
        interval(1.0, -3, 5),
    ]
    assert torch.allclose(t(x), torch.tensor(expected, dtype=F64), atol=1e-12)


def test_knee_is_a_shift_in_the_middle_and_a_log_at_the_bounds():
    # y = x - mid with unit slope, up to a relative e^-u + e^-v (u, v: the gaps in knees,
    # here (b - a) / 32 = 0.25): at least 8 knees inside on the middle half.
    t = _transform()
    x = torch.linspace(-1.0, 3.0, 101, dtype=F64)  # the middle half of (-3, 5)
    rows = torch.tensor([0.5, 1.0, 1.0, 1.0, 0.0], dtype=F64).repeat(101, 1)
    rows[:, 4] = x
    y, ladj = t.call_and_ladj(rows)
    bend = 2 * math.exp(-8)
    assert ((y[:, 4] - (x - 1)).abs() <= bend).all()
    assert (ladj[:, 4].abs() <= bend).all()
    assert abs(y[50, 4]) < 1e-15 and abs(ladj[50, 4]) < 1e-6
    # Within the knee, (s / 2) log(x - a): halving the gap moves y by (0.25 / 2) log 2.
    rows = rows[:2].clone()
    rows[:, 4] = -3 + torch.tensor([1e-6, 5e-7], dtype=F64)
    y = t(rows)[:, 4]
    assert torch.allclose(y[0] - y[1], torch.tensor(0.125 * math.log(2), dtype=F64))


def test_sharpness_is_checked_and_shown():
    with pytest.raises(ValueError, match=r"sharpness.*\[0, 64\]"):
        _transform(sharpness=-1.0)
    with pytest.raises(ValueError, match=r"sharpness"):
        _transform(sharpness=100.0)
    assert "sharpness=32.0" in repr(_transform())


def test_flows_store_the_sharpness_and_old_weights_load_as_the_logit():
    flow = randomize(arflows.MAF(2, transforms=1, hidden_features=(8,), support=[(0, 1), None]))
    state = flow.state_dict()
    assert state["support._arg2"].tolist() == [SHARPNESS] * 2
    x = torch.tensor([[0.3, 0.1], [0.9, -2.0]])
    before = flow().log_prob(x)
    # Weights saved before the knee have two support buffers: they were fitted with the logit.
    del state["support._arg2"]
    old = arflows.MAF(2, transforms=1, hidden_features=(8,), support=[(0, 1), None])
    old.load_state_dict(state, strict=True)
    assert old.support._arg2.tolist() == [0.0, 0.0]
    logit = flow.support._arg2.clone().zero_()
    flow.support._arg2.copy_(logit)
    assert torch.allclose(old().log_prob(x), flow().log_prob(x))
    assert not torch.allclose(old().log_prob(x), before)
