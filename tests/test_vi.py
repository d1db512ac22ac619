import math

import pytest
import torch

from arflows import IAF, MAF, NSF, Flow
from arflows.flows import StandardNormal, Unconditional
from arflows.targets import CorrelatedGaussian, Funnel
from arflows.transforms import MonotonicAffineTransform
from arflows.vi import elbo, elbo_loss, fit_vi, forward_kl, importance_sample
from tests.helpers import randomize

F64 = torch.float64
N_SIGMA = 4.0  # Monte Carlo tolerance, in standard errors
FUNNEL_KL = 0.05  # the acceptance bound, nats


def affine_flow(shift, log_scale):
    """q = N(-t e^{-s}, diag(e^{-2s})): one elementwise affine layer y = x e^s + t."""
    layer = Unconditional(MonotonicAffineTransform, shift, log_scale, buffer=False)
    return Flow([layer], StandardNormal(len(shift))).to(F64)


def gaussian_kl(m0, var0, m1, cov1):
    """KL(N(m0, diag(var0)) || N(m1, cov1))."""
    d = len(m0)
    prec = torch.linalg.inv(cov1)
    diff = m1 - m0
    return 0.5 * (
        (prec.diagonal() * var0).sum()
        + diff @ prec @ diff
        - d
        + torch.logdet(cov1)
        - var0.log().sum()
    )


def test_elbo_equals_log_z_minus_analytic_kl():
    target = CorrelatedGaussian(features=3, condition=5.0, seed=1)
    shift, raw = torch.tensor([0.3, -0.2, 0.5], dtype=F64), torch.tensor([0.1, -0.3, 0.2])
    flow = affine_flow(shift, raw.to(F64))
    s = MonotonicAffineTransform(shift, raw.to(F64)).log_scale
    kl = gaussian_kl(-shift * torch.exp(-s), torch.exp(-2 * s), target.loc, target.covariance)
    assert kl > 0.1  # a real gap, not the exact fit
    result = importance_sample(flow, target.log_prob, 40_000)
    assert abs(result.elbo - (target.log_normalizer - kl.item())) < N_SIGMA * result.elbo_stderr
    assert result.elbo < result.log_evidence  # Jensen
    assert 1.0 <= result.ess < 40_000


def test_exact_proposal_gives_log_z_and_full_ess():
    target = CorrelatedGaussian(features=4, condition=1.0, seed=2)  # N(mu, I)
    flow = affine_flow(-target.loc, torch.zeros(4, dtype=F64))
    result = importance_sample(flow, target.log_prob, 1000, batch_size=300)
    assert result.n == 1000 and result.samples.shape == (1000, 4)
    assert math.isclose(result.log_evidence, target.log_normalizer, abs_tol=1e-9)
    assert math.isclose(result.ess, 1000.0, rel_tol=1e-9)
    assert math.isclose(elbo(flow, target.log_prob, 100), target.log_normalizer, abs_tol=1e-9)
    assert abs(forward_kl(flow, target.sample(500, dtype=F64), target.log_prob, 0.0)) > 1.0
    kl = forward_kl(flow, target.sample(500, dtype=F64), target.log_prob, target.log_normalizer)
    assert abs(kl) < 1e-9


def test_stl_gradient_vanishes_at_the_optimum():
    target = CorrelatedGaussian(features=3, condition=1.0, seed=3)
    flow = affine_flow(-target.loc, torch.zeros(3, dtype=F64))
    for stl, zero in ((True, True), (False, False)):
        flow.zero_grad()
        loss, _ = elbo_loss(flow, target.log_prob, 64, stl=stl)
        loss.backward()
        norm = torch.cat([p.grad.flatten() for p in flow.parameters()]).norm()
        assert (norm < 1e-10) == zero, (stl, norm)


@pytest.mark.parametrize("make", [IAF, MAF], ids=["iaf", "maf"])
def test_stl_gradient_is_reparam_minus_score(make):
    target = CorrelatedGaussian(features=3, condition=4.0)
    flow = randomize(make(3, transforms=2, hidden_features=(8, 8)).to(F64), scale=0.3)

    def grads(stl):
        flow.zero_grad()
        torch.manual_seed(5)
        loss, _ = elbo_loss(flow, target.log_prob, 32, stl=stl)
        loss.backward()
        return [p.grad.clone() for p in flow.parameters()]

    total, path = grads(False), grads(True)
    torch.manual_seed(5)
    x = flow().rsample((32,)).detach()
    flow.zero_grad()
    flow().log_prob(x).mean().backward()  # the score term of -ELBO is +E[d log q]
    score = [p.grad for p in flow.parameters()]
    for t, p, s in zip(total, path, score, strict=True):
        torch.testing.assert_close(p, t - s, atol=1e-9, rtol=1e-7)
    assert any(s.abs().max() > 1e-3 for s in score)


