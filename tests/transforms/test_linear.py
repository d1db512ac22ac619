"""The LU-parameterised linear layer, alone and between MAF's layers."""

import pytest
import torch

from arflows import IAF, MAF
from arflows.flows.linear import LULinear
from arflows.transforms.linear import LULinearTransform
from tests.helpers import randomize

F64 = torch.float64


def random_lu(d=4, order=None):
    return LULinearTransform(
        *torch.randn(2, d, d, dtype=F64), *torch.randn(2, d, dtype=F64), order
    )


@pytest.mark.parametrize("permuted", [False, True])
def test_forward_inverse_and_log_det_against_the_dense_matrix(permuted):
    order = torch.tensor([2, 0, 3, 1]) if permuted else None
    lower, upper = torch.randn(2, 4, 4, dtype=F64)
    log_diag, bias = torch.randn(2, 4, dtype=F64)
    t = LULinearTransform(lower, upper, log_diag, bias, order)
    weight = torch.tril(lower, -1) + torch.eye(4, dtype=F64)
    weight = weight @ (torch.triu(upper, 1) + torch.diag(log_diag.exp()))
    if permuted:
        weight = torch.eye(4, dtype=F64)[order] @ weight
    assert torch.allclose(t.weight, weight)
    x = torch.randn(3, 5, 4, dtype=F64)
    y, ladj = t.call_and_ladj(x)
    assert torch.allclose(y, x @ weight.T + bias, atol=1e-12)
    assert torch.allclose(ladj, torch.linalg.slogdet(weight).logabsdet.expand(3, 5))
    assert torch.allclose(t.inv(y), torch.linalg.solve(weight, (y - bias)[..., None])[..., 0])
    assert torch.allclose(t.inv(y), x, atol=1e-10)


def test_identity_at_initialisation_and_random_permutation():
    x = torch.randn(6, 3)
    assert torch.equal(LULinear(3)()(x), x)
    layer = LULinear(3, randperm=True, generator=torch.Generator().manual_seed(3))
    assert sorted(layer.order.tolist()) == [0, 1, 2]
    assert torch.equal(layer()(x), x[:, layer.order])
    assert "order" in layer.state_dict()


def test_gradients_reach_the_lu_parameters():
    layer = randomize(LULinear(3).double())
    x = torch.randn(8, 3, dtype=F64)
    y, ladj = layer().call_and_ladj(x)
    (y.square().sum() + ladj.sum()).backward()
    assert all(p.grad.abs().sum() > 0 for p in layer.parameters())


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"`lower` and `upper` with shape \(3, 3\)"):
        LULinearTransform(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"`log_diag` and `bias` with shape \(D,\)"):
        LULinearTransform(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(\*, 3\), got \(2, 4\)"):
        LULinear(3)()(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"`linear` in \(None, 'lu'\), got 'dense'"):
        MAF(3, linear="dense")


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_lu_layers_sit_between_made_layers(cls):
    flow = randomize(cls(3, 2, transforms=3, hidden_features=(8, 8), linear="lu").double())
    layers = [t.transform if cls is IAF else t for t in flow.transforms]
    assert [type(t).__name__ for t in layers] == [
        "MaskedAutoregressiveTransform",
        "LULinear",
        "MaskedAutoregressiveTransform",
        "LULinear",
        "MaskedAutoregressiveTransform",
    ]
    c = torch.randn(4, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((2,))
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)
