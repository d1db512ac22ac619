"""Conditional marginal CDFs, quantiles and means of flows: exact for one feature, else MC."""

import importlib

import pytest
import torch
from torch import Tensor
from torch.distributions import constraints
from torch.special import ndtr

from arflows.flows import IAF, MAF, NSF, Flow, StandardNormal, Unconditional, cdf, mean, quantiles
from arflows.transforms import Transform
from tests.helpers import randomize

quantiles_module = importlib.import_module("arflows.flows.quantiles")
F64 = torch.float64
# The trapezoid rule's error on the grids below, and the exact path's precision.
TRAPEZOID_ATOL = 2e-5
EXACT_ATOL = 1e-9
Q = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


FLOWS = {
    "maf": lambda context: MAF(1, context, transforms=2, hidden_features=(8,)),
    "nsf": lambda context: NSF(1, context, transforms=2, hidden_features=(8,), bins=4),
    "iaf": lambda context: IAF(1, context, transforms=2, hidden_features=(8,)),
    "maf-gmm": lambda context: MAF(
        1, context, transforms=2, hidden_features=(8,), base="gmm", components=3
    ),
    "maf-mog": lambda context: MAF(
        1, context, transforms=1, hidden_features=(8,), base="mog", components=3
    ),
    "maf-marginals": lambda context: MAF(
        1, context, transforms=2, hidden_features=(8,), marginals=True
    ),
    "nsf-support": lambda context: NSF(
        1, context, transforms=2, hidden_features=(8,), bins=4, support=[(-20.0, 20.0)]
    ),
    "maf-half-bounded": lambda context: MAF(
        1, context, transforms=2, hidden_features=(8,), support=[(0.0, None)]
    ),
}


def make(name, context, scale=0.4):
    flow = randomize(FLOWS[name](context).double(), scale=scale)
    return flow.eval()


def contexts(n, context, seed=1):
    if context == 0:
        return None
    return torch.randn(n, context, generator=torch.Generator().manual_seed(seed), dtype=F64)


def integrated_cdf(flow, c, y):
    """F(y | c) by the trapezoid rule on exp(log_prob); rows of y (N, 1), contexts c (N, C).

    The grid is sinh-spaced (fine in the middle, reaching far into heavy tails) and, for a
    bounded column, mapped by the support's inverse, so mass crowding a bound is resolved;
    each row's y is a grid point, so no interpolation is needed.
    """
    grid = 8 * torch.linspace(-4.5, 4.5, 100_001, dtype=F64).sinh()
    if flow.support is not None:
        grid = flow.support().inv(grid[:, None])[:, 0].unique_consecutive()
    grid = torch.cat((grid, y[:, 0])).sort().values  # (G,)
    x = grid[:, None, None].expand(-1, 1 if c is None else len(y), 1)  # (G, N or 1, 1)
    with torch.no_grad():
        density = flow(c).log_prob(x).exp().expand(-1, len(y))  # (G, N)
    steps = grid.diff()[:, None] * 0.5 * (density[1:] + density[:-1])
    total = torch.cat((torch.zeros(1, len(y), dtype=F64), steps.cumsum(0)))  # (G, N)
    assert torch.allclose(total[-1], torch.ones(len(y), dtype=F64), atol=TRAPEZOID_ATOL)
    index = torch.searchsorted(grid, y[:, 0].contiguous())
    return total[index, torch.arange(len(y))][:, None]


