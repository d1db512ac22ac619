import math

import pytest
import torch

from arflows.data import figure1, figure1_log_prob


def test_figure1_moments():
    x = figure1(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1, x2 = x.unbind(-1)
    assert abs(x2.mean()) < 0.02 and abs(x2.var() - 4) < 0.05
    assert abs((x1 - x2.square() / 4).mean()) < 0.01  # E[x1 | x2] = x2^2 / 4
    assert abs((x1 - x2.square() / 4).var() - 1) < 0.02


def test_figure1_log_prob_integrates_to_one_and_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = torch.linspace(-8, 30, 1201, dtype=torch.float64)
    b = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    grid = torch.cartesian_prod(a, b)
    density = figure1_log_prob(grid).exp().view(len(a), len(b))
    mass = torch.trapezoid(torch.trapezoid(density, b), a)
    assert abs(mass.item() - 1) < 1e-4
    x = torch.tensor([[0.3, -1.2], [4.0, 2.5]], dtype=torch.float64)
    expected = stats.norm.logpdf(x[:, 1], 0, 2) + stats.norm.logpdf(x[:, 0], x[:, 1] ** 2 / 4, 1)
    assert torch.allclose(figure1_log_prob(x), torch.as_tensor(expected), atol=1e-12)
    assert math.isfinite(figure1_log_prob(torch.zeros(2)).item())


def test_figure1_errors():
    with pytest.raises(ValueError, match="n >= 1"):
        figure1(0)
    with pytest.raises(ValueError, match=r"shape \(\*, 2\)"):
        figure1_log_prob(torch.zeros(4, 3))
