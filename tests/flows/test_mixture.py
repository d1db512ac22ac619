"""MADE MoG: exact log-density, exact sampling (sweep and naive), the MoG base of MAF."""

import math

import pytest
import torch
from scipy.stats import norm
from torch.distributions import Categorical, MixtureSameFamily, Normal

from arflows import IAF, MAF
from arflows.flows.mixture import MADEMoG, MADEMoGFlow, mixture_quantile
from arflows.transforms.univariate import soft_clip
from tests.helpers import jacobian, randomize

F64 = torch.float64
ATOL = 1e-10


def build(features=3, context=2, components=4, scale=0.5, **kwargs):
    lazy = MADEMoG(features, context, components, hidden_features=(16, 16), **kwargs)
    return randomize(lazy.double(), scale=scale)


def test_log_prob_equals_a_loop_over_features_and_components():
    lazy = build(order=[2, 0, 1])
    x, c = torch.randn(6, 3, dtype=F64), torch.randn(6, 2, dtype=F64)
    expected = torch.zeros(6, dtype=F64)
    for n in range(6):
        logits, loc, log_scale = lazy.made(x[n], c[n])  # (D, K) each
        for i in range(3):
            scale = soft_clip(log_scale[i], lazy.bound).exp()
            mixture = MixtureSameFamily(Categorical(logits=logits[i]), Normal(loc[i], scale))
            expected[n] += mixture.log_prob(x[n, i])
    assert torch.allclose(lazy(c).log_prob(x), expected, atol=ATOL)


def test_one_component_is_a_gaussian_autoregressive_density():
    lazy = build(components=1)
    x, c = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    _, loc, log_scale = lazy.made(x, c)  # (5, 3) each: MADE drops k = 1
    expected = Normal(loc, soft_clip(log_scale, lazy.bound).exp()).log_prob(x).sum(-1)
    assert torch.allclose(lazy(c).log_prob(x), expected, atol=ATOL)
    assert lazy(c).sample((2,)).shape == (2, 5, 3)


def test_starts_as_standard_normal_exactly():
    lazy = MADEMoG(3, context=2, components=5, hidden_features=(8, 8))
    x, c, z = torch.randn(10, 3), torch.randn(10, 2), torch.randn(10, 3)
    assert torch.allclose(lazy(c).log_prob(x), Normal(0.0, 1.0).log_prob(x).sum(-1), atol=1e-6)
    assert torch.allclose(lazy(c).from_noise(z), z, atol=1e-6)


