"""Batch normalisation (both modes) and ActNorm (data-dependent initialisation), and in MAF."""

import pytest
import torch

from arflows import IAF, MAF
from arflows.flows.autoregressive import MaskedAutoregressiveTransform
from arflows.flows.normalization import ActNorm, BatchNorm
from arflows.transforms.normalization import BatchNormTransform, batch_moments
from tests.helpers import LADJ_ATOL, ROUND_TRIP_ATOL, autograd_ladj, randomize

F64 = torch.float64


def trained_batch_norm(d=3):
    """A BatchNorm with non-trivial parameters and running averages."""
    layer = randomize(BatchNorm(d).double(), scale=0.5)
    for _ in range(5):
        layer()(2 * torch.randn(32, d, dtype=F64) + 1)
    return layer


def test_eval_mode_log_det_matches_autograd_per_point_and_round_trips():
    t = trained_batch_norm().eval()()
    x = torch.randn(6, 3, dtype=F64)
    y, ladj = t.call_and_ladj(x)
    for n in range(6):
        assert torch.allclose(ladj[n], autograd_ladj(t, x[n]), atol=LADJ_ATOL)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), ladj)
    assert torch.allclose(t.inv(y), x, atol=ROUND_TRIP_ATOL)
    x_back, ladj_inv = t.inv.call_and_ladj(y)
    assert torch.allclose(ladj_inv, -ladj, atol=LADJ_ATOL)


def test_train_mode_is_the_per_point_map_with_batch_statistics_held_fixed():
    layer = trained_batch_norm()
    x = 3 * torch.randn(40, 3, dtype=F64) - 2
    y, ladj = layer().call_and_ladj(x)
    mean, var = batch_moments(x)
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(var, x.var(0, correction=0))
    fixed = BatchNormTransform(layer.log_gamma, layer.beta, mean, var, layer.eps)
    assert torch.allclose(y, fixed(x), atol=1e-12)
    assert torch.allclose(y.mean(0), layer.beta, atol=1e-10)  # normalised, then shifted
    for n in (0, 17, 39):  # the Jacobian of x_n -> y_n with the batch statistics constant
        assert torch.allclose(ladj[n], autograd_ladj(fixed, x[n]), atol=LADJ_ATOL)
    assert torch.allclose(layer().log_abs_det_jacobian(x, y), ladj)


def test_train_mode_inverse_uses_the_running_averages():
    layer = trained_batch_norm()
    y = torch.randn(5, 3, dtype=F64)
    x = layer().inv(y)
    eval_t = BatchNormTransform(
        layer.log_gamma, layer.beta, layer.running_mean, layer.running_var, layer.eps
    )
    assert torch.allclose(x, eval_t.inv(y), atol=1e-12)
    assert torch.allclose(layer().inv.call_and_ladj(y)[1], -eval_t.call_and_ladj(x)[1])


def test_running_averages_converge_and_only_train_mode_updates_them():
    layer = BatchNorm(2, momentum=0.1).double()
    loc, scale = torch.tensor([3.0, -1.0], dtype=F64), torch.tensor([0.5, 4.0], dtype=F64)
    for _ in range(200):
        layer()(loc + scale * torch.randn(256, 2, dtype=F64))
    assert torch.allclose(layer.running_mean, loc, rtol=0.05, atol=0.05)
    assert torch.allclose(layer.running_var, scale**2, rtol=0.1)
    before = layer.running_mean.clone()
    layer.eval()()(torch.randn(256, 2, dtype=F64))
    assert torch.equal(layer.running_mean, before)


def test_train_mode_needs_a_batch_and_bad_options_are_named():
    with pytest.raises(ValueError, match=r"at least 2 points, got x with shape \(3,\)"):
        BatchNorm(3)()(torch.randn(3))
    with pytest.raises(ValueError, match=r"`momentum` in \(0, 1\], got 0"):
        BatchNorm(3, momentum=0)
    with pytest.raises(ValueError, match="`features >= 1`, got 0"):
        ActNorm(0)
    with pytest.raises(ValueError, match=r"shape \(\*, 3\), got \(4, 2\)"):
        BatchNorm(3).eval()()(torch.randn(4, 2))


