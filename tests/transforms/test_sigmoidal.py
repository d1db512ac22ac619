"""The deep sigmoidal map: formula, identity, tails, root-finding inverse, implicit gradients."""

import math

import pytest
import torch

from arflows.flows import MaskedAutoregressiveTransform
from arflows.flows.neural import NAF
from arflows.transforms.sigmoidal import MonotonicSigmoidalTransform
from tests.helpers import randomize

F64 = torch.float64
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)


def _transform(*batch, k=6, scale=2.0, dtype=F64):
    return MonotonicSigmoidalTransform(*(scale * torch.randn(3, *batch, k, dtype=dtype)))


def _reference(t, x):
    """logit(sum_k w_k sigmoid(a_k x + b_k)) straight from the definition, in float64."""
    a = 1e-3 + torch.nn.functional.softplus(t.slopes + math.log(math.expm1(1 - 1e-3)))
    w = t.weights.softmax(-1)
    s = (w * torch.sigmoid(a * x[..., None] + t.shifts)).sum(-1)
    return torch.logit(s)


def test_matches_the_definition():
    t = _transform(50)
    x = torch.randn(50, dtype=F64)
    assert torch.allclose(t(x), _reference(t, x), atol=1e-10)


def test_log_slope_matches_autograd_elementwise():
    t = _transform(40)
    x = torch.randn(40, dtype=F64, requires_grad=True)
    y, ladj = t.call_and_ladj(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(ladj, slope.log(), atol=1e-10)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), ladj)


@DTYPES
def test_zero_parameters_are_the_exact_identity(dtype):
    t = MonotonicSigmoidalTransform(*torch.zeros(3, 200, 8, dtype=dtype))
    x = torch.randn(200, dtype=dtype) * 4
    y, ladj = t.call_and_ladj(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros_like(x))
    assert torch.equal(t.inv(x), x)


def test_increasing_with_linear_tails():
    t = _transform(k=5)
    x = torch.linspace(-200, 200, 4001, dtype=F64)
    y = t(x)
    assert (y.diff() > 0).all()
    slopes = t.call_and_ladj(x)[1].exp()
    assert (slopes >= 1e-3 * (1 - 1e-9)).all()
    # far tails: slope -> smallest a_k on both sides
    tails = t.call_and_ladj(torch.tensor([-1e6, 1e6], dtype=F64))[1].exp()
    assert torch.allclose(tails, t.a.min().expand(2), rtol=1e-6)


@DTYPES
def test_far_tails_stay_finite(dtype):
    params = (3 * torch.randn(3, 64, 8, dtype=dtype)).requires_grad_()
    t = MonotonicSigmoidalTransform(*params)
    x = torch.tensor([1e4, -1e4] * 32, dtype=dtype, requires_grad=True)  # an all-tail batch
    y, ladj = t.call_and_ladj(x)
    assert y.isfinite().all() and ladj.isfinite().all()
    (y.sum() + ladj.sum()).backward()
    assert x.grad.isfinite().all() and params.grad.isfinite().all()
    assert ((y.sign() == x.sign()) | (y.abs() < 1e3)).all()
    # the inverse recovers the tail points (relative to their size)
    back = t.inv(y.detach())
    assert back.isfinite().all()
    assert ((back - x.detach()).abs() <= 1e-3 * x.detach().abs()).all()


def test_tail_log_slope_is_accurate_in_float32():
    t64 = _transform(30, k=4)
    t32 = MonotonicSigmoidalTransform(t64.slopes.float(), t64.shifts.float(), t64.weights.float())
    x = torch.tensor([3e3, -3e3] * 15, dtype=F64)
    ladj64 = t64.call_and_ladj(x)[1]
    ladj32 = t32.call_and_ladj(x.float())[1]
    assert torch.allclose(ladj32.double(), ladj64, atol=1e-4)


@DTYPES
def test_inverse_round_trip(dtype):
    t = _transform(500, dtype=dtype)
    x = torch.randn(500, dtype=dtype) * 3
    tol = 1e-10 if dtype == F64 else 1e-3
    assert torch.allclose(t.inv(t(x)), x, atol=tol)


def test_inverse_converges_in_few_iterations():
    t = _transform(2000, k=8)
    y = torch.randn(2000, dtype=F64) * 3
    root = t.solve(y)
    assert root.converged.all()
    assert root.iterations.max() <= 20  # early exit, far below a fixed 50
    assert root.iterations.double().mean() < 8
    assert torch.allclose(t(root.x), y, atol=1e-10)


