import warnings

import pytest
import torch

sbi = pytest.importorskip("sbi")
from sbi.inference import NLE, NPE  # noqa: E402
from sbi.neural_nets import posterior_nn as sbi_posterior_nn  # noqa: E402
from sbi.utils import BoxUniform, MultipleIndependent  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Dirichlet, Gamma, MultivariateNormal  # noqa: E402

import arflows  # noqa: E402
from arflows.sbi import FlowEstimator, likelihood_nn, posterior_nn, support_of  # noqa: E402

NOISE = 0.5  # simulator noise: x = (theta + NOISE * eps, sum of those)
ATOL = 1e-5  # float32 densities computed along different (equivalent) paths
SMALL = dict(transforms=2, hidden_features=(16, 16))


class NoTracker:
    """sbi's tracker protocol, logging nothing (sbi's default writes ./sbi-logs)."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def simulate(theta):
    """Gaussian linear with a third, redundant feature: x has 3 columns, theta 2."""
    x = theta + NOISE * torch.randn_like(theta)
    return torch.cat([x, x.sum(-1, keepdim=True)], -1)


def train(method, build, prior, n, epochs, **options):
    theta = prior.sample((n,))
    inference = method(
        prior, density_estimator=build, show_progress_bars=False, tracker=NoTracker()
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet fully converged.*")
        estimator = inference.append_simulations(theta, simulate(theta)).train(
            max_num_epochs=epochs, **options
        )
    return inference, estimator


@pytest.fixture(scope="module")
def npe():
    torch.manual_seed(0)
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    inference, estimator = train(NPE, posterior_nn("nsf", bins=4, **SMALL), prior, 300, 3)
    return prior, inference.build_posterior(), estimator


def test_npe_trains_an_arflows_estimator(npe):
    _, posterior, estimator = npe
    assert isinstance(estimator, FlowEstimator)
    assert isinstance(estimator.flow, arflows.NSF)
    assert isinstance(posterior.posterior_estimator, FlowEstimator)  # a copy of it
    assert (estimator.input_shape, estimator.condition_shape) == ((2,), (3,))


def test_posterior_sample_and_log_prob(npe):
    _, posterior, _ = npe
    x_o = simulate(torch.tensor([[0.5, -1.0]]))
    theta = posterior.sample((300,), x=x_o, show_progress_bars=False)
    assert theta.shape == (300, 2)
    assert bool((theta.abs() < 2).all())  # leakage outside the box prior is rejected
    log_prob = posterior.log_prob(theta[:10], x=x_o)
    assert log_prob.shape == (10,) and bool(log_prob.isfinite().all())
    outside = torch.tensor([[3.0, 0.0]])
    assert posterior.log_prob(outside, x=x_o).item() == float("-inf")


def test_posterior_sample_batched(npe):
    _, posterior, _ = npe
    xs = simulate(torch.tensor([[0.5, -1.0], [-1.5, 1.0], [1.0, 1.0]]))
    theta = posterior.sample_batched((200,), x=xs, show_progress_bars=False)
    assert theta.shape == (200, 3, 2)
    assert bool((theta.abs() < 2).all())
    log_prob = posterior.log_prob_batched(theta[:5], x=xs, norm_posterior=False)
    assert log_prob.shape == (5, 3) and bool(log_prob.isfinite().all())


def estimators(condition_shape=(3,)):
    """An arflows and an sbi (nflows MAF) estimator built from the same batch."""
    theta, x = torch.randn(100, 2), torch.randn(100, *condition_shape)
    ours = posterior_nn("maf", **SMALL)(theta, x)
    theirs = sbi_posterior_nn("maf", hidden_features=16, num_transforms=2)(theta, x)
    return ours, theirs


# (input shape, condition shape) pairs in sbi's conventions: S = 5 samples, B = 4 conditions.
LOG_PROB_SHAPES = {
    "sample_batch": ((5, 4, 2), (4, 3)),
    "batch": ((4, 2), (4, 3)),
    "one_input_row": ((5, 1, 2), (4, 3)),
    "one_condition": ((5, 4, 2), (1, 3)),
    "condition_per_sample": ((5, 4, 2), (5, 4, 3)),
}


@pytest.mark.parametrize("case", sorted(LOG_PROB_SHAPES))
def test_shapes_follow_sbis_estimators(case):
    ours, theirs = estimators()
    input_shape, condition_shape = LOG_PROB_SHAPES[case]
    theta, x = torch.randn(input_shape), torch.randn(condition_shape)
    assert ours.log_prob(theta, x).shape == theirs.log_prob(theta, x).shape


@pytest.mark.parametrize("sample_shape", [(7,), (3, 2)], ids=str)
def test_sample_shapes_follow_sbis_estimators(sample_shape):
    ours, theirs = estimators()
    x = torch.randn(4, 3)
    assert ours.sample(sample_shape, x).shape == theirs.sample(sample_shape, x).shape
    samples, log_prob = ours.sample_and_log_prob(sample_shape, x)
    expected_samples, expected_log_prob = theirs.sample_and_log_prob(sample_shape, x)
    assert (samples.shape, log_prob.shape) == (expected_samples.shape, expected_log_prob.shape)
    theta = torch.randn(4, 2)
    assert ours.loss(theta, x).shape == theirs.loss(theta, x).shape == (4,)


def test_log_prob_is_the_flows_for_each_condition():
    ours, _ = estimators()
    theta, x = torch.randn(5, 4, 2), torch.randn(4, 3)
    expected = torch.stack([ours.flow(x[b]).log_prob(theta[:, b]) for b in range(4)], 1)
    torch.testing.assert_close(ours.log_prob(theta, x), expected, atol=ATOL, rtol=0)
    # Conditions given per sample take the flat path: same densities.
    torch.testing.assert_close(
        ours.log_prob(theta, x.expand(5, 4, 3)), expected, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(ours.loss(theta[0], x), -expected[0], atol=ATOL, rtol=0)
    samples, log_prob = ours.sample_and_log_prob((6,), x)
    torch.testing.assert_close(log_prob, ours.log_prob(samples, x), atol=1e-4, rtol=0)


def test_z_scoring_is_stored_in_the_flow():
    theta = torch.randn(400, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    x = torch.randn(400, 3) * 10
    flow = posterior_nn("maf", **SMALL)(theta, x).flow
    torch.testing.assert_close(flow.standardization.loc, theta.mean(0))
    torch.testing.assert_close(flow.standardization.scale, theta.std(0), rtol=0.01, atol=0)
    torch.testing.assert_close(flow.context_standardization.loc, x.mean(0))
    flow = posterior_nn("maf", z_score_theta="structured", z_score_x=None, **SMALL)(theta, x).flow
    loc, scale = flow.standardization.loc, flow.standardization.scale
    assert loc[0] == loc[1] and scale[0] == scale[1]
    torch.testing.assert_close(loc[0], theta.mean())
    torch.testing.assert_close(scale[0], theta.flatten().std(), rtol=0.01, atol=0)
    assert not flow.context_standardization.active


def test_untrained_estimator_samples_the_z_scored_batch():
    # Flows start as the identity: what is sampled is the stored standardisation undone.
    theta = torch.randn(2000, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    estimator = posterior_nn("nsf", **SMALL)(theta, torch.randn(2000, 3))
    samples = estimator.sample((4000,), torch.randn(1, 3))[:, 0]
    torch.testing.assert_close(samples.mean(0), theta.mean(0), atol=0.2, rtol=0)
    torch.testing.assert_close(samples.std(0), theta.std(0), atol=0, rtol=0.1)


def test_support_keeps_samples_inside_the_prior():
    prior = BoxUniform(-2 * torch.ones(2), torch.tensor([2.0, 0.5]))
    estimator = posterior_nn("maf", support=prior, **SMALL)(
        prior.sample((100,)), torch.randn(100, 3)
    )
    samples = estimator.sample((2000,), torch.randn(3, 3))
    assert samples.shape == (2000, 3, 2)
    assert bool(prior.support.check(samples).all())
    assert bool((samples[..., 1] < 0.5).all())


SUPPORTS = {
    "box": (lambda: BoxUniform(torch.zeros(2), torch.tensor([1.0, 4.0])), [(0, 1), (0, 4)]),
    "normal": (lambda: MultivariateNormal(torch.zeros(2), torch.eye(2)), [(None, None)] * 2),
    "multiple": (
        lambda: MultipleIndependent(
            [Gamma(torch.ones(1), torch.ones(1)), BoxUniform(-torch.ones(2), torch.ones(2))]
        ),
        [(0, None), (-1, 1), (-1, 1)],
    ),
}


@pytest.mark.parametrize("case", sorted(SUPPORTS))
def test_support_of_reads_the_priors_bounds(case):
    make, expected = SUPPORTS[case]
    assert support_of(make()) == expected


def test_support_of_refuses_what_is_not_a_box():
    with pytest.raises(ValueError, match="Simplex"):
        support_of(Dirichlet(torch.ones(3)))


def test_embedding_net_for_two_dimensional_simulations():
    theta, x = torch.randn(60, 2), torch.randn(60, 2, 3)
    embedding = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    estimator = posterior_nn("maf", embedding_net=embedding, **SMALL)(theta, x)
    assert estimator.flow.context == 4 and estimator.condition_shape == (2, 3)
    assert estimator.log_prob(torch.randn(5, 7, 2), x[:7]).shape == (5, 7)
    assert estimator.log_prob(torch.randn(5, 7, 2), x[:7].expand(5, 7, 2, 3)).shape == (5, 7)
    assert estimator.sample((5,), x[:7]).shape == (5, 7, 2)
    assert estimator.embedding_net(x[:7]).shape == (7, 4)
    assert any(p is embedding[1].weight for p in estimator.parameters())  # trained with it
    # Without an embedding net the flow reads the flattened simulation.
    estimator = posterior_nn("maf", **SMALL)(theta, x)
    assert estimator.flow.context == 6
    assert estimator.sample((5,), x[:7]).shape == (5, 7, 2)


def test_estimator_follows_its_device(device):
    estimator = posterior_nn("maf", **SMALL)(torch.randn(50, 2), torch.randn(50, 3)).to(device)
    x = torch.randn(4, 3, device=device)
    assert estimator.sample((6,), x).device.type == device.type
    assert estimator.log_prob(torch.randn(6, 4, 2, device=device), x).shape == (6, 4)


def test_flow_classes_and_callables_as_models():
    theta, x = torch.randn(50, 2), torch.randn(50, 3)
    assert isinstance(posterior_nn(arflows.MAF, **SMALL)(theta, x).flow, arflows.MAF)
    assert isinstance(posterior_nn("realnvp", **SMALL)(theta, x).flow, arflows.RealNVP)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: posterior_nn("nope"), ValueError, "unknown flow 'nope'"),
        (lambda: posterior_nn(z_score_x="zscore"), ValueError, "z_score_x"),
        (lambda: posterior_nn(z_score_theta="transform_to_unconstrained"), ValueError, "support"),
        (lambda: posterior_nn(3), TypeError, "flow name or a callable"),
        (lambda: posterior_nn("maf", wings=2)(torch.randn(9, 2), torch.randn(9, 3)), ValueError,
         "wings"),
        (lambda: posterior_nn()(torch.randn(9, 2, 2), torch.randn(9, 3)), ValueError, r"\(N, D\)"),
        (lambda: posterior_nn()(torch.randn(9, 2), torch.randn(8, 3)), ValueError, "as many"),
    ],
    ids=["family", "z_score", "unconstrained", "model_type", "option", "theta_shape", "rows"],
)  # fmt: skip
def test_bad_input_is_refused_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_nle_likelihood_estimator():
    torch.manual_seed(1)
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    inference, estimator = train(NLE, likelihood_nn("maf", **SMALL), prior, 300, 2)
    assert isinstance(estimator, FlowEstimator)
    assert (estimator.input_shape, estimator.condition_shape) == ((3,), (2,))
    theta = prior.sample((6,))
    trials = simulate(theta[:1].expand(4, 2))  # 4 iid trials at one parameter
    log_prob = estimator.log_prob(trials.unsqueeze(1).expand(4, 6, 3), theta)
    assert log_prob.shape == (4, 6) and bool(log_prob.isfinite().all())
    # The MCMC posterior's potential (no chain run) sums the trials' log-likelihoods.
    posterior = inference.build_posterior()
    potential = posterior.potential(theta, x=trials)
    torch.testing.assert_close(
        potential, log_prob.sum(0) + prior.log_prob(theta), atol=1e-3, rtol=0
    )


def test_npe_recovers_a_gaussian_posterior_for_each_observation():
    # theta ~ N(0, I), x = theta + NOISE * eps: the posterior is N(x / (1 + s2), s2 / (1 + s2)).
    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    build = posterior_nn("maf", transforms=2, hidden_features=(32, 32))
    inference, _ = train(NPE, build, prior, 2000, 15, training_batch_size=100)
    posterior = inference.build_posterior()
    theta_o = torch.tensor([[1.5, -1.0], [-1.0, 0.5], [0.0, 1.5]])
    x_o = simulate(theta_o)
    samples = posterior.sample_batched((2000,), x=x_o, show_progress_bars=False)
    s2 = NOISE**2
    # Each observation's samples centre on its own posterior mean (means are >= 1 apart).
    torch.testing.assert_close(samples.mean(0), x_o[:, :2] / (1 + s2), atol=0.25, rtol=0)
    expected_std = torch.full((3, 2), (s2 / (1 + s2)) ** 0.5)
    torch.testing.assert_close(samples.std(0), expected_std, atol=0, rtol=0.35)
