import math

import pytest
import torch

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoNormalizingFlow  # noqa: E402

from arflows import IAF, MAF, NSF  # noqa: E402
from arflows.pyro import AutoFlow, FlowTransform  # noqa: E402
from arflows.transforms import AutoregressiveTransform, MonotonicAffineTransform  # noqa: E402
from tests.helpers import randomize  # noqa: E402

F64 = torch.float64
ATOL = 1e-9

FLOWS = {
    "iaf": lambda: IAF(3, transforms=2, hidden_features=(8, 8)),
    "maf": lambda: MAF(3, transforms=2, hidden_features=(8, 8)),
    "nsf": lambda: NSF(3, transforms=2, hidden_features=(8, 8), bins=4),
    "iaf_context": lambda: IAF(3, context=2, transforms=2, hidden_features=(8, 8)),
}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_transformed_distribution_is_the_flow(name):
    flow = randomize(FLOWS[name]().to(F64), scale=0.3)
    c = torch.randn(2, dtype=F64) if name.endswith("context") else None
    q = dist.TransformedDistribution(flow(c).base, FlowTransform(flow, c))
    x = flow(c).sample((50,))
    torch.testing.assert_close(q.log_prob(x), flow(c).log_prob(x), atol=ATOL, rtol=0)
    # Same noise, same sample: the transform runs noise -> data, like flow sampling.
    torch.manual_seed(3)
    y = q.rsample((7,))
    torch.manual_seed(3)
    torch.testing.assert_close(y, flow(c).rsample((7,)), atol=ATOL, rtol=0)
    # The density of its own sample (cache hit on every layer) is the flow's too.
    torch.testing.assert_close(q.log_prob(y), flow(c).log_prob(y), atol=ATOL, rtol=0)


def test_transform_module_registers_the_flow_once():
    flow = IAF(3, transforms=2, hidden_features=(8, 8))
    t = FlowTransform(flow)
    assert t.flow is flow
    assert len(list(t.parameters())) == len(list(flow.parameters()))
    assert len(t.parts) == 2


def test_single_arflows_transforms_work_in_pyro():
    shift, log_scale = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    affine = MonotonicAffineTransform(shift, log_scale)
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [affine])
    x = torch.randn(10, 3, dtype=F64)
    z = (x - shift) * torch.exp(-affine.log_scale)
    expected = base.log_prob(z) - affine.log_scale.sum()
    torch.testing.assert_close(q.log_prob(x), expected)

    def meta(u):  # theta_i depends on u_{i-1}
        prev = torch.nn.functional.pad(u[..., :-1], (1, 0))
        return MonotonicAffineTransform(prev, 0.5 * torch.tanh(prev))

    ar = AutoregressiveTransform(meta)
    q = dist.TransformedDistribution(base, [ar.inv])  # data -> noise map, used inverted
    z, ladj = ar.call_and_ladj(x)
    torch.testing.assert_close(q.log_prob(x), base.log_prob(z) + ladj)


def model(data):
    """y_n ~ N(mu, sigma^2), mu ~ N(0, 1), sigma ~ LogNormal(0, 1)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=data)


def estimate_elbo(guide, data, n=400):
    return -Trace_ELBO(num_particles=n, vectorize_particles=True).loss(model, guide, data)


@pytest.mark.parametrize("flow", ["iaf", "maf"])
def test_autoflow_svi_improves_the_elbo(flow):
    data = 1.5 + 0.5 * torch.randn(20)
    guide = AutoFlow(model, flow, transforms=2, hidden_features=(16, 16))
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), elbo)
    svi.step(data)  # builds the flow
    before = estimate_elbo(guide, data)
    for _ in range(60):
        svi.step(data)
    after = estimate_elbo(guide, data)
    assert after > before + 5.0, (before, after)
    assert isinstance(guide.flow, IAF if flow == "iaf" else MAF)
    assert set(guide()) == {"mu", "sigma"}
    params = dict(guide.named_parameters())
    assert params and all(p.grad is not None for p in params.values())


def test_flow_transform_inside_autonormalizingflow():
    data = torch.randn(10)
    guide = AutoNormalizingFlow(
        model, lambda d: FlowTransform(IAF(d, transforms=1, hidden_features=(8, 8)))
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert len(list(guide.parameters())) == len(list(guide.transform.flow.parameters()))


def test_errors():
    with pytest.raises(ValueError, match="flow"):
        AutoFlow(model, "glow")
    with pytest.raises(TypeError, match="flow"):
        AutoFlow(model, 3)
    with pytest.raises(TypeError, match="Flow"):
        FlowTransform(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="first call"):
        _ = AutoFlow(model).flow
