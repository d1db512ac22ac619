"""Generic property tests over the registry in cases.py."""

import pytest
import torch

from tests.helpers import LADJ_ATOL, ROUND_TRIP_ATOL, autograd_ladj, jacobian
from tests.transforms.cases import CASES

FEATURES = [1, 2, 5]
BATCHES = [(), (7,), (3, 5)]

cases = pytest.mark.parametrize("name", sorted(CASES))
features = pytest.mark.parametrize("d", FEATURES)


def _total(ladj, x):
    """Sums an elementwise log-det to one number per point."""
    return ladj.sum(-1) if ladj.shape == x.shape else ladj


@cases
@features
def test_ladj_matches_autograd(name, d):
    t = CASES[name](d).transform
    for _ in range(3):
        x = torch.randn(d, dtype=torch.float64)
        y = t(x)
        expected = autograd_ladj(t, x)
        assert torch.allclose(_total(t.log_abs_det_jacobian(x, y), x), expected, atol=LADJ_ATOL)
        y2, ladj = t.call_and_ladj(x)
        assert torch.allclose(y2, y, atol=1e-12)
        assert torch.allclose(_total(ladj, x), expected, atol=LADJ_ATOL)


@cases
@features
def test_inverse_ladj_matches_autograd(name, d):
    t = CASES[name](d).transform
    y = torch.randn(d, dtype=torch.float64)
    x, ladj = t.inv.call_and_ladj(y)
    expected = autograd_ladj(t.inv, y)
    assert torch.allclose(_total(ladj, y), expected, atol=LADJ_ATOL)
    assert torch.allclose(_total(t.inv.log_abs_det_jacobian(y, x), y), expected, atol=LADJ_ATOL)
    assert torch.allclose(expected, -autograd_ladj(t, x), atol=LADJ_ATOL)


@cases
@features
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_round_trip_and_shapes(name, d, batch):
    t = CASES[name](d).transform
    x = torch.randn(*batch, d, dtype=torch.float64)
    y, ladj = t.call_and_ladj(x)
    assert y.shape == x.shape
    assert _total(ladj, x).shape == batch
    assert torch.allclose(t.inv(y), x, atol=ROUND_TRIP_ATOL)
    assert torch.allclose(t(t.inv(x)), x, atol=ROUND_TRIP_ATOL)


@cases
@features
def test_autoregressive_jacobian_is_triangular(name, d):
    case = CASES[name](d)
    if case.ranks is None:
        pytest.skip("not autoregressive")
    ranks = torch.tensor(case.ranks)
    x = torch.randn(d, dtype=torch.float64)
    jac = jacobian(case.transform, x)
    later = ranks[None, :] > ranks[:, None]  # y_i may not depend on x_j ranked after i
    assert (jac[later] == 0).all()
    assert (jac.diagonal() > 0).all()  # monotone in its own feature