def test_quadrature_1d_multimodal():
    lazy = MADEMoG(1, components=4, hidden_features=(8,)).double()
    with torch.no_grad():  # one feature, no context: the output biases are the parameters
        lazy.made.layers[-1].bias.copy_(
            torch.tensor([0.5, -1.0, 0.0, 2.0, -4.0, -1.0, 2.5, 6.0, -1.5, 0.5, -0.5, 0.0])
        )
    dist = lazy()
    grid = torch.linspace(-30, 30, 60001, dtype=F64)[:, None]
    with torch.no_grad():
        density = dist.log_prob(grid).exp()
        samples = dist.sample((4000,))
    assert abs(torch.trapezoid(density, grid[:, 0]).item() - 1) < 1e-6
    # the samples' histogram on the four modes' basins against the density's masses
    edges = torch.tensor([-30.0, -2.5, 1.5, 4.0, 30.0], dtype=F64)
    expected = torch.stack(
        [
            torch.trapezoid(density[(grid[:, 0] >= a) & (grid[:, 0] <= b)], dx=1e-3)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    )
    observed = torch.histogram(samples[:, 0], edges).hist / len(samples)
    assert (expected > 0.02).all()
    error = (expected * (1 - expected) / len(samples)).sqrt()  # binomial standard errors
    assert ((observed - expected).abs() < 4 * error).all()


def test_quadrature_2d_and_sample_moments():
    lazy = build(features=2, context=1, components=3, scale=0.4)
    dist = lazy(torch.tensor([-0.5], dtype=F64))
    with torch.no_grad():
        samples = dist.sample((10000,))
        lo, hi = samples.min(0).values, samples.max(0).values
        axes = [
            torch.linspace(a - (b - a), b + (b - a), 501, dtype=F64)
            for a, b in zip(lo, hi, strict=True)
        ]
        grid = torch.cartesian_prod(*axes)
        density = dist.log_prob(grid).exp()

    def integral(values):
        return torch.trapezoid(torch.trapezoid(values.view(501, 501), axes[1]), axes[0])

    assert abs(integral(density).item() - 1) < 1e-3
    # E f(x) from the samples against E f(x) from the density, within 4 standard errors.
    x1, x2 = grid.unbind(-1)
    s1, s2 = samples.unbind(-1)
    for f_grid, f_samples in [(x1, s1), (x2, s2), (x1 * x2, s1 * s2), (x2**2, s2**2)]:
        expected = integral(density * f_grid)
        error = f_samples.std() / math.sqrt(len(f_samples))
        assert abs(f_samples.mean() - expected) < 4 * error


@pytest.mark.parametrize("context", [0, 2])
def test_sweep_sampler_equals_ancestral_passes(context):
    lazy = build(features=5, context=context, order=[3, 0, 4, 1, 2], residual=True, skip=True)
    c = torch.randn(4, context, dtype=F64) if context else None
    z = 2 * torch.randn(7, 4, 5, dtype=F64)
    with torch.no_grad():
        x_sweep = lazy(c).from_noise(z)
        x_naive = lazy(c).from_noise(z, sweep=False)
    assert torch.allclose(x_sweep, x_naive, atol=ATOL)
    # each conditional's CDF at x_i is the noise's: the sample is the Rosenblatt inverse
    logits, loc, log_scale = lazy(c).params(x_sweep)  # (7, 4, 5, K)
    cdf = (logits.softmax(-1) * Normal(loc, log_scale.exp()).cdf(x_sweep[..., None])).sum(-1)
    assert torch.allclose(cdf, Normal(0.0, 1.0).cdf(z), atol=1e-12)


def test_mixture_quantile_solves_the_cdf_in_both_tails():
    logits, loc, log_scale = torch.randn(3, 500, 4, dtype=F64).unbind()
    z = torch.linspace(-8, 8, 500, dtype=F64)
    x = mixture_quantile(z, logits, 3 * loc, log_scale)
    # scipy's log-CDF and log-survival: precise in both tails
    u = ((x[:, None] - 3 * loc) / log_scale.exp()).numpy()
    log_w = logits.log_softmax(-1)
    lower = torch.logsumexp(log_w + torch.from_numpy(norm.logcdf(u)), -1)
    upper = torch.logsumexp(log_w + torch.from_numpy(norm.logsf(u)), -1)
    tail = torch.where(z <= 0, lower, upper)
    assert torch.allclose(tail, torch.from_numpy(norm.logcdf(-z.abs().numpy())), rtol=1e-9)


def test_samples_have_exact_implicit_gradients():
    lazy = build(features=3, context=2, components=3, scale=0.4)
    z = torch.randn(2, 3, dtype=F64, requires_grad=True)
    c = torch.randn(2, 2, dtype=F64, requires_grad=True)
    for sweep in (True, False):
        sample = lambda z, c, sweep=sweep: lazy(c).from_noise(z, sweep=sweep)  # noqa: E731
        assert torch.autograd.gradcheck(sample, (z, c), fast_mode=True)
    # the same gradients for the parameters, through the sweep and through the D passes
    grads = []
    for sweep in (True, False):
        lazy.zero_grad()
        lazy(c).from_noise(z, sweep=sweep).sin().sum().backward()
        grads.append(torch.cat([p.grad.ravel() for p in lazy.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(*grads, atol=1e-9)


def test_mog_parameters_are_autoregressive():
    order = torch.tensor([2, 0, 3, 1])
    lazy = build(features=4, context=2, order=order)
    x, c = torch.randn(4, dtype=F64), torch.randn(2, dtype=F64)
    jac_x = jacobian(lambda x: torch.stack(lazy(c).params(x)), x)  # (3, D, K, D)
    later_or_self = order[None, :] >= order[:, None]  # (i, j): x_j not before feature i
    assert (jac_x.abs().sum((0, 2))[later_or_self] == 0).all()
    assert (jac_x.abs().sum((0, 2))[~later_or_self] > 0).all()
    jac_c = jacobian(lambda c: torch.stack(lazy(c).params(x)), c)  # (3, D, K, C)
    assert (jac_c.abs().sum((0, 2, 3)) > 0).all()  # every feature, the first included


def test_maf_on_a_mog_base():
    flow = randomize(MAF(3, 2, transforms=2, hidden_features=(16, 16), base="mog").double())
    assert isinstance(flow.base, MADEMoG) and flow.base.components == 10
    # the base's order follows the alternation: natural, reversed, then natural again
    assert flow.base.made.order.tolist() == [0, 1, 2]
    c = torch.randn(4, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((5,))
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)
    z, ladj = flow(c).transform.call_and_ladj(x)
    assert torch.allclose(log_p, flow.base(c).log_prob(z) + ladj, atol=1e-8)


def test_iaf_on_a_mog_base_samples_with_its_density():
    flow = randomize(IAF(3, 2, transforms=2, hidden_features=(16, 16), base="mog").double())
    c = torch.randn(4, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((5,))
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)
    log_p.sum().backward()
    assert all(p.grad is not None for p in flow.base.parameters())


def test_made_mog_flow_is_the_bare_density():
    flow = randomize(MADEMoGFlow(3, 2, components=3, hidden_features=(16, 16)).double())
    x, c = torch.randn(6, 3, dtype=F64), torch.randn(6, 2, dtype=F64)
    assert torch.allclose(flow(c).log_prob(x), flow.base(c).log_prob(x), atol=ATOL)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="`components >= 1`, got 0"):
        MADEMoG(3, components=0)
    with pytest.raises(ValueError, match="`bound > 0`, got -1"):
        MADEMoG(3, bound=-1)
    with pytest.raises(ValueError, match=r"`base` in \('normal', .*'gmm'.*\), got 'bogus'"):
        MAF(3, base="bogus")
    with pytest.raises(ValueError, match=r"shape \(\*, 3\)"):
        MADEMoG(3)().log_prob(torch.randn(4, 2))
