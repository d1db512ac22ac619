"""Data-dependent initialisation: the untrained flow is the fitted classical density."""

import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, Normal

from arflows import IAF, MAF, NSF
from arflows.flows import MarginalSpline, initialize_
from arflows.flows.gmm import gaussian_mixture_log_prob
from arflows.flows.marginal import spline_params
from arflows.io import load, save
from arflows.transforms import MonotonicRQSTransform
from tests.helpers import autograd_ladj

F64 = torch.float64
RTOL = 1e-9  # float64, relative


def correlated(n=2000, d=3, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=gen, dtype=F64)
    shift = 5 * torch.randn(d, generator=gen, dtype=F64)
    return (torch.randn(n, d, generator=gen, dtype=F64) @ mixing + shift).to(dtype)


def clusters(n=1500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-6.0, 0.0, 2.0], [6.0, 1.0, -2.0], [0.0, 8.0, 0.0]], dtype=F64)
    x = torch.randn(n, 3, generator=gen, dtype=F64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 0.4]], dtype=F64
    )
    return centers[torch.arange(n) % 3] + x


def closed_form(x):
    return MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0))


def assert_close(actual, expected, rtol):
    assert ((actual - expected).abs() / expected.abs()).max() < rtol


GAUSSIAN_FLOWS = {
    "maf": lambda: MAF(3, transforms=2, hidden_features=(16, 16), base="gaussian"),
    "maf_lu_actnorm": lambda: MAF(
        3, transforms=2, hidden_features=(16,), base="gaussian", linear="lu", actnorm=True
    ),
    "nsf": lambda: NSF(3, transforms=2, hidden_features=(16,), bins=4, base="gaussian"),
    "iaf": lambda: IAF(3, transforms=2, hidden_features=(16,), base="gaussian"),
    "maf_gmm_forced_1": lambda: MAF(3, transforms=1, base="gmm", components=6),
}


@pytest.mark.parametrize("name", sorted(GAUSSIAN_FLOWS))
def test_untrained_flow_is_the_closed_form_gaussian(name):
    x = correlated()
    flow = GAUSSIAN_FLOWS[name]().double()
    components = 1 if name == "maf_gmm_forced_1" else "auto"
    summary = initialize_(flow, x, components=components)
    assert summary["fitted"] and summary["components"] == 1
    test = correlated(seed=1)  # fresh points, and far ones
    for points in (x, test, 3 * test):
        expected = closed_form(x).log_prob(points)
        assert_close(flow().log_prob(points), expected, RTOL)
    assert summary["log_prob"] == pytest.approx(closed_form(x).log_prob(x).mean().item(), RTOL)
    assert flow.training  # the mode is restored


def test_float32_flow_is_the_closed_form_gaussian():
    x = correlated(dtype=torch.float32)
    flow = MAF(3, transforms=2, base="gaussian")
    initialize_(flow, x)
    expected = closed_form(x.double()).log_prob(x.double())
    assert flow().log_prob(x).dtype == torch.float32
    assert_close(flow().log_prob(x).double(), expected, 1e-5)


def test_conditional_flow_starts_at_the_marginal_gaussian_for_every_context():
    x = correlated()
    c = torch.randn(len(x), 2, dtype=F64) * 3 + 1
    flow = MAF(3, context=2, transforms=2, hidden_features=(16,), base="gaussian").double()
    initialize_(flow, x, c)
    assert flow.context_standardization.active
    expected = closed_form(x).log_prob(x)
    assert_close(flow(c).log_prob(x), expected, RTOL)
    assert_close(flow(torch.zeros(2, dtype=F64)).log_prob(x), expected, RTOL)


def data_space_mixture(flow, fit):
    """The fitted mixture of the standardised noise, written for the raw data."""
    loc, scale = flow.standardization.loc, flow.standardization.scale
    means = loc + scale * fit.means
    covariances = scale[:, None] * fit.covariances * scale
    return fit.weights, means, covariances