@pytest.mark.parametrize("context", [0, 2], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("name", list(FLOWS))
def test_exact_cdf_is_the_integrated_density(name, context):
    flow = make(name, context)
    c = contexts(3, context)
    with torch.no_grad():
        y = flow(c).sample() if c is not None else flow().sample((3,))  # (3, 1)
    u = cdf(flow, y, c)
    assert u.shape == (3, 1) and u.dtype == F64
    assert torch.allclose(u, integrated_cdf(flow, c, y), atol=TRAPEZOID_ATOL)


@pytest.mark.parametrize("name", list(FLOWS))
def test_quantiles_invert_the_cdf(name):
    flow = make(name, 3)
    c = contexts(6, 3)
    x = quantiles(flow, Q, c)
    assert x.shape == (6, len(Q), 1)
    assert bool((x.diff(dim=1) > 0).all())  # increasing in q
    u = cdf(flow, x[:, :, 0].reshape(-1, 1), c.repeat_interleave(len(Q), 0))
    expected = torch.tensor(Q, dtype=F64).repeat(6)
    assert torch.allclose(u[:, 0], expected, atol=EXACT_ATOL)


def test_unconditional_quantiles_have_one_row():
    flow = make("nsf", 0)
    x = quantiles(flow, torch.tensor(Q), None)
    assert x.shape == (1, len(Q), 1)
    assert torch.allclose(cdf(flow, x[0]), torch.tensor(Q, dtype=F64)[:, None], atol=EXACT_ATOL)


class Reflect(Transform):
    """y = 1 - 2x: a decreasing layer, as a user might write one."""

    domain = codomain = constraints.real_vector

    def _call(self, x: Tensor) -> Tensor:
        return 1 - 2 * x

    def _inverse(self, y: Tensor) -> Tensor:
        return (1 - y) / 2

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.full(x.shape[:-1], torch.log(torch.tensor(2.0)).item(), dtype=x.dtype)


def test_a_decreasing_layer_flips_the_cdf_and_quantiles():
    # x = (1 - z) / 2 with z ~ N(0, 1): x ~ N(1/2, 1/4), whatever the direction of the layer.
    flow = Flow([Unconditional(Reflect)], StandardNormal(1)).double()
    y = torch.tensor([[-0.5], [0.25], [0.5], [1.5]], dtype=F64)
    assert torch.allclose(cdf(flow, y), ndtr((y - 0.5) / 0.5), atol=EXACT_ATOL)
    x = quantiles(flow, Q)
    assert bool((x.diff(dim=1) > 0).all())
    assert torch.allclose(cdf(flow, x[0]), torch.tensor(Q, dtype=F64)[:, None], atol=EXACT_ATOL)


def test_every_registry_layer_of_one_feature_increases():
    # The exact path reads the direction off two points; check it against a finite difference.
    for name in FLOWS:
        flow = make(name, 2)
        c = contexts(4, 2)
        dist = flow(c)
        x = quantiles(flow, (0.3, 0.7), c)  # (4, 2, 1)
        with torch.no_grad():
            z = dist.transform(x.transpose(0, 1))  # (2, 4, 1)
        assert bool((z[1] > z[0]).all()), name


def test_support_edges_and_infinities():
    flow = make("nsf-support", 2)
    c = contexts(4, 2)
    y = torch.tensor([[-25.0], [-20.0], [20.0], [torch.inf]], dtype=F64)
    assert cdf(flow, y, c)[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    flow = make("maf", 0)
    y = torch.tensor([[-torch.inf], [torch.inf]], dtype=F64)
    assert cdf(flow, y)[:, 0].tolist() == [0.0, 1.0]


def test_monte_carlo_agrees_with_the_exact_path(monkeypatch):
    flow = make("nsf", 2)
    c = contexts(20, 2)
    with torch.no_grad():
        y = flow(c).sample()
    exact_u = cdf(flow, y, c)
    exact_x = quantiles(flow, Q, c)
    monkeypatch.setattr(quantiles_module, "_exact", lambda dist: None)
    s = 4000
    mc_u = cdf(flow, y, c, samples=s, generator=torch.Generator().manual_seed(0))
    # Standard error of a share of S draws: at most 1 / (2 sqrt(S)); allow 5 of them.
    assert (mc_u - exact_u).abs().max() < 5 * 0.5 / s**0.5
    mc_x = quantiles(flow, Q, c, samples=s, generator=torch.Generator().manual_seed(1))
    monkeypatch.undo()
    # In probability: the exact CDF at the empirical quantile is q up to sampling error.
    u = cdf(flow, mc_x.reshape(-1, 1), c.repeat_interleave(len(Q), 0)).reshape(20, len(Q))
    q = torch.tensor(Q, dtype=F64)
    assert bool(((u - q).abs() < 5 * (q * (1 - q) / s).sqrt()).all())
    assert torch.allclose(mc_x[:, 3], exact_x[:, 3], atol=0.2)


def test_several_features_by_monte_carlo():
    flow = MAF(2, 3, transforms=1, hidden_features=(8,)).double()  # N(0, I) when built
    c = contexts(7, 3)
    y = torch.tensor([[0.0, 1.0]], dtype=F64).expand(7, 2)
    u = cdf(flow, y, c, samples=4000, generator=torch.Generator().manual_seed(0))
    assert u.shape == (7, 2)
    assert torch.allclose(u, ndtr(y), atol=5 * 0.5 / 4000**0.5)
    x = quantiles(flow, Q, c, samples=4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, len(Q), 2) and bool((x.diff(dim=1) >= 0).all())
    m = mean(flow, c, samples=4000, generator=torch.Generator().manual_seed(0))
    assert m.shape == (7, 2) and m.abs().max() < 5 / 4000**0.5
    # Unconditional: one set of draws for every row (sorted once), the same answer.
    flow = MAF(2, transforms=1, hidden_features=(8,)).double()
    u = cdf(flow, y, samples=4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(u, ndtr(y), atol=5 * 0.5 / 4000**0.5)
    assert quantiles(flow, Q, samples=100).shape == (1, len(Q), 2)
    assert mean(flow, samples=100).shape == (1, 2)


def test_a_generator_repeats_the_draws_and_leaves_the_global_one_alone():
    flow = MAF(2, 1, transforms=1, hidden_features=(8,)).double()
    c = contexts(3, 1)
    y = torch.zeros(3, 2, dtype=F64)
    state = torch.get_rng_state()
    a = cdf(flow, y, c, samples=50, generator=torch.Generator().manual_seed(3))
    b = cdf(flow, y, c, samples=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_the_mean_applies_a_function_to_the_draws():
    flow = MAF(1, 2, transforms=1, hidden_features=(8,)).double()
    c = contexts(4, 2)
    m = mean(flow, c, samples=10, apply=lambda x: torch.ones_like(x))
    assert torch.equal(m, torch.ones(4, 1, dtype=F64))


def test_bad_input_is_refused():
    conditional, plain = make("maf", 2), make("maf", 0)
    c, y = contexts(3, 2), torch.zeros(3, 1, dtype=F64)
    for q in ([0.0], [1.0], [0.5, 1.5], [float("nan")], [], [[0.5]]):
        with pytest.raises(ValueError, match="probabilities"):
            quantiles(conditional, q, c)
    with pytest.raises(ValueError, match="conditional on 2 context"):
        cdf(conditional, y)
    with pytest.raises(ValueError, match="conditional on 2 context"):
        quantiles(conditional, Q)
    with pytest.raises(ValueError, match="unconditional"):
        cdf(plain, y, c)
    with pytest.raises(ValueError, match=r"shape \(N, 1\)"):
        cdf(conditional, torch.zeros(3, dtype=F64), c)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        quantiles(conditional, Q, torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match="one row per row"):
        cdf(conditional, y, c[:2])
    with pytest.raises(ValueError, match="NaN"):
        cdf(plain, torch.full((1, 1), torch.nan, dtype=F64))
    with pytest.raises(ValueError, match="samples"):
        mean(plain, samples=0)
