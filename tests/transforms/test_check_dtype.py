"""check_autoregressive picks the dtype a map accepts, or takes it explicitly."""

import pytest
import torch

from arflows.nn import MADE
from arflows.transforms.check import check_autoregressive
from tests.helpers import randomize

F64 = torch.float64


def test_float64_plain_function_is_checked():
    made = randomize(MADE(4, (16, 16), param_dims=(1, 1)).to(F64))
    seen = []

    def conditioner(x):
        seen.append(x.dtype)
        return made(x)

    report = check_autoregressive(conditioner, 4)
    assert report.autoregressive and report.order == [0, 1, 2, 3]
    assert report.dependence.sum() == 6  # every allowed dependence is there: a real check
    assert seen[-1] == F64  # the Jacobian's points are float64 too
    # The inferred dtype still lets the check fail: an unmasked float64 network.
    net = torch.nn.Linear(4, 8).to(F64)
    assert not check_autoregressive(lambda x: net(x).view(-1, 4, 2), 4, order=range(4))


def test_float64_plain_function_with_context():
    made = randomize(MADE(3, (16,), param_dims=(2,), context=2).to(F64))
    report = check_autoregressive(lambda x, c: made(x, c), 3, context=2)
    assert bool(report) and not report.context_blind


def test_explicit_dtype_is_used_and_checked():
    made = randomize(MADE(3, (8,), param_dims=(1,)).to(F64))
    assert check_autoregressive(lambda x: made(x), 3, dtype=F64).autoregressive
    with pytest.raises(RuntimeError, match="dtype"):
        check_autoregressive(lambda x: made(x), 3, dtype=torch.float32)
    with pytest.raises(TypeError, match="floating point"):
        check_autoregressive(lambda x: made(x), 3, dtype=torch.int64)


def test_module_dtype_comes_from_its_parameters():
    made = randomize(MADE(3, (8,), param_dims=(1, 1)).to(F64))
    report = check_autoregressive(made, 3)
    assert report.autoregressive and report.dependence.sum() == 3