def test_untrained_flow_is_the_fitted_mixture():
    x = clusters()
    flow = MAF(3, transforms=2, hidden_features=(16,), base="gmm", components=3).double()
    summary = initialize_(flow, x, components=3)
    assert summary["components"] == 3 and flow.base.components == 3
    weights, means, covariances = data_space_mixture(flow, summary["mixture"])
    points = torch.cat((x, clusters(seed=1), 2 * clusters(seed=2)))
    expected = gaussian_mixture_log_prob(points, weights, means, covariances)
    assert_close(flow().log_prob(points), expected, RTOL)
    # Three clusters, fitted: the weights and means are the clusters'.
    assert torch.allclose(weights, torch.full((3,), 1 / 3, dtype=F64), atol=0.01)
    mixture = pytest.importorskip("sklearn.mixture")
    gm = mixture.GaussianMixture(3, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = weights.numpy(), means.numpy(), covariances.numpy()
    gm.precisions_cholesky_ = torch.linalg.inv(torch.linalg.cholesky(covariances)).mT.numpy()
    sklearn_log_prob = torch.from_numpy(gm.score_samples(points.numpy()))
    assert_close(flow().log_prob(points).detach(), sklearn_log_prob, RTOL)


def test_components_are_chosen_on_validation_rows():
    x, valid = clusters(), clusters(n=600, seed=3)
    flow = MAF(3, transforms=1, hidden_features=(8,), base="gmm", components=12).double()
    summary = initialize_(flow, x, valid=valid)
    assert summary["selected_on"] == "valid" and summary["components"] >= 3
    assert summary["scores"][summary["components"]] == max(summary["scores"].values())
    assert summary["scores"][3] > summary["scores"][1] + 0.5
    with torch.no_grad():
        assert summary["valid_log_prob"] == pytest.approx(flow().log_prob(valid).mean().item())
    # The scores are validation log-likelihoods of the data, not of the noise.
    assert summary["valid_log_prob"] == pytest.approx(summary["scores"][summary["components"]])
    gauss = correlated(n=1500)
    flow = MAF(3, transforms=1, hidden_features=(8,), base="gmm", components=12).double()
    summary = initialize_(flow, gauss)  # a seeded hold-out, then refitted on all rows
    assert summary["selected_on"] == "holdout" and summary["components"] <= 2


def test_gaussian_base_never_becomes_a_mixture():
    flow = MAF(3, transforms=1, hidden_features=(8,), base="gaussian").double()
    summary = initialize_(flow, clusters())
    assert summary["components"] == 1 and summary["scores"] == {}


def test_other_bases_are_kept_and_only_the_standardisation_is_set():
    x = correlated()
    flow = MAF(3, transforms=1, hidden_features=(8,)).double()
    summary = initialize_(flow, x)
    assert not summary["fitted"] and summary["base"] == "StandardNormal"
    assert flow.standardization.active
    z = (x - x.mean(0)) / x.std(0, correction=0)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) - x.std(0, correction=0).log().sum()
    assert_close(flow().log_prob(x), expected, RTOL)


def test_data_initialised_flow_survives_save_and_load(tmp_path):
    x = clusters()
    x[:, 0] = x[:, 0].exp() / 100  # a skewed column for the marginal map
    flow = MAF(3, transforms=2, hidden_features=(8,), base="gmm", components=12, marginals=True)
    flow = flow.double()
    summary = initialize_(flow, x)
    assert summary["marginals"] == 1 and summary["components"] < 12
    loaded = load(save(flow, tmp_path / "model"))
    assert loaded.base.components == summary["components"]
    with torch.no_grad():
        assert torch.equal(loaded().log_prob(x), flow.eval()().log_prob(x))


def lognormal(n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen, dtype=F64).exp() * torch.tensor([1.0, 3.0])


def ks(y):
    return max(stats.kstest(column, "norm").statistic for column in y.T.numpy())


def test_marginal_map_gaussianises_skewed_columns():
    x = lognormal()
    standardized = (x - x.mean(0)) / x.std(0, correction=0)
    layer = MarginalSpline(2).double()
    layer.initialize_(standardized)
    with torch.no_grad():
        fresh = (lognormal(seed=1) - x.mean(0)) / x.std(0, correction=0)
        before, after = ks(standardized), ks(layer()(standardized))
        held_out = ks(layer()(fresh))
    assert before > 0.2 and after < 0.02 and held_out < 0.04
    # About the exact map: Phi^-1(F(x)) of a lognormal is log(x), standardised.
    expected = (x.log() - x.log().mean(0)) / x.log().std(0)
    # (Below -1.5 the lognormal's lower tail is packed into bins near the spline's narrowest.)
    inner = (expected > -1.5) & (expected < 2.5)
    assert (layer()(standardized) - expected)[inner].detach().abs().max() < 0.06


