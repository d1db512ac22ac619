"""Flows on bounded and positive data: the `support=` argument of every builder."""

import pytest
import torch

import arflows
from arflows.io import load, save
from tests.helpers import randomize

F64 = torch.float64
SUPPORT = [(0, 1), (0, None), None]


@pytest.mark.parametrize("builder", [arflows.MAF, arflows.NSF, arflows.RealNVP, arflows.IAF])
def test_samples_inside_and_outside_is_minus_inf(builder):
    flow = randomize(builder(3, transforms=2, hidden_features=(8,), support=SUPPORT).double())
    with torch.no_grad():
        x = flow().sample((500,))
        # Closed intervals: far-tail noise may round onto a bound in floating point.
        assert (x[:, 0] >= 0).all() and (x[:, 0] <= 1).all() and (x[:, 1] >= 0).all()
        inside = (x[:, 0] > 0) & (x[:, 0] < 1) & (x[:, 1] > 0)
        assert inside.float().mean() > 0.95
        assert torch.isfinite(flow().log_prob(x[inside])).all()
        outside = torch.tensor([[1.5, 1.0, 0.0], [0.5, -1.0, 0.0]], dtype=F64)
        assert torch.equal(flow().log_prob(outside), torch.full((2,), -torch.inf, dtype=F64))


def test_bounded_density_integrates_to_one():
    flow = randomize(arflows.MAF(1, transforms=2, hidden_features=(8,), support=[(2, 5)]).double())
    gen = torch.Generator().manual_seed(0)
    # Standardised as a fit would be: an unstandardised flow wider than its interval puts
    # some mass within a float's width of the bounds, which no grid can integrate.
    flow.standardize_(2 + 3 * torch.rand(1000, 1, dtype=F64, generator=gen))
    with torch.no_grad():
        # A grid uniform in the unbounded space resolves the mass near the bounds.
        grid = flow.support().inv(torch.linspace(-8, 8, 40001, dtype=F64)[:, None])
        density = flow().log_prob(grid).exp()
    assert abs(torch.trapezoid(density, grid[:, 0]).item() - 1) < 1e-3


def test_standardisation_comes_after_the_support_map_and_saves(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.stack(
        [torch.rand(400, generator=gen), 100 * torch.rand(400, generator=gen) ** 2], -1
    )
    flow = arflows.MAF(2, transforms=2, hidden_features=(16,), support=[(0, 1), (0, None)])
    arflows.fit(flow, x, epochs=3, progress=False)
    z = flow().transform(x)
    assert torch.isfinite(z).all()
    assert z.mean(0).abs().max() < 1.0  # standardised in the mapped space
    loaded = load(save(flow, tmp_path / "m"))
    with torch.no_grad():
        assert torch.allclose(loaded().log_prob(x), flow().log_prob(x))
