"""Order-agnostic MAF and mask ensembles: mixture density, cycling, sampling, fitting."""

import math

import pytest
import torch

from arflows import IAF, MAF, check_autoregressive
from arflows.flows import Flow
from arflows.flows.agnostic import (
    MaskEnsemble,
    MaskMixture,
    OrderAgnosticMAF,
    mask_orders,
    select_masks,
)
from arflows.nn import MADE
from tests.helpers import jacobian, randomize

F64 = torch.float64


def _flow(features=3, context=2, orders=4, scale=0.4, seed=0, **kwargs):
    flow = OrderAgnosticMAF(
        features,
        context,
        transforms=2,
        hidden_features=(16, 16),
        orders=orders,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return randomize(flow.double(), scale=scale, seed=seed)


def _component_log_probs(flow, c, x):
    parts = []
    for k in range(mask_orders(flow)):
        select_masks(flow, k)
        parts.append(Flow.forward(flow, c).log_prob(x))
    return torch.stack(parts)


def test_ensemble_is_the_average_in_probability_space():
    flow = _flow(hidden_degrees="random").eval()
    c, x = torch.randn(6, 2, dtype=F64), torch.randn(6, 3, dtype=F64)
    with torch.no_grad():
        mixture = flow(c).log_prob(x)
        parts = _component_log_probs(flow, c, x)
    assert torch.allclose(mixture, parts.exp().mean(0).log(), atol=1e-10)
    assert (parts.std(0) > 1e-3).all()  # the orders give different densities


def test_evaluation_restores_the_selection_and_ignores_later_switches():
    flow = _flow().eval()
    c, x = torch.randn(4, 2, dtype=F64), torch.randn(4, 3, dtype=F64)
    select_masks(flow, 2)
    dist = flow(c)
    expected = dist.log_prob(x)
    assert all(m.mask_index == 2 for m in flow.modules() if isinstance(m, MADE))
    select_masks(flow, 1)
    assert torch.allclose(dist.log_prob(x), expected, atol=1e-12)


def test_training_cycles_one_set_per_call():
    flow = _flow(orders=3).train()
    mades = [m for m in flow.modules() if isinstance(m, MADE)]
    c, x = torch.randn(4, 2, dtype=F64), torch.randn(4, 3, dtype=F64)
    seen, held = [], []
    for _ in range(4):
        dist = flow(c)
        seen.append([m.mask_index for m in mades])
        held.append((dist, dist.log_prob(x)))
    assert seen == [[0, 0], [1, 1], [2, 2], [0, 0]]
    assert flow.steps == 4
    parts = _component_log_probs(flow, c, x)
    for i, (dist, log_p) in enumerate(held):
        assert dist.indices == [i % 3]
        assert torch.allclose(log_p, parts[i % 3], atol=1e-10)
        assert torch.allclose(dist.log_prob(x), log_p, atol=1e-12)  # still its own set


def test_training_distribution_round_trips_through_one_set():
    flow = _flow(orders=3).train()
    c = torch.randn(5, 2, dtype=F64)
    dist = flow(c)
    x, log_p = dist.rsample_and_log_prob((7,))
    flow(c)  # another call selects the next set; `dist` must not change
    assert torch.allclose(dist.log_prob(x), log_p, atol=1e-8)


@pytest.mark.parametrize("features", [1, 2])
def test_ensemble_integrates_to_one(features):
    flow = _flow(features, context=1, orders=4, scale=0.3, hidden_degrees="random").eval()
    c = torch.tensor([0.4], dtype=F64)
    n = 20001 if features == 1 else 401
    axis = torch.linspace(-9, 9, n, dtype=F64)
    grid = axis[:, None] if features == 1 else torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = flow(c).log_prob(grid).exp()
    if features == 2:
        density = torch.trapezoid(density.view(n, n), axis)
    assert abs(torch.trapezoid(density, axis).item() - 1) < 2e-3


@pytest.mark.parametrize("context", [0, 2])
def test_every_order_is_autoregressive(context):
    flow = _flow(features=4, context=context, orders=3, hidden_degrees="random", skip=True)
    c = torch.randn(context, dtype=F64) if context else None
    for layer in flow.transforms:
        made = layer.made
        for k in range(3):
            made.select(k)
            ranks = made.all_orders[k]
            report = check_autoregressive(made, 4, context, order=ranks.tolist())
            assert report, str(report)
            x = torch.randn(4, dtype=F64)
            jac = jacobian(layer(c), x)
            later = ranks[None, :] > ranks[:, None]
            assert (jac[later] == 0).all() and (jac.diagonal() > 0).all()
            assert (jac[~later] != 0).any()


def test_mixture_samples_pick_a_component_per_sample():
    # Two orders of one 2-D flow with different laws: the mixture's samples must split evenly
    # between the components, row by row of a context batch. tanh keeps the means tame.
    flow = _flow(features=2, context=1, orders=2, seed=1).eval()
    c = torch.tensor([[-1.0], [1.0]], dtype=F64)
    n = 20000
    with torch.no_grad():
        x = flow(c).sample((n,))
        means = []
        for k in range(2):
            select_masks(flow, k)
            means.append(Flow.forward(flow, c).sample((n,)).tanh().mean(0))
    assert x.shape == (n, 2, 2)
    assert ((means[0] - means[1]).abs() > 0.5).any()  # the components differ
    assert torch.allclose(x.tanh().mean(0), (means[0] + means[1]) / 2, atol=0.03)


def test_unconditional_samples_and_gradients():
    flow = _flow(context=0, orders=3).eval()
    x, log_p = flow().rsample_and_log_prob((50,))
    assert x.shape == (50, 3) and log_p.shape == (50,)
    assert torch.allclose(log_p, flow().log_prob(x), atol=1e-8)
    x.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_mask_ensemble_wraps_any_flow_with_orders():
    iaf = randomize(IAF(3, transforms=2, hidden_features=(16,), orders=3).double())
    ensemble = MaskEnsemble(iaf)
    assert ensemble.orders == 3
    assert [ensemble().indices for _ in range(4)] == [[0], [1], [2], [0]]
    ensemble.eval()
    x = torch.randn(5, 3, dtype=F64)
    with torch.no_grad():
        parts = _component_log_probs(iaf, None, x)
        assert torch.allclose(ensemble().log_prob(x), parts.exp().mean(0).log(), atol=1e-10)
    with pytest.raises(ValueError, match="MADE conditioners"):
        MaskEnsemble(Flow([], iaf.base))
    mixed = MAF(3, transforms=1, hidden_features=(8,))
    mixed.transforms.append(MAF(3, transforms=1, hidden_features=(8,), orders=2).transforms[0])
    with pytest.raises(ValueError, match=r"same number of orders, got \[1, 2\]"):
        MaskEnsemble(mixed)
    with pytest.raises(ValueError, match="orders"):
        OrderAgnosticMAF(3, orders=0)


def test_state_dict_round_trip_keeps_the_ensemble():
    a = _flow(hidden_degrees="random", seed=0).eval()
    b = _flow(hidden_degrees="random", seed=5).eval()
    c, x = torch.randn(3, 2, dtype=F64), torch.randn(3, 3, dtype=F64)
    assert not torch.allclose(a(c).log_prob(x), b(c).log_prob(x))
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a(c).log_prob(x), b(c).log_prob(x), atol=1e-12)
    assert a.config["arguments"]["orders"] == 4


