import pytest
import torch

from arflows import IAF, MAF, NSF, Flow
from arflows.flows import StandardNormal, Unconditional
from arflows.transforms import PermutationTransform
from tests.flows import registry_agnostic, registry_coupling, registry_neural, registry_paper
from tests.helpers import randomize

F64 = torch.float64


def flows(features, context=0):
    """The registry of flows: name -> factory."""
    registry = {
        "maf": lambda: MAF(features, context, transforms=3, hidden_features=(16, 16)),
        "maf_residual_random": lambda: MAF(
            features,
            context,
            transforms=2,
            hidden_features=(16, 16),
            residual=True,
            randperm=True,
            hidden_degrees="random",
            generator=torch.Generator().manual_seed(1),
        ),
        "iaf": lambda: IAF(features, context, transforms=3, hidden_features=(16, 16)),
        "nsf": lambda: NSF(
            features, context, transforms=2, hidden_features=(16, 16), bins=5, bound=3.0
        ),
    }
    for module in (registry_agnostic, registry_coupling, registry_neural, registry_paper):
        registry.update(module.flows(features, context))
    return registry


NAMES = sorted(flows(1))


def build(name, features, context=0, scale=0.3):
    flow = flows(features, context)[name]().to(F64)
    return randomize(flow, scale=scale)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("context", [0, 2])
def test_quadrature_1d(name, context):
    flow = build(name, 1, context, scale=0.5)
    c = torch.randn(context, dtype=F64) if context else None
    with torch.no_grad():
        samples = flow(c).sample((2000,))
        lo, hi = samples.min().item(), samples.max().item()
        grid = torch.linspace(lo - (hi - lo), hi + (hi - lo), 40001, dtype=F64)[:, None]
        density = flow(c).log_prob(grid).exp()
    mass = torch.trapezoid(density, grid[:, 0])
    assert abs(mass.item() - 1) < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_quadrature_2d(name):
    flow = build(name, 2, context=1, scale=0.25)
    c = torch.tensor([0.7], dtype=F64)
    n = 601
    with torch.no_grad():
        samples = flow(c).sample((4000,))
        lo, hi = samples.min(0).values, samples.max(0).values
        axes = [
            torch.linspace(a - (b - a) / 2, b + (b - a) / 2, n, dtype=F64)
            for a, b in zip(lo, hi, strict=True)
        ]
        grid = torch.cartesian_prod(*axes)
        density = flow(c).log_prob(grid).exp().view(n, n)
    mass = torch.trapezoid(torch.trapezoid(density, axes[1]), axes[0])
    assert abs(mass.item() - 1) < 0.01


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("features", [1, 2, 5])
def test_context_batch_equals_loop(name, features):
    flow = build(name, features, context=3)
    c = torch.randn(6, 3, dtype=F64)
    x = torch.randn(6, features, dtype=F64)
    with torch.no_grad():
        batched = flow(c).log_prob(x)
        looped = torch.stack([flow(c[i]).log_prob(x[i]) for i in range(6)])
    assert torch.allclose(batched, looped, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_shape_contract(name):
    flow = build(name, 3, context=2)
    c = torch.randn(5, 2, dtype=F64)
    dist = flow(c)
    assert dist.batch_shape == (5,) and dist.event_shape == (3,)
    assert dist.sample().shape == (5, 3)
    assert dist.sample((4, 2)).shape == (4, 2, 5, 3)
    assert dist.log_prob(torch.randn(4, 5, 3, dtype=F64)).shape == (4, 5)
    assert dist.log_prob(torch.randn(5, 3, dtype=F64)).shape == (5,)
    unconditional = build(name, 3)()
    assert unconditional.batch_shape == () and unconditional.sample((7,)).shape == (7, 3)
    assert unconditional.log_prob(torch.randn(3, dtype=F64)).shape == ()


@pytest.mark.parametrize("name", NAMES)
def test_rsample_and_log_prob(name):
    flow = build(name, 4, context=2)
    c = torch.randn(3, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((6,))
    assert x.shape == (6, 3, 4) and log_p.shape == (6, 3)
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)
    (x.sum() + log_p.sum()).backward()
    for p in flow.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in flow.parameters())
    with torch.no_grad():
        x2, log_p2 = flow(c).sample_and_log_prob((2,))
    assert not x2.requires_grad and log_p2.shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_gradients_reach_every_parameter(name):
    flow = build(name, 3, context=2)
    flow(torch.randn(8, 2, dtype=F64)).log_prob(torch.randn(8, 3, dtype=F64)).sum().backward()
    for p in flow.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_starts_as_standard_normal(name):
    flow = flows(3, 2)[name]()
    x, c = torch.randn(10, 3), torch.randn(10, 2)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(flow(c).log_prob(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_device_moves(name, device):
    flow = flows(3, 2)[name]()
    flow = flow.to(device=device, dtype=F64)
    c = torch.randn(4, 2, dtype=F64, device=device)
    x = flow(c).sample()
    assert x.dtype == F64 and x.device.type == device.type
    assert flow(c).log_prob(x).dtype == F64
    flow = flow.float()
    assert flow(c.float()).sample().dtype == torch.float32


def test_iaf_is_maf_transforms_inverted():
    maf = randomize(MAF(3, transforms=2, hidden_features=(8,)).double())
    iaf = IAF(3, transforms=2, hidden_features=(8,)).double()
    for lazy_inv, lazy in zip(iaf.transforms, maf.transforms, strict=True):
        lazy_inv.transform.load_state_dict(lazy.state_dict())
    x = torch.randn(5, 3, dtype=F64)
    for lazy_inv, lazy in zip(iaf.transforms, maf.transforms, strict=True):
        assert torch.allclose(lazy_inv()(x), lazy().inv(x), atol=1e-10)
        assert torch.allclose(lazy_inv().inv(x), lazy()(x), atol=1e-12)


def test_flow_with_unconditional_permutation():
    flow = Flow(
        [Unconditional(PermutationTransform, torch.tensor([1, 0]))],
        StandardNormal(2),
    )
    x = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(flow().log_prob(x), StandardNormal(2)().log_prob(x.flip(-1)))


def test_bad_shapes_are_named():
    flow = MAF(3, context=2, transforms=1)
    with pytest.raises(ValueError, match=r"shape \(\*, 3\)"):
        flow(torch.randn(2)).log_prob(torch.randn(4, 5))
    with pytest.raises(ValueError, match="context of size 2"):
        flow().log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="transforms >= 1"):
        MAF(3, transforms=0)


def test_iaf_samples_with_log_density_in_one_pass_per_layer(monkeypatch):
    from arflows.flows.autoregressive import MaskedAutoregressiveTransform

    calls = []
    meta = MaskedAutoregressiveTransform.meta

    def counting_meta(self, x, c):
        calls.append(1)
        return meta(self, x, c)

    monkeypatch.setattr(MaskedAutoregressiveTransform, "meta", counting_meta)
    flow = build("iaf", 4, context=2)
    c = torch.randn(4, 2, dtype=F64)
    x, log_p = flow(c).rsample_and_log_prob((5,))
    assert len(calls) == len(flow.transforms)  # one network pass per layer, no inverse
    assert torch.allclose(log_p, flow(c).log_prob(x), atol=1e-8)
