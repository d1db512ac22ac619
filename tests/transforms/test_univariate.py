"""The scale parameterisations of MonotonicAffineTransform."""

import math

import pytest
import torch
import torch.nn.functional as F

from arflows import IAF, MAF
from arflows.transforms import MonotonicAffineTransform
from arflows.transforms.univariate import MIN_SCALE, SCALES

F64 = torch.float64
IDENTITY_SCALES = ["softclip", "softplus", "exp", "none"]
TOL = 1e-12


def _affine(shift, log_scale, scale, **kwargs):
    return MonotonicAffineTransform(
        shift, None if scale == "none" else log_scale, scale=scale, **kwargs
    )


def test_default_is_softclip_unchanged():
    t, s, x = torch.randn(3, 4, 5, dtype=F64)
    f = MonotonicAffineTransform(t, 4 * s, bound=3.0)
    assert f.scale == "softclip"
    log_scale = 3.0 * torch.tanh(4 * s / 3.0)
    y, ladj = f.call_and_ladj(x)
    assert torch.equal(y, x * log_scale.exp() + t)
    assert torch.equal(ladj, log_scale)


@pytest.mark.parametrize("scale", IDENTITY_SCALES)
def test_zero_parameters_give_identity(scale):
    x = torch.randn(7, 4, dtype=F64)
    zero = torch.zeros(4, dtype=F64)
    y, ladj = _affine(zero, zero, scale).call_and_ladj(x)
    assert torch.allclose(y, x, rtol=0, atol=TOL)
    assert torch.allclose(ladj, torch.zeros_like(x), atol=TOL)
    assert ladj.shape == x.shape


def test_stable_is_not_identity_at_zero():
    x = torch.randn(7, 4, dtype=F64)
    zero = torch.zeros(4, dtype=F64)
    y, ladj = _affine(zero, zero, "stable").call_and_ladj(x)
    gate = 1 / (1 + math.exp(-2.0))
    assert torch.allclose(y, gate * x, atol=TOL)
    assert torch.allclose(ladj, torch.full_like(x, math.log(gate)), atol=TOL)


def test_stable_gate_matches_hand_computation():
    m, s, x = torch.randn(3, 6, dtype=F64)
    s = 3 * s
    f = _affine(m, s, "stable")
    gate = 1 / (1 + torch.exp(-(s + 2)))
    y, ladj = f.call_and_ladj(x)
    assert torch.allclose(y, gate * x + (1 - gate) * m, atol=TOL)
    assert torch.allclose(ladj, torch.log(gate), atol=TOL)
    assert torch.allclose(f.inv(y), x, atol=1e-10)
    assert (gate < 1).all()  # a contraction, never the identity


def test_softplus_formula_and_floor():
    t, s, x = torch.randn(3, 6, dtype=F64)
    s = 5 * s
    f = _affine(t, s, "softplus")
    scale = MIN_SCALE + F.softplus(s + math.log(math.expm1(1 - MIN_SCALE)))
    assert torch.allclose(f(x), x * scale + t, atol=TOL)
    floor = _affine(t, torch.full_like(s, -1e4), "softplus")
    assert torch.allclose(floor.log_scale.exp(), torch.full_like(s, MIN_SCALE))
    assert torch.isfinite(floor.inv(x)).all()


def test_exp_is_hard_clamped_with_zero_gradient_beyond():
    s = torch.tensor([-9.0, -1.0, 0.5, 9.0], dtype=F64, requires_grad=True)
    f = _affine(torch.zeros(4, dtype=F64), s, "exp", bound=2.0)
    assert torch.equal(f.log_scale.detach(), torch.tensor([-2.0, -1.0, 0.5, 2.0], dtype=F64))
    f.log_scale.sum().backward()
    assert s.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_softclip_is_bounded_with_nonzero_gradient():
    s = torch.tensor([-30.0, 0.0, 30.0], dtype=F64, requires_grad=True)
    f = _affine(torch.zeros(3, dtype=F64), s, "softclip", bound=2.0)
    assert (f.log_scale.abs() < 2.0).all()
    f.log_scale.sum().backward()
    assert (s.grad > 0).all()


@pytest.mark.parametrize("scale", SCALES)
def test_gradients_finite_at_extreme_inputs(scale):
    shift = torch.tensor([-1e4, 0.0, 1e4, 3.0], dtype=F64, requires_grad=True)
    log_scale = torch.tensor([-1e4, -50.0, 50.0, 1e4], dtype=F64, requires_grad=True)
    x = torch.tensor([1e3, -1e3, 0.0, 1e-8], dtype=F64)
    y, ladj = _affine(shift, log_scale, scale).call_and_ladj(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(shift.grad).all()
    if scale != "none":
        assert torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("scale", SCALES)
def test_broadcasts_parameters_against_input(scale):
    shift, log_scale = torch.randn(2, 5, 3, dtype=F64)
    f = _affine(shift, log_scale, scale)
    x = torch.randn(3, dtype=F64)
    y, ladj = f.call_and_ladj(x)
    assert y.shape == ladj.shape == (5, 3)
    assert torch.allclose(f.inv(y), x.expand(5, 3), atol=TOL)


def test_param_shapes_accept_the_transform_keywords():
    assert MonotonicAffineTransform.param_shapes() == (torch.Size(), torch.Size())
    for scale in ("softclip", "softplus", "exp", "stable"):
        shapes = MonotonicAffineTransform.param_shapes(scale=scale, bound=3.0)
        assert shapes == (torch.Size(), torch.Size())
    assert MonotonicAffineTransform.param_shapes(scale="none") == (torch.Size(),)


def test_bad_arguments_are_named():
    zero = torch.zeros(3)
    with pytest.raises(ValueError, match=r"`scale` in \('softclip', 'softplus'.*got 'tanh'"):
        MonotonicAffineTransform(zero, zero, scale="tanh")
    with pytest.raises(ValueError, match="`scale` in"):
        MonotonicAffineTransform.param_shapes(scale="tanh")
    with pytest.raises(ValueError, match=r"`bound > 0`, got -1"):
        MonotonicAffineTransform(zero, zero, bound=-1.0)
    with pytest.raises(ValueError, match="log_scale"):
        MonotonicAffineTransform(zero, scale="softplus")
    with pytest.raises(ValueError, match="log_scale"):
        MonotonicAffineTransform(zero, zero, scale="none")


@pytest.mark.parametrize("scale", ["softplus", "exp", "none"])
def test_maf_takes_scale_options_and_starts_at_identity(scale):
    flow = MAF(3, transforms=2, hidden_features=(8,), univariate_kwargs=dict(scale=scale))
    x = torch.randn(5, 3)
    assert torch.allclose(flow().log_prob(x), flow.base().log_prob(x), atol=1e-6)


def test_additive_maf_preserves_volume():
    flow = MAF(3, transforms=2, hidden_features=(8,), univariate_kwargs=dict(scale="none"))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(5, 3)
    _, ladj = flow().transform.call_and_ladj(x)
    assert torch.equal(ladj, torch.zeros(5))


def test_stable_iaf_starts_as_a_contraction():
    # Not the identity at initialisation: each layer samples x = sigmoid(2) z.
    flow = IAF(3, transforms=2, hidden_features=(8,), univariate_kwargs=dict(scale="stable"))
    gate = torch.sigmoid(torch.tensor(2.0))
    x = torch.randn(5, 3)
    z = x / gate**2
    expected = flow.base().log_prob(z) - 2 * 3 * torch.log(gate)
    assert torch.allclose(flow().log_prob(x), expected, atol=1e-5)