def test_actnorm_initialises_from_its_first_training_batch_only():
    layer = ActNorm(3).double()
    x = torch.tensor([1.0, -2.0, 0.5], dtype=F64) + torch.tensor(
        [0.3, 2.0, 5.0], dtype=F64
    ) * torch.randn(100, 3, dtype=F64)
    y, ladj = layer().call_and_ladj(x)
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(0), torch.zeros(3, dtype=F64), atol=1e-10)
    assert torch.allclose(y.var(0, correction=0), torch.ones(3, dtype=F64), atol=1e-10)
    assert torch.allclose(ladj, -0.5 * x.var(0, correction=0).log().sum().expand(100))
    loc = layer.loc.detach().clone()
    layer()(torch.randn(50, 3, dtype=F64))  # a second batch does not re-initialise
    assert torch.equal(layer.loc, loc)


def test_actnorm_state_dict_carries_the_flag_and_eval_mode_does_not_initialise():
    layer = ActNorm(2)
    layer()(torch.randn(10, 2) * 3)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert "initialized" in layer.state_dict() and bool(fresh.initialized)
    x = torch.randn(10, 2)
    assert torch.equal(fresh()(x), layer()(x))  # not initialised again on x
    untouched = ActNorm(2).eval()
    assert torch.equal(untouched()(x), x) and not bool(untouched.initialized)


def test_actnorm_log_det_and_round_trip():
    layer = randomize(ActNorm(3).double().eval(), scale=0.7)
    t = layer()
    x = torch.randn(4, 3, dtype=F64)
    y, ladj = t.call_and_ladj(x)
    assert torch.allclose(ladj[2], autograd_ladj(t, x[2]), atol=LADJ_ATOL)
    assert torch.allclose(t.inv(y), x, atol=ROUND_TRIP_ATOL)


def test_maf_places_a_normalisation_after_every_made_layer():
    flow = MAF(3, 2, transforms=3, hidden_features=(8, 8), batch_norm=True)
    kinds = [type(t) for t in flow.transforms]
    assert kinds == [MaskedAutoregressiveTransform, BatchNorm] * 3
    flow = MAF(3, transforms=2, hidden_features=(8, 8), actnorm=True, linear="lu")
    names = [type(t).__name__ for t in flow.transforms]
    made = "MaskedAutoregressiveTransform"
    assert names == [made, "ActNorm", "LULinear", made, "ActNorm"]


def test_maf_with_batch_norm_trains_on_batches_and_evaluates_points():
    flow = MAF(3, 2, transforms=2, hidden_features=(8, 8), batch_norm=True).double()
    x, c = 2 * torch.randn(64, 3, dtype=F64) + 1, torch.randn(64, 2, dtype=F64)
    flow(c).log_prob(x).mean().neg().backward()
    assert all(p.grad is not None for p in flow.parameters())
    assert not torch.equal(flow.transforms[1].running_mean, torch.zeros(3, dtype=F64))
    flow.eval()
    single = flow(c[0]).log_prob(x[0])
    assert torch.allclose(single, flow(c).log_prob(x)[0], atol=1e-12)
    with torch.no_grad():  # sampling inverts with the running averages, in either mode
        samples = flow(c[:4]).sample((3,))
    assert torch.isfinite(flow(c[:4]).log_prob(samples)).all()


def test_maf_with_actnorm_standardises_the_first_batch_through_every_layer():
    flow = randomize(MAF(2, transforms=2, hidden_features=(8, 8), actnorm=True).double())
    x = 5 * torch.randn(128, 2, dtype=F64) + 3
    flow().log_prob(x)
    assert all(bool(t.initialized) for t in flow.transforms if isinstance(t, ActNorm))
    z = flow().transform(x)  # the last layer is an ActNorm: its first batch came out standard
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=F64), atol=1e-8)
    assert torch.allclose(z.var(0, correction=0), torch.ones(2, dtype=F64), atol=1e-8)


def test_iaf_rejects_the_data_dependent_layers():
    for option in ("batch_norm", "actnorm"):
        with pytest.raises(ValueError, match=f"IAF does not support `{option}=True`"):
            IAF(3, transforms=2, **{option: True})
    with pytest.raises(ValueError, match="at most one of `batch_norm` and `actnorm`"):
        MAF(3, batch_norm=True, actnorm=True)