def test_solve_meets_per_element_tolerance():
    t = _transform(5, 40)
    y = torch.randn(5, 40, dtype=F64) * 2
    exact = t.solve(y, atol=0.0, rtol=1e-15).x
    atol = 10.0 ** -torch.tensor([2.0, 4, 6, 9, 12], dtype=F64)[:, None]
    root = t.solve(y, atol=atol, rtol=0.0)
    assert root.converged.all()
    assert ((root.x - exact).abs() <= atol).all()
    assert root.iterations[0].sum() < root.iterations[-1].sum()


def test_inverse_value_is_the_root_with_or_without_gradients():
    t = _transform(30)
    y = torch.randn(30, dtype=F64)
    with torch.no_grad():
        plain = t.inv(y)
    tracked = t.inv(y.clone().requires_grad_())
    assert torch.equal(tracked.detach(), plain)


def test_inverse_gradients_match_finite_differences():
    params = [torch.randn(4, 5, dtype=F64, requires_grad=True) for _ in range(3)]
    y = (2 * torch.randn(4, dtype=F64)).requires_grad_()

    def inverse(y, slopes, shifts, weights):
        return MonotonicSigmoidalTransform(slopes, shifts, weights).inv(y)

    assert torch.autograd.gradcheck(inverse, (y, *params), atol=1e-7, rtol=1e-6)


def test_inverse_gradients_are_the_implicit_ones():
    # dx/dy = 1 / h'(x) and dx/dtheta = -(dh/dtheta) / h'(x), from the forward map's autograd.
    t_params = [torch.randn(6, 4, dtype=F64, requires_grad=True) for _ in range(3)]
    t = MonotonicSigmoidalTransform(*t_params)
    y = torch.randn(6, dtype=F64, requires_grad=True)
    x = t.inv(y)
    gy, *gtheta = torch.autograd.grad(x.sum(), (y, *t_params))
    x0 = x.detach().requires_grad_()
    h, ladj = MonotonicSigmoidalTransform(*t_params).call_and_ladj(x0)
    dh = torch.autograd.grad(h.sum(), t_params)
    slope = ladj.exp().detach()
    assert torch.allclose(gy, 1 / slope, atol=1e-12)
    for g, d in zip(gtheta, dh, strict=True):
        assert torch.allclose(g, -d / slope[:, None], atol=1e-12)


def test_non_finite_values_pass_through_the_inverse():
    t = _transform(3, k=4)
    y = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=F64)
    root = t.solve(y)
    assert root.x.isnan()[0] and root.x[1:].tolist() == [float("inf"), -float("inf")]


def test_broadcasting_of_values_against_parameters():
    t = _transform(3, k=4)
    y = torch.randn(7, 3, dtype=F64)
    x = t.inv(y)
    assert x.shape == (7, 3)
    assert torch.allclose(t(x), y, atol=1e-10)


def test_param_shapes_and_bad_arguments():
    assert MonotonicSigmoidalTransform.param_shapes(components=3) == ((3,), (3,), (3,))
    with pytest.raises(ValueError, match="components >= 1"):
        MonotonicSigmoidalTransform.param_shapes(components=0)
    with pytest.raises(ValueError, match=r"\(\*, K\)"):
        MonotonicSigmoidalTransform(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="K = 5"):
        MonotonicSigmoidalTransform(*torch.zeros(3, 2, 4), components=5)
    with pytest.raises(ValueError, match="components >= 1"):
        NAF(2, components=0)
    assert "components=4" in repr(MonotonicSigmoidalTransform(*torch.zeros(3, 4)))


def test_sweep_inverse_equals_fixed_point_inverse():
    kwargs = dict(
        univariate=MonotonicSigmoidalTransform,
        univariate_kwargs=dict(components=4),
        hidden_features=(16,),
    )
    sweep = randomize(MaskedAutoregressiveTransform(4, 2, **kwargs).double(), scale=0.5)
    passes = MaskedAutoregressiveTransform(4, 2, inverse="passes", **kwargs).double()
    passes.load_state_dict(sweep.state_dict())
    c, y = torch.randn(9, 2, dtype=F64), torch.randn(9, 4, dtype=F64)
    with torch.no_grad():
        x = sweep(c).inv(y)
        assert torch.allclose(x, passes(c).inv(y), atol=1e-10)
        assert torch.allclose(sweep(c)(x), y, atol=1e-10)


def test_naf_trains_a_step_and_samples():
    flow = NAF(2, context=1, transforms=2, hidden_features=(8,), components=3).double()
    c = torch.randn(16, 1, dtype=F64)
    x = torch.randn(16, 2, dtype=F64)
    loss = -flow(c).log_prob(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    samples = flow(c).rsample()
    assert samples.shape == (16, 2) and samples.isfinite().all()
