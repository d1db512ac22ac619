import io
import math

import numpy as np
import pytest
import torch

from arflows import MAF
from arflows.data import figure1, figure1_log_prob
from arflows.flows import NormalizingFlow
from arflows.train import fit

QUIET = dict(progress=False)


def tiny(features=2, context=0):
    return MAF(features, context=context, transforms=1, hidden_features=(8,))


def weights(flow):
    return torch.cat([p.detach().flatten() for p in flow.parameters()])


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    assert history.stopped_nonfinite is None


def test_fit_conditional_and_early_stopping():
    c = torch.randn(600, 1)
    x = c + 0.1 * torch.randn(600, 1)
    flow = MAF(1, context=1, transforms=2, hidden_features=(16,))
    history = fit(flow, x, c, epochs=200, patience=2, lr=1e-2, seed=1, progress=False)
    assert history.stopped_early
    assert len(history.train) < 200
    assert len(history.train) - 1 - history.best_epoch == 2  # exactly `patience` epochs waited
    assert max(history.valid) > 0  # x | c is much narrower than a standard normal


def test_fit_is_reproducible_with_a_seed():
    x = torch.randint(0, 4, (300, 2)).double()
    x[:, 1] += torch.randn(300)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(3)
        flow = MAF(2, transforms=2, hidden_features=(8,))
        options = dict(schedule="plateau", weight_decay=1e-2, clip_grad=1.0, dequantize=[0])
        fit(flow, x, epochs=3, batch_size=64, seed=seed, progress=False, **options)
        runs.append(torch.cat([weights(flow), flow.standardization.loc]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # the seed matters (split, order, noise)


def test_standardization_is_stored_and_densities_stay_raw():
    gen = torch.Generator().manual_seed(0)
    x = 5000.0 + 1000.0 * torch.randn(400, 2, generator=gen)
    flow = tiny()
    history = fit(flow, x, valid=None, epochs=2, **QUIET)
    assert torch.allclose(flow.standardization.loc, x.mean(0))
    assert torch.allclose(flow.standardization.scale, x.std(0, correction=0))
    exact = -2 * (math.log(1000.0) + 0.5 * math.log(2 * math.pi) + 0.5)
    assert abs(history.train[-1] - exact) < 0.2  # includes log|det| of the scaling
    raw = tiny()
    fit(raw, x, valid=None, epochs=2, standardize=False, **QUIET)
    assert not raw.standardization.active


def test_fit_standardizes_the_context_on_training_rows():
    c = 100.0 + 10.0 * torch.randn(200, 1)
    x = torch.randn(200, 1)
    flow = tiny(1, context=1)
    fit(flow, x, c, valid=None, epochs=1, **QUIET)
    assert torch.allclose(flow.context_standardization.loc, c.mean(0))


@pytest.mark.parametrize("valid", [None, 0, 0.0], ids=["None", "0", "0.0"])
def test_without_validation_no_early_stopping_and_last_weights(valid):
    history = fit(tiny(), torch.randn(100, 2), valid=valid, epochs=4, patience=1, **QUIET)
    assert history.valid == [] and len(history.train) == 4
    assert history.best_epoch == 3 and not history.stopped_early


def test_without_validation_the_last_weights_are_kept():
    flow = tiny()
    kept = {}

    def remember(epoch, history, flow):
        kept[epoch] = {k: v.clone() for k, v in flow.state_dict().items()}

    fit(flow, torch.randn(100, 2), valid=None, epochs=3, callbacks=[remember], **QUIET)
    assert states_equal(flow.state_dict(), kept[2])
    assert not states_equal(flow.state_dict(), kept[1])


def test_valid_as_rows_or_tuple():
    gen = torch.Generator().manual_seed(1)
    x, x_va = torch.randn(200, 2, generator=gen), torch.randn(50, 2, generator=gen) + 3.0
    torch.manual_seed(0)
    h1 = fit(tiny(), x, valid=x_va, epochs=2, **QUIET)
    torch.manual_seed(0)
    h2 = fit(tiny(), x, valid=(x_va.numpy(), None), epochs=2, **QUIET)
    assert h1.valid == pytest.approx(h2.valid, abs=1e-6)
    assert h1.valid[-1] < h1.train[-1] - 2.0  # the shifted rows are held out, not trained on
    c, c_va = torch.randn(200, 1), torch.randn(50, 1)
    h3 = fit(tiny(2, context=1), x, c, valid=(x_va, c_va), epochs=1, **QUIET)
    assert len(h3.valid) == 1 and math.isfinite(h3.valid[0])


def test_history_times_and_learning_rates():
    x = torch.randn(128, 2)
    cosine = fit(tiny(), x, epochs=4, batch_size=32, lr=1e-2, patience=None, **QUIET)
    assert cosine.lr[0] == 1e-2
    assert all(a > b for a, b in zip(cosine.lr, cosine.lr[1:], strict=False))
    assert cosine.lr[-1] < 0.2e-2  # per-step cosine towards lr / 100
    assert isinstance(cosine.seconds, float) and cosine.seconds > 0
    constant = fit(tiny(), x, epochs=3, lr=1e-2, schedule=None, patience=None, **QUIET)
    assert constant.lr == [1e-2] * 3


def test_plateau_schedule_halves_the_rate_when_stuck():
    x = torch.randn(64, 2)
    # A tiny rate cannot improve the validation score by the threshold: a plateau.
    history = fit(tiny(), x, epochs=9, lr=1e-6, schedule="plateau", patience=None, **QUIET)
    assert history.lr[:7] == [1e-6] * 7  # 1 best + 5 patient + 1 bad epoch
    assert history.lr[7:] == [0.5e-6] * 2


def test_gradient_clipping_limits_steps():
    x = 3.0 + torch.randn(200, 2)
    moved = {}
    for clip in (None, 1e-12):
        torch.manual_seed(0)
        flow = tiny()
        before = weights(flow)
        fit(flow, x, epochs=2, standardize=False, clip_grad=clip, patience=None, **QUIET)
        moved[clip] = (weights(flow) - before).abs().max().item()
    assert moved[None] > 1e-3
    assert moved[1e-12] < 1e-5  # Adam's eps dominates the clipped gradients


def test_weight_decay_shrinks_weights():
    x = torch.randn(200, 2)
    norms = {}
    for decay in (0.0, 5.0):
        torch.manual_seed(0)
        flow = tiny()
        fit(flow, x, epochs=3, batch_size=16, lr=1e-2, weight_decay=decay, **QUIET)
        norms[decay] = weights(flow).norm().item()
    assert norms[5.0] < 0.8 * norms[0.0]


def test_callbacks_see_each_epoch_and_can_stop():
    seen = []

    def stop_at_two(epoch, history, flow):
        seen.append((epoch, len(history.train), len(history.valid), isinstance(flow, MAF)))
        return epoch == 2

    history = fit(tiny(), torch.randn(100, 2), epochs=10, patience=None,
                  callbacks=[stop_at_two], **QUIET)  # fmt: skip
    assert seen == [(0, 1, 1, True), (1, 2, 2, True), (2, 3, 3, True)]
    assert history.stopped_early and len(history.train) == 3


@pytest.mark.parametrize("valid", [0.2, None], ids=["valid", "no-valid"])
def test_non_finite_loss_mid_training_keeps_last_good_weights(valid):
    kept = {}

    def poison_after_two(epoch, history, flow):
        kept[epoch] = {k: v.clone() for k, v in flow.state_dict().items()}
        if epoch == 1:
            with torch.no_grad():
                flow.transforms[0].made.layers[-1].bias.fill_(float("nan"))

    flow = tiny()
    history = fit(flow, torch.randn(100, 2), valid=valid, epochs=5, patience=None,
                  callbacks=[poison_after_two], **QUIET)  # fmt: skip
    assert history.stopped_nonfinite.startswith("the loss became nan at epoch 2, step 0")
    assert len(history.train) == 2 and history.best_epoch in (0, 1)
    assert f"epoch {history.best_epoch} weights were kept" in history.stopped_nonfinite
    assert all(torch.isfinite(v).all() for v in flow.state_dict().values())
    assert states_equal(flow.state_dict(), kept[history.best_epoch])


def test_fit_stops_on_non_finite_loss_and_restores_weights():
    flow = tiny()
    with torch.no_grad():
        flow.transforms[0].made.layers[-1].bias.fill_(1e30)  # overflows to inf at once
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        fit(flow, torch.randn(50, 2), progress=False)
    assert states_equal(flow.state_dict(), state)  # the standardisation is undone too


def nan_gradients(flow):
    bias = flow.transforms[0].made.layers[-1].bias
    bias.register_hook(lambda g: torch.full_like(g, float("nan")))


def test_non_finite_gradient_is_caught_by_clipping():
    flow = tiny()
    nan_gradients(flow)
    with pytest.raises(FloatingPointError, match="gradient norm became nan at epoch 0, step 0"):
        fit(flow, torch.randn(50, 2), **QUIET)


def test_non_finite_weights_are_never_kept():
    flow = tiny()
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    nan_gradients(flow)
    # One step per epoch and no clipping: the NaN gradient reaches the weights unnoticed.
    history = fit(flow, torch.randn(50, 2), valid=None, batch_size=1000, clip_grad=None,
                  standardize=False, **QUIET)  # fmt: skip
    assert history.stopped_nonfinite.startswith("the weights became non-finite at epoch 0")
    assert "initial weights were kept" in history.stopped_nonfinite
    assert history.best_epoch == -1 and history.train == []
    assert states_equal(flow.state_dict(), state)


def spy_log_prob(monkeypatch):
    """Records (training?, x) for every log_prob call of any flow."""
    calls = []
    original = NormalizingFlow.log_prob

    def log_prob(self, x):
        calls.append((torch.is_grad_enabled(), x.detach().clone()))
        return original(self, x)

    monkeypatch.setattr(NormalizingFlow, "log_prob", log_prob)
    return calls


def test_dequantize_fresh_noise_for_training_fixed_for_validation(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    ints = torch.randint(0, 5, (100,), generator=gen)
    x = torch.stack([ints.double(), torch.randn(100, generator=gen, dtype=torch.float64)], -1)
    calls = spy_log_prob(monkeypatch)
    fit(tiny(), x, valid=0.2, epochs=2, batch_size=1000, dequantize=[0], patience=None, **QUIET)
    train = [x for grad, x in calls if grad]
    valid = [x for grad, x in calls if not grad]
    assert len(train) == len(valid) == 2  # one batch per epoch, one validation per epoch
    for xs in train + valid:
        frac = xs[:, 0] - xs[:, 0].floor()
        assert (frac > 0).all() and set(xs[:, 0].floor().long().tolist()) <= set(range(5))
        assert set(xs[:, 1].tolist()) <= set(x[:, 1].float().tolist())  # untouched column
    assert not torch.equal(train[0][:, 0].sort().values, train[1][:, 0].sort().values)
    assert torch.equal(valid[0], valid[1])


def test_batch_size_larger_than_data_and_integer_data(monkeypatch):
    calls = spy_log_prob(monkeypatch)
    x = torch.randint(-3, 4, (40, 2))
    history = fit(tiny(), x, batch_size=10_000, epochs=2, patience=None, **QUIET)
    train = [x for grad, x in calls if grad]
    assert len(train) == 2 and train[0].shape == (36, 2) and train[0].dtype == torch.float32
    assert len(history.train) == 2


def test_data_follow_the_flows_dtype(monkeypatch):
    calls = spy_log_prob(monkeypatch)
    flow = tiny().double()
    fit(flow, np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32), epochs=1,
        **QUIET)  # fmt: skip
    assert {x.dtype for _, x in calls} == {torch.float64}
    assert flow.standardization.loc.dtype == torch.float64


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["tty", "pipe"])
def test_progress_bar_only_on_a_terminal(monkeypatch, terminal):
    stream = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    fit(tiny(), torch.randn(60, 2), epochs=2, progress=True)
    text = stream.getvalue()
    if terminal:
        assert "train=" in text and "valid=" in text and "2/2" in text
    else:
        assert text == ""


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}, ValueError, "row 0, column 1"),
        (torch.zeros(10), {}, ValueError, r"shape \(rows, columns\)"),
        (torch.zeros(1, 2), {}, ValueError, "too few rows"),
        (torch.zeros(1, 2), dict(valid=None), ValueError, "at least 2 rows, got 1"),
        (torch.zeros(10, 2), dict(valid=1.5), ValueError, "valid"),
        (torch.zeros(10, 2), dict(valid=True), TypeError, "valid"),
        (torch.zeros(10, 2), dict(valid=torch.zeros(5, 3)), ValueError, "`valid` with 2 columns"),
        (torch.zeros(10, 2), dict(valid=(torch.zeros(5, 2),)), ValueError, "1-tuple"),
        (torch.zeros(10, 2), dict(valid=torch.zeros(0, 2)), ValueError, "at least 1 valid"),
        (torch.zeros(10, 2), dict(epochs=0), ValueError, "epochs >= 1"),
        (torch.zeros(10, 2), dict(batch_size=2.5), ValueError, "batch_size >= 1"),
        (torch.zeros(10, 2), dict(lr=float("inf")), ValueError, "lr > 0"),
        (torch.zeros(10, 2), dict(weight_decay=-1.0), ValueError, "weight_decay >= 0"),
        (torch.zeros(10, 2), dict(patience=0), ValueError, "patience >= 1"),
        (torch.zeros(10, 2), dict(clip_grad=0.0), ValueError, "clip_grad > 0"),
        (torch.zeros(10, 2), dict(schedule="linear"), ValueError, "schedule"),
        (torch.zeros(10, 2), dict(callbacks=[1]), TypeError, "callbacks"),
        (torch.zeros(10, 2), dict(dequantize=[2]), ValueError, r"dequantize.*\[0, 2\)"),
        (torch.zeros(10, 2), dict(dequantize="0"), TypeError, "dequantize"),
        (torch.zeros(10, 2), dict(dequantize=[0.5]), TypeError, "integer columns"),
        (torch.zeros(10, 2, dtype=torch.complex64), {}, TypeError, "numbers"),
        (np.array([["a", "b"], ["c", "d"]]), {}, TypeError, "numbers.*<U1"),
        (np.array([[1.0, "b"], [2.0, 3.0]], dtype=object), {}, TypeError, "dtype object"),
        ("data.csv", {}, TypeError, "numbers"),
        (np.full((3, 2), 1e300), {}, ValueError, "NaN or inf"),  # overflows float32
    ],
)
def test_fit_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(MAF(2, transforms=1, hidden_features=(8,)), x, progress=False, **kwargs)


def test_fit_bad_context_and_validation_context():
    x, c = torch.zeros(10, 2), torch.zeros(10, 1)
    with pytest.raises(ValueError, match="`context` with 10 rows"):
        fit(tiny(2, context=1), x, c[:5], **QUIET)
    with pytest.raises(ValueError, match="contexts exactly when"):
        fit(tiny(2, context=1), x, c, valid=torch.zeros(3, 2), **QUIET)
    with pytest.raises(ValueError, match="`valid context` with 1 columns"):
        fit(tiny(2, context=1), x, c, valid=(torch.zeros(3, 2), torch.zeros(3, 2)), **QUIET)