@pytest.mark.parametrize("stl", [False, True], ids=["reparam", "stl"])
@pytest.mark.parametrize(
    "make, context",
    [
        (lambda: IAF(3, transforms=2, hidden_features=(8, 8)), 0),
        (lambda: MAF(3, transforms=2, hidden_features=(8, 8)), 0),
        (lambda: NSF(3, transforms=2, hidden_features=(8, 8), bins=4), 0),
        (lambda: IAF(3, context=2, transforms=2, hidden_features=(8, 8)), 2),
    ],
    ids=["iaf", "maf", "nsf", "iaf_context"],
)
def test_every_parameter_gets_a_gradient(make, context, stl):
    flow = randomize(make(), scale=0.2)
    c = torch.randn(5, context) if context else None

    def log_density(x, c=None):
        loc = 0.0 if c is None else c.sum(-1, keepdim=True)
        return -0.5 * ((x - loc) / 2).square().sum(-1)

    loss, _ = elbo_loss(flow, log_density, 16, context=c, stl=stl)
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_funnel_affine_iaf_v_first_reaches_small_kl():
    target = Funnel(features=10)
    # Natural order, one layer: v = x_1 = 3 z_1 and x_i = z_i exp(1.5 z_1) is in the family
    # (skip=True carries z_1 linearly to the log-scales).
    flow = IAF(10, transforms=1, hidden_features=(16, 16), skip=True)
    history = fit_vi(
        flow,
        target.log_prob,
        steps=900,
        samples_per_step=128,
        lr=1e-2,
        stl=True,
        seed=1,
        progress=False,
    )
    assert len(history.elbo) == 900 and history.stl
    result = importance_sample(flow, target.log_prob, 20_000)
    kl = target.log_normalizer - result.elbo
    assert kl < FUNNEL_KL, kl
    assert result.ess > 10_000
    fkl = forward_kl(flow, target.sample(5000), target.log_prob, target.log_normalizer)
    assert 0 < fkl < 0.5, fkl


def test_fit_improves_and_conditional_shapes():
    flow = IAF(2, context=1, transforms=1, hidden_features=(8, 8))
    c = torch.linspace(-2, 2, 4)[:, None]

    def log_density(x, c):  # N(c, 0.5^2 I), unnormalised
        return -2.0 * (x - c).square().sum(-1)

    before = elbo(flow, log_density, 500, context=c)
    assert before.shape == (4,)
    history = fit_vi(
        flow,
        log_density,
        steps=150,
        samples_per_step=32,
        lr=1e-2,
        context=c,
        seed=0,
        progress=False,
    )
    after = elbo(flow, log_density, 500, context=c)
    log_z = math.log(2 * math.pi * 0.25)
    assert (after > before + 0.5).all() and (after < log_z + 0.05).all()
    assert history.elbo[-1] > history.elbo[0]


def test_errors():
    flow = IAF(2, transforms=1, hidden_features=(4,))
    good = Funnel(2).log_prob
    with pytest.raises(TypeError, match="Flow"):
        fit_vi(torch.nn.Linear(2, 2), good, steps=1)
    with pytest.raises(TypeError, match="log_density"):
        fit_vi(flow, 3.0, steps=1)
    with pytest.raises(ValueError, match="steps >= 1"):
        fit_vi(flow, good, steps=0)
    with pytest.raises(ValueError, match="samples_per_step >= 1"):
        fit_vi(flow, good, steps=1, samples_per_step=0)
    with pytest.raises(ValueError, match="schedule"):
        fit_vi(flow, good, steps=1, schedule="linear")
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        fit_vi(flow, lambda x: x.sum(), steps=1, samples_per_step=8, progress=False)
    with pytest.raises(FloatingPointError, match="ELBO became nan"):
        fit_vi(flow, lambda x: x.sum(-1) * math.nan, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"shape \(n, D\)"):
        forward_kl(flow, torch.zeros(3), good, 0.0)
    with pytest.raises(ValueError, match="n >= 1"):
        importance_sample(flow, good, 0)
