import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arflows.transforms.spline import MonotonicRQSTransform
from tests.helpers import LADJ_ATOL

DTYPES = [torch.float32, torch.float64]


def spline(shape, bins=8, bound=5.0, dtype=torch.float64, scale=2.0, requires_grad=False):
    params = [
        (scale * torch.randn(*shape, k, dtype=dtype)).requires_grad_(requires_grad)
        for k in (bins, bins, bins - 1)
    ]
    return MonotonicRQSTransform(*params, bound=bound), params


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_parameters_are_the_identity(dtype):
    t = MonotonicRQSTransform(*(torch.zeros(4, k, dtype=dtype) for k in (6, 6, 5)), bound=3.0)
    x = torch.tensor([-10.0, -2.9, 0.4, 2.5], dtype=dtype)
    y, ladj = t.call_and_ladj(x)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(y, x, atol=tol) and torch.allclose(ladj, torch.zeros_like(x), atol=tol)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.floats(0.5, 8.0), st.integers(0, 2**16))
def test_derivative_and_round_trip(bins, bound, seed):
    torch.manual_seed(seed)
    t, _ = spline((50,), bins=bins, bound=bound)
    x = bound * 1.3 * (2 * torch.rand(50, dtype=torch.float64) - 1)
    y, ladj = t.call_and_ladj(x)
    jac = torch.autograd.functional.jacobian(t, x).diagonal()
    assert torch.allclose(ladj, jac.log(), atol=LADJ_ATOL)
    assert (jac > 0).all()
    assert torch.allclose(t.inv(y), x, atol=1e-9)
    assert torch.allclose(t.inv.call_and_ladj(y)[1], -ladj, atol=LADJ_ATOL)


def _edge_points(bound, dtype):
    eps = 1e-6
    values = [0.0, bound, -bound, bound + eps, bound - eps, -bound + eps, -bound - eps, 1e4, -1e4]
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_edges_are_finite_in_values_and_gradients(dtype, direction):
    bound = 2.5
    x = _edge_points(bound, dtype).requires_grad_()
    t, params = spline(x.shape, bound=bound, dtype=dtype, scale=3.0, requires_grad=True)
    if direction == "forward":
        y, ladj = t.call_and_ladj(x)
    else:
        y, ladj = t.inv.call_and_ladj(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    for g in [x.grad, *(p.grad for p in params)]:
        assert torch.isfinite(g).all()
    outside = x.detach().abs() > bound
    assert torch.equal(y[outside], x[outside]) and (ladj[outside] == 0).all()
    round_trip = t(t.inv(x)) if direction == "inverse" else t.inv(t(x))
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(round_trip, x, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_entirely_in_the_tails(dtype):
    t, params = spline((6,), dtype=dtype, requires_grad=True)
    x = torch.tensor([-1e4, -6.0, -5.0 - 1e-3, 5.0 + 1e-3, 7.0, 1e4], dtype=dtype)
    y, ladj = t.call_and_ladj(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros_like(x))
    ladj.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_extreme_parameters_stay_monotone_and_finite():
    for seed in range(5):
        torch.manual_seed(seed)
        t, _ = spline((), bins=10, scale=40.0, dtype=torch.float32)  # one spline, many points
        _check_monotone_and_finite(t)


def _check_monotone_and_finite(t):
    x = torch.linspace(-6, 6, 2001)
    y, ladj = t.call_and_ladj(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert (y[1:] >= y[:-1]).all()
    assert torch.isfinite(t.inv(y)).all()


def test_argument_errors():
    with pytest.raises(ValueError, match="bins >= 2"):
        MonotonicRQSTransform.param_shapes(bins=1)
    with pytest.raises(ValueError, match="bound > 0"):
        spline((3,), bound=0.0)
    with pytest.raises(ValueError, match="K = 8"):
        MonotonicRQSTransform(torch.zeros(8), torch.zeros(8), torch.zeros(8))


def test_large_batches_take_the_same_bins_and_values():
    # Many rows count the knots below each value one knot at a time (see _count_below): the
    # values are those of the same rows in small batches.
    t, params = spline((9000, 8), bins=5, scale=3.0)
    x = 3 * torch.randn(9000, 8, dtype=torch.float64)
    y, ladj = t.call_and_ladj(x)
    for rows in (slice(0, 7), slice(4000, 4100)):
        small = MonotonicRQSTransform(*(p[rows] for p in params))
        y_small, ladj_small = small.call_and_ladj(x[rows])
        assert torch.equal(y[rows], y_small) and torch.equal(ladj[rows], ladj_small)
        assert torch.equal(t.inv(y)[rows], small.inv(y_small))


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 9, 16])
def test_last_max_by_halves_equals_amax(k):
    from arflows.transforms.spline import _last_max

    t = torch.randn(50, 40)[:, :k * 2].unflatten(-1, (2, k))  # strided, as a MADE's outputs
    t[0, 0, -1] = 1e30  # the largest in the last place, and a tie elsewhere
    t[1, 1, :] = 3.0
    assert torch.equal(_last_max(t), t.amax(dim=-1, keepdim=True))
