import pytest
import torch

from arflows.nn import MADE
from arflows.transforms import (
    AutoregressiveTransform,
    MonotonicAffineTransform,
    check_autoregressive,
)
from tests.helpers import randomize


def chain_meta(calls):
    def meta(x):
        calls.append(1)
        prev = torch.nn.functional.pad(x[..., :-1], (1, 0))
        return MonotonicAffineTransform(prev + 1.0, torch.tanh(prev))

    return meta


def test_fixed_point_needs_enough_passes():
    t = AutoregressiveTransform(chain_meta([]), passes=2)
    x = torch.randn(10, 6, dtype=torch.float64)
    assert not torch.allclose(t.inv(t(x)), x, atol=1e-3)  # the chain is 6 long


def test_fixed_point_exits_early_without_grad_and_stays_exact():
    calls = []

    def independent(x):  # no x_i depends on another: one pass solves, the second confirms
        calls.append(1)
        return MonotonicAffineTransform(torch.ones_like(x), torch.zeros_like(x))

    y = torch.randn(4, 8)
    t = AutoregressiveTransform(independent)
    assert t.passes_used is None
    with torch.no_grad():
        x = t.inv(y)
    assert len(calls) == t.passes_used == 2
    assert torch.equal(x, y - 1)

    calls.clear()
    t = AutoregressiveTransform(chain_meta(calls))
    y = torch.randn(4, 8, dtype=torch.float64)
    with torch.no_grad():
        x = t.inv(y)
    assert len(calls) == t.passes_used <= 8 + 1
    assert torch.allclose(t(x), y, atol=1e-12)


def test_fixed_point_gradients_are_exact():
    t = AutoregressiveTransform(chain_meta([]))
    y = torch.randn(5, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(t.inv, y)
    x = t.inv(y).detach()
    expected = torch.linalg.inv(torch.autograd.functional.jacobian(t, x))
    assert torch.allclose(jac, expected, atol=1e-10)


def test_exact_inverse_hook_is_used():
    sentinel = torch.full((2, 3), 7.0)
    t = AutoregressiveTransform(chain_meta([]), inverse=lambda y: sentinel)
    assert t.inv(torch.zeros(2, 3)) is sentinel


def test_passes_validation():
    with pytest.raises(ValueError, match="passes >= 1"):
        AutoregressiveTransform(chain_meta([]), passes=0)


# check_autoregressive: the public checker users run on their own conditioners.


def test_check_accepts_made_in_its_order():
    order = [2, 0, 3, 1]
    made = randomize(MADE(4, (16, 16), order=order, context=2))
    report = check_autoregressive(made, 4, context=2, order=order)
    assert report and report.violations == []
    found = check_autoregressive(made, 4, context=2)  # no order given: it finds this one
    assert found and found.order == order
    wrong = check_autoregressive(made, 4, context=2, order=[0, 1, 2, 3])
    assert not wrong and wrong.violations
    assert "NOT autoregressive" in str(wrong)


def test_check_rejects_unmasked_network():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))
    report = check_autoregressive(lambda x: net(x).view(-1, 3, 2), 3)
    assert not report
    assert report.order is None and report.violations


def test_check_meta_and_transform():
    meta = chain_meta([])
    assert check_autoregressive(meta, 5, order=range(5))  # a meta: strict rule
    t = AutoregressiveTransform(meta)
    assert check_autoregressive(t, 5, order=range(5))  # a transform: diagonal allowed
    assert not check_autoregressive(t, 5, order=range(4, -1, -1))


def test_check_reports_context_blind_outputs():
    made = randomize(MADE(3, (8,)))

    def ignores_context(x, c):
        return made(x)

    report = check_autoregressive(ignores_context, 3, context=2)
    assert report.autoregressive and report.context_blind == [0, 1, 2]
    assert not report and "context" in str(report)
