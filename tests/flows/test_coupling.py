"""Coupling layers and flows: one network pass each way, alternating halves, bad arguments."""

import pytest
import torch

from arflows import NSF
from arflows.flows.coupling import (
    NICE,
    CouplingTransform,
    MaskedCouplingTransform,
    RealNVP,
    coupling_layers,
)
from arflows.transforms import MonotonicAffineTransform, MonotonicRQSTransform
from tests.helpers import jacobian, randomize

F64 = torch.float64

BUILDERS = {
    "realnvp": lambda d, c: RealNVP(d, c, transforms=3, hidden_features=(8,)),
    "nice": lambda d, c: NICE(d, c, transforms=3, hidden_features=(8,)),
    "nsf_coupling": lambda d, c: NSF(d, c, transforms=2, hidden_features=(8,), coupling=True),
}


def _counting(monkeypatch):
    calls = []
    meta = MaskedCouplingTransform.meta

    def counting_meta(self, x_a, c):
        calls.append(1)
        return meta(self, x_a, c)

    monkeypatch.setattr(MaskedCouplingTransform, "meta", counting_meta)
    return calls


def _couplings(flow):
    return [t for t in flow.transforms if isinstance(t, MaskedCouplingTransform)]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_network_pass_per_layer_each_way(name, monkeypatch):
    flow = randomize(BUILDERS[name](4, 2).double())
    layers = len(_couplings(flow))
    c = torch.randn(3, 2, dtype=F64)
    calls = _counting(monkeypatch)
    x = flow(c).sample((5,))
    assert len(calls) == layers
    calls.clear()
    log_p = flow(c).log_prob(x)
    assert len(calls) == layers
    calls.clear()
    x2, log_p2 = flow(c).rsample_and_log_prob((5,))
    assert len(calls) == layers  # samples and their density from the same single pass
    assert torch.allclose(log_p2, flow(c).log_prob(x2), atol=1e-8)
    assert log_p.shape == (5, 3)


