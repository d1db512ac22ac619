import pytest
import torch

from arflows import MAF
from arflows.data import figure1, figure1_log_prob
from arflows.train import fit


def test_fit_learns_figure1_and_keeps_best_weights():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, test = figure1(4000, generator=gen), figure1(2000, generator=gen)
    flow = MAF(2, transforms=3, hidden_features=(32, 32))
    with torch.no_grad():
        before = flow().log_prob(test).mean().item()
    history = fit(flow, x, epochs=15, batch_size=128, lr=3e-3, seed=0, progress=False)
    with torch.no_grad():
        after = flow().log_prob(test).mean().item()
    exact = figure1_log_prob(test).mean().item()
    assert after > before + 1.0
    assert exact - after < 0.15  # close to the true density
    assert len(history.train) == len(history.valid) <= 15
    assert history.valid[history.best_epoch] == max(history.valid)


def test_fit_conditional_and_early_stopping():
    c = torch.randn(600, 1)
    x = c + 0.1 * torch.randn(600, 1)
    flow = MAF(1, context=1, transforms=2, hidden_features=(16,))
    history = fit(flow, x, c, epochs=200, patience=2, lr=1e-2, seed=1, progress=False)
    assert history.stopped_early or len(history.train) == 200
    assert max(history.valid) > 0  # x | c is much narrower than a standard normal


def test_fit_is_reproducible_with_a_seed():
    x = torch.randn(300, 2)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        flow = MAF(2, transforms=2, hidden_features=(8,))
        fit(flow, x, epochs=2, seed=5, progress=False)
        runs.append(torch.cat([p.flatten() for p in flow.parameters()]))
    assert torch.equal(*runs)


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}, ValueError, "row 0, column 1"),
        (torch.zeros(10), {}, ValueError, r"shape \(rows, columns\)"),
        (torch.zeros(1, 2), {}, ValueError, "too few rows"),
        (torch.zeros(10, 2), dict(valid=1.5), ValueError, "valid"),
        (torch.zeros(10, 2), dict(epochs=0), ValueError, "epochs >= 1"),
        (torch.zeros(10, 2, dtype=torch.complex64), {}, TypeError, "numbers"),
    ],
)
def test_fit_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(MAF(2, transforms=1, hidden_features=(8,)), x, progress=False, **kwargs)


def test_fit_stops_on_non_finite_loss_and_restores_weights():
    flow = MAF(2, transforms=1, hidden_features=(8,))
    with torch.no_grad():
        flow.transforms[0].made.layers[-1].bias.fill_(1e30)  # overflows to inf at once
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        fit(flow, torch.randn(50, 2), progress=False)
    for k, v in flow.state_dict().items():
        assert torch.equal(v, state[k])