def test_initialised_marginal_map_log_det_matches_autograd_and_inverts():
    x = lognormal()
    layer = MarginalSpline(2).double()
    layer.initialize_((x - x.mean(0)) / x.std(0, correction=0))
    t = layer()
    for point in torch.tensor([[-0.6, -0.5], [0.0, 2.0], [5.0, 30.0], [-9.0, 0.3]], dtype=F64):
        y, ladj = t.call_and_ladj(point)
        assert torch.allclose(ladj, autograd_ladj(t, point), atol=1e-9)
        assert torch.allclose(t.inv(y), point, atol=1e-8)


def test_marginal_map_handles_ties_and_constant_columns():
    gen = torch.Generator().manual_seed(0)
    x = torch.stack(
        (
            torch.randint(0, 3, (1000,), generator=gen).to(F64),  # three values
            torch.full((1000,), 2.5, dtype=F64),  # one value
            (torch.rand(1000, generator=gen, dtype=F64) < 0.97).to(F64),  # rare ones
        ),
        1,
    )
    layer = MarginalSpline(3, bins=8).double()
    layer.initialize_(x)
    params = torch.cat([p.flatten() for p in layer.parameters()])
    assert params.isfinite().all() and params.abs().max() < 20
    with torch.no_grad():
        y, ladj = layer().call_and_ladj(x)
        assert y.isfinite().all() and ladj.isfinite().all()
        assert torch.allclose(layer().inv(y), x, atol=1e-8)
        # The constant column's map is the identity; the others are increasing.
        probe = torch.linspace(-4, 4, 81, dtype=F64)[:, None].expand(81, 3)
        out = layer()(probe)
    assert torch.allclose(out[:, 1], probe[:, 1], atol=1e-9)
    assert (out.diff(dim=0) > 0).all()


def test_marginal_flow_starts_at_gaussianised_columns_then_fitted_gaussian():
    x = lognormal()
    flow = MAF(2, transforms=1, hidden_features=(8,), base="gaussian", marginals=True).double()
    plain = MAF(2, transforms=1, hidden_features=(8,), base="gaussian").double()
    initialize_(flow, x)
    initialize_(plain, x)
    with torch.no_grad():
        fresh = lognormal(seed=1)
        gained = flow().log_prob(fresh).mean() - plain().log_prob(fresh).mean()
    # A Gaussian of the raw lognormal columns loses about 0.5 nat per column.
    assert gained > 0.7


def test_bad_arguments_are_refused():
    flow = MAF(3, context=2, transforms=1, base="gaussian").double()
    x = correlated()
    with pytest.raises(ValueError, match="components"):
        initialize_(flow, x, torch.zeros(len(x), 2), components="many")
    with pytest.raises(ValueError, match="finite"):
        initialize_(flow, torch.full((4, 3), float("nan")), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="valid_c"):
        initialize_(flow, x, torch.zeros(len(x), 2), valid=x)
    with pytest.raises(ValueError, match="3 columns"):
        initialize_(flow, x, torch.zeros(len(x), 2), valid=x[:, :2], valid_c=x[:, :2])
    with pytest.raises(ValueError, match="as many contexts"):
        initialize_(flow, x, torch.zeros(3, 2))


def test_spline_params_invert_the_spline_constraints():
    gen = torch.Generator().manual_seed(0)
    bound, bins = 3.0, 6
    inner_x = (torch.rand(bins - 1, generator=gen, dtype=F64) * 4 - 2).sort().values
    inner_y = (torch.rand(bins - 1, generator=gen, dtype=F64) * 4 - 2).sort().values
    knots_x = torch.cat((torch.tensor([-bound]), inner_x, torch.tensor([bound])))
    knots_y = torch.cat((torch.tensor([-bound]), inner_y, torch.tensor([bound])))
    slopes = torch.rand(bins - 1, generator=gen, dtype=F64) * 5 + 0.05
    t = MonotonicRQSTransform(*spline_params(knots_x, knots_y, slopes, bound), bound=bound)
    assert torch.allclose(t(knots_x), knots_y, atol=1e-12)
    # Just inside the bins on either side: the slope is continuous at the knots.
    for offset in (-1e-7, 1e-7):
        x = (inner_x + offset).requires_grad_()
        (derivative,) = torch.autograd.grad(t(x).sum(), x)
        assert torch.allclose(derivative, slopes, rtol=1e-5)