def test_fit_with_four_orders_then_evaluate_the_ensemble():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(512, 2, generator=gen)
    data = torch.stack([z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1] ** 2], dim=-1)
    flow = OrderAgnosticMAF(2, transforms=2, hidden_features=(32, 32), orders=4, generator=gen)
    flow.eval()
    with torch.no_grad():
        before = flow().log_prob(data).mean().item()
    flow.train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(80):
        batch = data[torch.randint(0, 512, (128,), generator=gen)]
        loss = -flow().log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert flow.steps == 80
    flow.eval()
    with torch.no_grad():
        ensemble = flow().log_prob(data)
        parts = _component_log_probs(flow, None, data)
    assert torch.isfinite(ensemble).all()
    assert ensemble.mean().item() > before + 0.3
    # Every order was trained: each one alone is also far better than the start.
    assert (parts.mean(1) > before + 0.2).all()
    assert isinstance(flow(), MaskMixture) and math.isfinite(flow().sample((3,)).sum().item())


def test_mixture_of_batched_components_without_a_context():
    # A batch not laid out by a context takes the draw-from-every-component path.
    made = MADE(2, (8,), orders=2)

    def build(c):
        loc = torch.full((3, 2), 10.0 * made.mask_index, dtype=F64)
        return torch.distributions.Independent(torch.distributions.Normal(loc, 0.1), 1)

    mixture = MaskMixture(build, None, [made], [0, 1])
    x = mixture.sample((4000,))
    assert x.shape == (4000, 3, 2) and mixture.batch_shape == (3,)
    near = (x[..., 0] > 5).double()
    assert torch.equal(near, (x[..., 1] > 5).double())  # one component per sample
    assert torch.allclose(near.mean(0), torch.full((3,), 0.5, dtype=F64), atol=0.05)
    log_p = mixture.log_prob(torch.zeros(3, 2, dtype=F64))
    assert torch.allclose(log_p, build(None).log_prob(torch.zeros(3, 2)) - math.log(2))
    with pytest.raises(ValueError, match="at least one mask set"):
        MaskMixture(build, None, [made], [])
