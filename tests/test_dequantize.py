"""Uniform dequantization and discrete log-probabilities."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from arflows.data import dequantize, discrete_log_prob, integer_columns
from arflows.flows import Flow, MaskedAutoregressiveTransform, StandardNormal
from arflows.flows.agnostic import OrderAgnosticMAF
from tests.helpers import randomize

F64 = torch.float64


def test_integer_columns():
    x = torch.tensor([[0.0, 1.5, 3.0, 1.0], [2.0, 0.5, -1.0, math.inf], [7.0, 2.0, 1e6, 2.0]])
    assert integer_columns(x) == [0, 2]
    assert integer_columns(x[:2, :1].long()) == [0]
    assert integer_columns(torch.tensor([[1.0, math.nan]])) == [0]
    with pytest.raises(TypeError, match="`x` to be a tensor"):
        integer_columns([[1.0]])


def test_dequantize_fills_each_integer_cell():
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(-5, 5, (2000, 3)).double()
    k[:, 1] += 0.25  # not integer-valued: left alone
    x = dequantize(k, generator=gen)
    assert torch.equal(x[:, 1], k[:, 1])
    assert torch.equal(x[:, [0, 2]].floor(), k[:, [0, 2]])
    noise = x[:, [0, 2]] - k[:, [0, 2]]
    assert 0.45 < noise.mean() < 0.55 and noise.min() < 0.01 and noise.max() > 0.99
    again = dequantize(k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    assert not torch.equal(x, dequantize(k, generator=gen))  # fresh noise each call


def test_dequantize_columns_and_dtypes():
    k = torch.tensor([[1, 2], [3, 4]])
    x = dequantize(k, columns=[1])
    assert x.dtype == torch.get_default_dtype()
    assert torch.equal(x[:, 0], k[:, 0].float()) and torch.equal(x[:, 1].floor(), k[:, 1].float())
    y = dequantize(k.double(), columns=[-1])
    assert torch.equal(y[:, 0], k[:, 0].double()) and not torch.equal(y[:, 1], k[:, 1].double())
    assert torch.equal(dequantize(k.double(), columns=[]), k.double())


@pytest.mark.parametrize(
    ("columns", "error", "match"),
    [
        ([2], ValueError, r"ints in 0\.\.1, got 2"),
        ([0.5], ValueError, r"ints in 0\.\.1"),
        ([0, 0], ValueError, "distinct"),
        (1, TypeError, "list of ints"),
    ],
)
def test_bad_columns_are_named(columns, error, match):
    with pytest.raises(error, match=match):
        dequantize(torch.zeros(3, 2), columns)


def _normal(loc, scale):
    return Normal(torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64))


def test_estimate_matches_exact_mass_of_a_product_density():
    base = _normal([0.3, -1.0], [1.5, 0.8])
    dist = Independent(base, 1)
    k = torch.tensor([[0.0, -1.0], [1.0, -2.0], [-3.0, 0.0], [2.0, 1.0]], dtype=F64)
    exact = (base.cdf(k + 1) - base.cdf(k)).log().sum(-1)
    gen = torch.Generator().manual_seed(0)
    estimate = discrete_log_prob(dist, k, samples=4000, generator=gen)
    assert estimate.shape == (4,)
    assert torch.allclose(estimate, exact, atol=0.02)
    # E_u log p(k + u) is a lower bound, strictly below where p varies over the cell.
    u = torch.rand(4000, *k.shape, generator=gen, dtype=F64)
    bound = dist.log_prob(k + u).mean(0)
    assert (bound < exact - 0.01).all()
    # The same through a plain callable, chunked differently.
    again = discrete_log_prob(
        dist.log_prob, k, [0, 1], samples=4000, chunk_size=999, generator=gen
    )
    assert torch.allclose(again, exact, atol=0.02)


def test_continuous_columns_stay_densities():
    base = _normal([0.3, -1.0], [1.5, 0.8])
    dist = Independent(base, 1)
    point = torch.tensor([[1.0, -0.37]], dtype=F64)  # column 1 continuous
    estimate = discrete_log_prob(dist, point, columns=[0], samples=4000)
    mass = (base.cdf(point + 1) - base.cdf(point))[0, 0].log()
    exact = mass + base.log_prob(point)[0, 1]
    assert torch.allclose(estimate, exact[None], atol=0.02)


def test_discrete_masses_of_a_flow_sum_to_one():
    flow = OrderAgnosticMAF(1, transforms=2, hidden_features=(8,), orders=2)
    flow = randomize(flow.double(), scale=0.5).eval()
    k = torch.arange(-25, 25, dtype=F64)[:, None]
    with torch.no_grad():
        log_p = discrete_log_prob(flow(), k, samples=400, generator=torch.Generator())
    assert abs(log_p.exp().sum().item() - 1) < 0.01


def test_conditional_flow_broadcasts_against_its_batch():
    lazy = MaskedAutoregressiveTransform(2, context=3, hidden_features=(8,))
    flow = randomize(Flow([lazy], StandardNormal(2)).double())
    c = torch.randn(5, 3, dtype=F64)
    k = torch.tensor([1.0, -2.0], dtype=F64)
    with torch.no_grad():
        out = discrete_log_prob(flow(c), k, samples=3000)
        one = discrete_log_prob(flow(c[2]), k, samples=3000)
    assert out.shape == (5,) and one.shape == ()
    assert torch.allclose(out[2], one, atol=0.03)  # the same cell, other noise
    assert out.std() > 0.1  # the contexts matter


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"samples": 0}, ValueError, "samples"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"flow": 3}, TypeError, "distribution or a callable"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = {"flow": Independent(_normal([0.0], [1.0]), 1), "k": torch.zeros(1, 1)} | kwargs
    with pytest.raises(error, match=match):
        discrete_log_prob(**args)