@pytest.mark.parametrize("features", [2, 3, 5])
def test_halves_alternate_so_every_feature_is_transformed(features):
    layers = coupling_layers(features, transforms=4, hidden_features=(4,))
    masks = [t.mask for t in layers]
    assert masks[0].tolist() == [i >= features // 2 for i in range(features)]
    for a, b in zip(masks[:-1], masks[1:], strict=True):
        assert torch.equal(a, ~b)
    for a, b in zip(masks[:-1], masks[1:], strict=True):
        assert (a | b).all()


def test_random_halves_are_reproducible_and_complementary():
    def masks(seed):
        gen = torch.Generator().manual_seed(seed)
        layers = coupling_layers(
            6, transforms=4, randperm=True, generator=gen, hidden_features=(4,)
        )
        return torch.stack([t.mask for t in layers])

    first = masks(1)
    assert torch.equal(first, masks(1))
    assert torch.equal(first[0], ~first[1]) and torch.equal(first[2], ~first[3])
    assert (first.sum(-1) == 3).all()
    assert not torch.equal(first[0], first[2]) or not torch.equal(first, masks(2))


def test_single_feature_is_transformed_by_every_layer():
    assert all(t.mask.tolist() == [True] for t in coupling_layers(1, transforms=3))


def test_jacobian_has_the_coupling_structure():
    mask = torch.tensor([True, False, True, False, True])
    lazy = randomize(MaskedCouplingTransform(5, 2, mask=mask, hidden_features=(8,)).double())
    t = lazy(torch.randn(2, dtype=F64))
    x = torch.randn(5, dtype=F64)
    jac = jacobian(t, x)
    a, b = ~mask, mask
    assert torch.equal(jac[a][:, a], torch.eye(2, dtype=F64))  # y_A = x_A
    assert (jac[a][:, b] == 0).all()
    assert (jac[b][:, b] == torch.diag(jac[b][:, b].diagonal())).all()  # elementwise on B
    assert (jac[b][:, b].diagonal() > 0).all()
    assert (jac[b][:, a] != 0).all()  # theta reads x_A
    y = t(x)
    assert torch.equal(y[a], x[a]) and torch.equal(t.inv(y)[a], y[a])


def test_starts_as_identity_and_keeps_identity_group_exactly():
    lazy = MaskedCouplingTransform(4, 3, univariate=MonotonicRQSTransform)
    x, c = torch.randn(6, 4), torch.randn(6, 3)
    y, ladj = lazy(c).call_and_ladj(x)
    assert torch.allclose(y, x, atol=1e-6) and torch.allclose(ladj, torch.zeros(6), atol=1e-6)


def test_single_feature_depends_on_context_only_or_is_constant():
    conditional = randomize(MaskedCouplingTransform(1, 2, hidden_features=(8,)).double())
    x = torch.randn(1, dtype=F64)
    c1, c2 = torch.randn(2, 2, dtype=F64)
    assert conditional.net.in_features == 0 and conditional.constant is None
    assert not torch.allclose(conditional(c1)(x), conditional(c2)(x))
    constant = randomize(MaskedCouplingTransform(1).double())
    assert constant.net is None and constant.constant.shape == (1, 2)
    shift, log_scale = constant.constant[0]
    y = constant()(torch.randn(7, 1, dtype=F64))
    expected = MonotonicAffineTransform(shift, log_scale)(x)
    assert torch.allclose(constant()(x), expected)
    assert y.shape == (7, 1)
    with pytest.raises(ValueError, match="no context"):
        constant(c1)(x)


def test_context_batch_broadcasts_against_unbatched_input():
    lazy = randomize(MaskedCouplingTransform(3, 2, hidden_features=(8,)).double())
    c = torch.randn(5, 2, dtype=F64)
    x = torch.randn(3, dtype=F64)
    t = lazy(c)
    y, ladj = t.call_and_ladj(x)
    assert y.shape == (5, 3) and ladj.shape == (5,)
    assert torch.allclose(t.inv(y), x.expand(5, 3), atol=1e-10)
    x_back, ladj_inv = t.inv.call_and_ladj(y)
    assert torch.allclose(ladj_inv, -ladj, atol=1e-10)


def test_nice_couplings_preserve_volume_and_the_last_layer_scales():
    flow = randomize(NICE(3, 2, transforms=2, hidden_features=(8,)).double(), scale=0.5)
    x, c = torch.randn(4, 3, dtype=F64), torch.randn(4, 2, dtype=F64)
    for lazy in _couplings(flow):
        assert torch.equal(lazy(c).call_and_ladj(x)[1], torch.zeros(4, dtype=F64))
    (raw,) = flow.transforms[-1].parameters()
    log_scale = 5.0 * torch.tanh(raw / 5.0)  # the soft-clipped learned log-scales
    z, ladj = flow(c).transform.call_and_ladj(x)
    assert torch.allclose(ladj, log_scale.sum().expand(4))
    assert not torch.allclose(ladj, torch.zeros(4, dtype=F64))


def test_nsf_coupling_builds_spline_couplings():
    flow = NSF(3, 2, transforms=3, bins=4, bound=2.0, coupling=True, hidden_features=(8,))
    layers = _couplings(flow)
    assert len(layers) == len(flow.transforms) == 3
    assert all(t.univariate is MonotonicRQSTransform for t in layers)
    assert layers[0].univariate_kwargs == dict(bins=4, bound=2.0)
    assert flow.config["arguments"]["coupling"] is True
    assert not _couplings(NSF(3, transforms=2, hidden_features=(8,)))  # MADE by default


def test_embedding_is_passed_through():
    embedding = torch.nn.Linear(5, 2)
    flow = RealNVP(3, context=2, transforms=2, hidden_features=(8,), embedding=embedding)
    assert flow.embedding is embedding
    assert flow(torch.randn(4, 5)).log_prob(torch.randn(4, 3)).shape == (4,)
    nsf = NSF(3, context=2, transforms=2, coupling=True, embedding=embedding)
    assert nsf.embedding is embedding


def test_scale_option_reaches_the_layers():
    flow = RealNVP(3, transforms=2, univariate_kwargs=dict(scale="softplus"))
    assert all(t.univariate_kwargs == dict(scale="softplus") for t in flow.transforms)


def test_repr_is_readable():
    text = repr(MaskedCouplingTransform(3, hidden_features=(4,)))
    assert "(mask): [0, 1, 1]" in text and "MonotonicAffineTransform" in text
    t = MaskedCouplingTransform(3, hidden_features=(4,))()
    assert repr(t) == "CouplingTransform(mask=[0, 1, 1])"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`transforms >= 1`, got 0"):
        RealNVP(3, transforms=0)
    with pytest.raises(ValueError, match=r"`features >= 1`.*got 0"):
        RealNVP(0)
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        MaskedCouplingTransform(3, mask=[True, False])
    with pytest.raises(ValueError, match="boolean tensor"):
        MaskedCouplingTransform(3, mask=[1, 0, 1])
    with pytest.raises(ValueError, match="at least one True"):
        MaskedCouplingTransform(3, mask=[False, False, False])
    with pytest.raises(ValueError, match="`scale` in"):
        RealNVP(3, univariate_kwargs=dict(scale="bogus"))
    with pytest.raises(TypeError, match="residual"):
        NSF(3, coupling=True, residual=True)
    with pytest.raises(ValueError, match=r"shape \(\*, 3\)"):
        CouplingTransform(lambda x_a: None, torch.tensor([False, True, True]))(torch.randn(4))
