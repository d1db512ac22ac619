"""Full-covariance Gaussian mixture base and its EM fit."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Normal

from arflows.flows import GaussianMixture, fit_gaussian_mixture, select_gaussian_mixture
from arflows.flows.gmm import gaussian_mixture_log_prob
from tests.helpers import randomize

F64 = torch.float64
ATOL = 1e-10


def clusters(n=600, d=2, k=3, spread=6.0, seed=0):
    """n rows from k well separated, correlated Gaussian clusters."""
    gen = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(k, d, generator=gen, dtype=F64)
    mixing = torch.randn(k, d, d, generator=gen, dtype=F64) * 0.5 + torch.eye(d, dtype=F64)
    label = torch.arange(n) % k
    noise = torch.randn(n, d, 1, generator=gen, dtype=F64)
    return centers[label] + (mixing[label] @ noise)[..., 0]


def torch_mixture(base):
    normal = MultivariateNormal(base.loc, scale_tril=base.scale_tril())
    return MixtureSameFamily(Categorical(logits=base.logits), normal)


@pytest.mark.parametrize("components", [1, 3])
def test_starts_as_standard_normal(components):
    base = GaussianMixture(4, components).double()
    z = 2 * torch.randn(10, 4, dtype=F64)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(base().log_prob(z), expected, atol=1e-12)


@pytest.mark.parametrize("d", [1, 3])
def test_log_prob_equals_torch_mixture_with_batches(d):
    base = randomize(GaussianMixture(d, 4).double(), scale=0.7)
    c = torch.randn(5, 2, dtype=F64)
    z = torch.randn(7, 5, d, dtype=F64)
    dist = base(c)
    assert dist.batch_shape == (5,) and dist.event_shape == (d,)
    expected = torch_mixture(base).log_prob(z)
    assert torch.allclose(dist.log_prob(z), expected, atol=ATOL)
    # One point broadcast against the batch of contexts.
    assert torch.allclose(dist.log_prob(z[0, 0]), expected[0, 0].expand(5), atol=ATOL)


def test_rsample_draws_the_mixture_and_reaches_means_and_factors():
    base = randomize(GaussianMixture(2, 3).double(), scale=1.0)
    with torch.no_grad():
        base.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
    with torch.no_grad():
        w, mu, tril = base.logits.softmax(-1), base.loc, base.scale_tril()
        mean = w @ mu
        second = (w[:, None, None] * (tril @ tril.mT + mu[:, :, None] * mu[:, None])).sum(0)
        cov = second - mean[:, None] * mean
    z = base().rsample((200_000,))
    assert z.shape == (200_000, 2)
    assert torch.allclose(z.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(z.detach().T), cov, rtol=0.03, atol=0.03)
    assert torch.allclose(base().mean, mean)
    z[:1000].sum().backward()
    assert base.loc.grad.abs().sum() > 0 and base.log_diag.grad.abs().sum() > 0
    assert base.logits.grad is None  # the component choice is not reparameterised
    assert base(torch.zeros(3, 1)).sample((4,)).shape == (4, 3, 2)
    assert base().sample((0,)).shape == (0, 2)


def test_set_round_trips_parameters_changes_size_and_loads_into_another_size():
    fit = fit_gaussian_mixture(clusters(), 3)
    base = GaussianMixture(2, 8).double()
    base.set_(fit.weights, fit.means, fit.covariances)
    assert base.components == 3 and base.max_components == 8
    tril = base.scale_tril()
    assert torch.allclose(tril @ tril.mT, fit.covariances, atol=1e-12)
    assert torch.allclose(base.logits.softmax(-1), fit.weights, atol=1e-14)
    z = torch.randn(20, 2, dtype=F64) * 5
    assert torch.allclose(base().log_prob(z), fit.log_prob(z), atol=ATOL)
    other = GaussianMixture(2, 8).double()
    other.load_state_dict(base.state_dict())
    assert other.components == 3
    assert torch.equal(other().log_prob(z), base().log_prob(z))
    lowered = base.float()
    assert lowered().log_prob(z.float()).dtype == torch.float32
    assert torch.allclose(lowered().log_prob(z.float()).double(), fit.log_prob(z), rtol=1e-5)


def test_set_refuses_bad_parameters():
    base = GaussianMixture(2, 2)
    eye = torch.eye(2).expand(2, 2, 2)
    with pytest.raises(ValueError, match="covariances"):
        base.set_(torch.ones(2) / 2, torch.zeros(2, 3), eye)
    with pytest.raises(ValueError, match="positive mixture weights"):
        base.set_(torch.tensor([1.0, 0.0]), torch.zeros(2, 2), eye)
    with pytest.raises(ValueError, match="positive definite"):
        base.set_(torch.ones(2) / 2, torch.zeros(2, 2), -eye)
    with pytest.raises(ValueError, match="components >= 1"):
        GaussianMixture(2, 0)


def test_one_component_is_the_closed_form_gaussian():
    x = clusters(k=1) @ torch.tensor([[2.0, 0.7], [0.0, 0.3]], dtype=F64)
    fit = fit_gaussian_mixture(x, 1)
    assert torch.allclose(fit.means[0], x.mean(0), atol=1e-13)
    assert torch.allclose(fit.covariances[0], torch.cov(x.T, correction=0), atol=1e-13)
    expected = MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0)).log_prob(x)
    assert torch.allclose(fit.log_prob(x), expected, rtol=1e-12)
    assert fit.log_likelihood == pytest.approx(expected.mean().item(), rel=1e-12)


def test_em_raises_the_training_log_likelihood_monotonically():
    x = clusters(n=900, k=3, spread=2.5)  # overlapping: EM takes many steps
    fit = fit_gaussian_mixture(x, 4, tol=0.0, max_iter=60)
    history = torch.tensor(fit.history)
    assert len(history) == 60
    assert (history.diff() >= -1e-12).all()
    assert history[-1] > history[0] + 1e-3
    # The reported value is the mixture's actual mean log-likelihood.
    assert fit.log_likelihood == pytest.approx(fit.log_prob(x).mean().item(), rel=1e-12)
    assert torch.allclose(fit.weights.sum(), torch.tensor(1.0, dtype=F64))


def test_em_finds_separated_clusters():
    x = clusters(n=900, k=3)
    fit = fit_gaussian_mixture(x, 3, restarts=3)
    truth = fit_gaussian_mixture(x[torch.arange(900) % 3 == 0], 1).means[0]
    assert (fit.means - truth).norm(dim=-1).min() < 0.3
    assert torch.allclose(fit.weights, torch.full((3,), 1 / 3, dtype=F64), atol=0.02)


def test_singular_clusters_never_give_nan():
    # 60 copies of one row and a line: zero-variance directions in both clusters.
    t = torch.randn(200, 1, dtype=F64)
    x = torch.cat((torch.ones(60, 3, dtype=F64), t * torch.tensor([[1.0, 2.0, -1.0]])))
    for k in (1, 2, 3):
        fit = fit_gaussian_mixture(x, k)
        assert all(torch.isfinite(torch.tensor(fit.history)))
        assert torch.linalg.eigvalsh(fit.covariances).min() > 0
        assert fit.log_prob(x).isfinite().all()


def test_em_refuses_too_few_or_bad_rows():
    with pytest.raises(ValueError, match="N >= components"):
        fit_gaussian_mixture(torch.randn(2, 2), 3)
    with pytest.raises(ValueError, match="finite"):
        fit_gaussian_mixture(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), 1)


def test_selection_picks_enough_components_for_clusters_and_few_for_a_gaussian():
    x = clusters(n=1200, k=3)
    fit, scores = select_gaussian_mixture(x[::2], x[1::2])
    assert fit.components >= 3 and scores[fit.components] == max(scores.values())
    assert scores[3] > scores[1] + 0.5
    gauss = clusters(n=1200, k=1)
    fit, scores = select_gaussian_mixture(gauss[::2], gauss[1::2])
    assert fit.components <= 2


def test_selection_skips_sizes_with_too_few_rows_per_parameter():
    x = torch.randn(40, 3, dtype=F64)  # 10 parameters per component: at most 4
    _, scores = select_gaussian_mixture(x, torch.randn(20, 3, dtype=F64), patience=10)
    assert max(scores) <= 4 and 1 in scores


def test_agrees_with_scikit_learn():
    mixture = pytest.importorskip("sklearn.mixture")
    x = clusters(n=900, k=3).numpy()
    fit = fit_gaussian_mixture(torch.from_numpy(x), 3, restarts=3)
    gm = mixture.GaussianMixture(3, covariance_type="full")
    gm.weights_, gm.means_ = fit.weights.numpy(), fit.means.numpy()
    gm.covariances_ = fit.covariances.numpy()
    gm.precisions_cholesky_ = torch.linalg.inv(torch.linalg.cholesky(fit.covariances)).mT.numpy()
    expected = torch.from_numpy(gm.score_samples(x))
    assert torch.allclose(fit.log_prob(torch.from_numpy(x)), expected, atol=1e-10)
    # Fitted independently, both reach the same maximum on separated clusters.
    theirs = mixture.GaussianMixture(3, covariance_type="full", n_init=3, random_state=0).fit(x)
    assert fit.log_likelihood == pytest.approx(theirs.score(x), abs=1e-3)


def test_mixture_log_prob_helper_matches_torch():
    fit = fit_gaussian_mixture(clusters(), 2)
    x = torch.randn(9, 2, dtype=F64) * 4
    expected = MixtureSameFamily(
        Categorical(probs=fit.weights), MultivariateNormal(fit.means, fit.covariances)
    ).log_prob(x)
    assert torch.allclose(
        gaussian_mixture_log_prob(x, fit.weights, fit.means, fit.covariances), expected, atol=ATOL
    )
