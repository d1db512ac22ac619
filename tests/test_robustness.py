"""Numerical robustness: heavy tails, huge values, float32 against float64, reproducibility."""

import pytest
import torch

import arflows


def heavy_tailed(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    student = torch.distributions.StudentT(2.0).sample((n,))  # uses the global stream
    cauchy = torch.tan(torch.pi * (torch.rand(n, generator=gen) - 0.5))
    huge = 1e6 * torch.rand(n, generator=gen) ** 4
    return torch.stack([student, cauchy, huge], dim=-1)


@pytest.mark.parametrize("builder", [arflows.MAF, arflows.NSF])
def test_heavy_tailed_data_train_to_the_end(builder):
    torch.manual_seed(0)
    x = heavy_tailed(1000)
    assert x.abs().max() > 1e3  # the tails are really there
    flow = builder(3, transforms=2, hidden_features=(16, 16))
    history = arflows.fit(flow, x, epochs=4, batch_size=128, progress=False)
    assert history.stopped_nonfinite is None
    assert len(history.train) == 4
    assert all(torch.isfinite(torch.tensor(history.train + history.valid)))
    with torch.no_grad():
        assert torch.isfinite(flow().log_prob(x)).all()
        assert torch.isfinite(flow().sample((100,))).all()


def test_float32_agrees_with_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=gen, dtype=torch.float64) * 3 + 1
    flows = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        flow = arflows.NSF(3, transforms=2, hidden_features=(16, 16)).to(dtype)
        arflows.fit(flow, x.to(dtype), epochs=2, batch_size=100, valid=None, progress=False)
        flows[dtype] = flow
    with torch.no_grad():
        lp32 = flows[torch.float32]().log_prob(x.float()).double()
        lp64 = flows[torch.float64]().log_prob(x)
    assert lp32.dtype == torch.float64 and lp64.dtype == torch.float64
    assert torch.allclose(lp32, lp64, atol=1e-3, rtol=1e-4)


def test_training_is_reproducible_bit_for_bit():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(2))
    weights = []
    for _ in range(2):
        torch.manual_seed(4)  # the initial weights; fit's seed covers the training
        flow = arflows.MAF(
            2,
            transforms=2,
            hidden_features=(8,),
            randperm=True,
            generator=torch.Generator().manual_seed(3),
        )
        arflows.fit(flow, x, epochs=2, seed=5, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in flow.parameters()]))
    assert torch.equal(weights[0], weights[1])
