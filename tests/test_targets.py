import math

import pytest
import torch

from arflows.targets import Banana, CorrelatedGaussian, Funnel, GaussianRing

F64 = torch.float64
QUAD_ATOL = 1e-6  # log Z by quadrature
N_SIGMA = 5.0  # sample moments, in standard errors

TARGETS_2D = {
    "banana": lambda: Banana(),
    "ring": lambda: GaussianRing(),
    "funnel": lambda: Funnel(features=2, scale=1.5),
}


def grid(name, target, n=801):
    """Points (n*n, 2) and trapezoid weights covering all but a negligible part of the mass.

    The funnel is integrated in (v, u) with x = u exp(v / 2), so its neck is resolved.
    """
    if name == "funnel":
        v, u = (
            torch.linspace(-10 * target.scale, 10 * target.scale, n, dtype=F64),
            torch.linspace(-12, 12, n, dtype=F64),
        )
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        points = torch.stack([vv, uu * torch.exp(vv / 2)], -1)
        jac = torch.exp(vv / 2)
    else:
        r = 9 * target.scale if name == "banana" else target.radius + 8 * target.std
        lo, hi = (
            (-r, -r) if name == "ring" else (-r, -15.0),
            (r, r) if name == "ring" else (r, 60.0),
        )
        v, u = (
            torch.linspace(lo[0], hi[0], n, dtype=F64),
            torch.linspace(lo[1], hi[1], n, dtype=F64),
        )
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        points, jac = torch.stack([vv, uu], -1), torch.ones_like(vv)
    w = torch.ones(n, dtype=F64)
    w[0] = w[-1] = 0.5
    weights = jac * (w[:, None] * w) * (v[1] - v[0]) * (u[1] - u[0])
    return points.reshape(-1, 2), weights.reshape(-1)


@pytest.mark.parametrize("name", sorted(TARGETS_2D))
def test_log_normalizer_by_quadrature(name):
    target = TARGETS_2D[name]()
    points, weights = grid(name, target)
    log_z = torch.logsumexp(target.log_prob(points) + weights.log(), 0).item()
    assert abs(log_z - target.log_normalizer) < QUAD_ATOL


@pytest.mark.parametrize("name", sorted(TARGETS_2D))
def test_sample_moments_match_the_density(name):
    target = TARGETS_2D[name]()
    points, weights = grid(name, target)
    p = torch.exp(target.normalized_log_prob(points)) * weights
    gen = torch.Generator().manual_seed(0)
    x = target.sample(50_000, generator=gen, dtype=F64)
    assert x.shape == (50_000, 2) and x.dtype == F64
    for f in (lambda y: y[:, 0], lambda y: y[:, 1], lambda y: torch.tanh(y[:, 0] * y[:, 1])):
        exact = (f(points) * p).sum()
        values = f(x)
        err = values.std() / math.sqrt(len(values))
        assert abs(values.mean() - exact) < N_SIGMA * err, (values.mean(), exact)


def test_funnel_density_is_the_hierarchical_model():
    target = Funnel(features=4, scale=3.0)
    x = target.sample(50, dtype=F64)
    v, rest = x[:, 0], x[:, 1:]
    expected = torch.distributions.Normal(0.0, 3.0).log_prob(v) + torch.distributions.Normal(
        0.0, torch.exp(v / 2)[:, None]
    ).log_prob(rest).sum(-1)
    torch.testing.assert_close(target.normalized_log_prob(x), expected)


@pytest.mark.parametrize("features", [10, 50])
def test_correlated_gaussian(features):
    target = CorrelatedGaussian(features=features, condition=100.0, seed=3)
    mvn = torch.distributions.MultivariateNormal(target.loc, target.covariance)
    x = mvn.sample((20,))
    torch.testing.assert_close(target.normalized_log_prob(x), mvn.log_prob(x))
    eig = torch.linalg.eigvalsh(target.covariance)
    assert math.isclose(eig.max() / eig.min(), 100.0, rel_tol=1e-6)
    assert (target.covariance - torch.diag(target.covariance.diagonal())).abs().max() > 0.1
    y = target.sample(40_000, generator=torch.Generator().manual_seed(1), dtype=F64)
    # Whitened exact samples are standard normal: mean 0 and covariance I, to ~5 / sqrt(n).
    w = torch.linalg.solve_triangular(
        torch.linalg.cholesky(target.covariance), (y - target.loc).T, upper=False
    ).T
    torch.testing.assert_close(w.mean(0), torch.zeros(features, dtype=F64), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(features, dtype=F64), atol=0.03, rtol=0)
    same = CorrelatedGaussian(features=features, condition=100.0, seed=3)
    assert torch.equal(same.covariance, target.covariance)


@pytest.mark.parametrize("name", ["banana", "ring"])
def test_extra_features_are_standard_normal_or_broadcast(name):
    target = {"banana": Banana(features=5), "ring": GaussianRing(features=5)}[name]
    x = torch.randn(3, 7, 5)
    assert target.log_prob(x).shape == (3, 7)
    assert target.sample(11).shape == (11, 5)
    low = {"banana": Banana(), "ring": GaussianRing()}[name]
    # Extra features add an independent normal factor: p5(x) = p2(x[:2]) * N(x[2:]; 0, s^2).
    var = 1.0 if name == "banana" else low.std**2
    extra = -0.5 * x[..., 2:].square().sum(-1) / var - 1.5 * math.log(2 * math.pi * var)
    torch.testing.assert_close(
        target.normalized_log_prob(x), low.normalized_log_prob(x[..., :2]) + extra
    )


def test_errors():
    with pytest.raises(ValueError, match="features >= 2"):
        Funnel(features=1)
    with pytest.raises(ValueError, match="scale > 0"):
        Banana(scale=0.0)
    with pytest.raises(ValueError, match="modes >= 1"):
        GaussianRing(modes=0)
    with pytest.raises(ValueError, match="condition >= 1"):
        CorrelatedGaussian(condition=0.5)
    with pytest.raises(ValueError, match=r"shape \(\*, 10\)"):
        Funnel().log_prob(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="tensor"):
        Funnel().log_prob([0.0] * 10)
    with pytest.raises(ValueError, match="n >= 0"):
        Funnel().sample(-1)
    assert repr(Funnel(features=3)).startswith("Funnel(features=3, scale=3.0")
