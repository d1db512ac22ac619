"""MADE with several mask sets (orders): selection, connectivity, paths, state, autograd."""

import copy

import pytest
import torch

from arflows import MAF, check_autoregressive
from arflows.nn import MADE, made_sweep
from tests.helpers import randomize

F64 = torch.float64
ATOL = 1e-10


def _made(d=5, orders=4, seed=0, **kwargs):
    kwargs.setdefault("hidden_features", (24, 24))
    made = MADE(d, orders=orders, generator=torch.Generator().manual_seed(seed), **kwargs)
    return randomize(made.double(), scale=0.5)


def test_one_order_is_unchanged():
    made = MADE(4, (8,), order=[2, 0, 3, 1])
    assert made.orders == 1 and made.mask_index == 0
    assert made.all_orders.tolist() == [[2, 0, 3, 1]]
    assert not any("sets" in key for key in made.state_dict())
    made.select(0)
    assert made.cycle() == 0
    with pytest.raises(ValueError, match=r"mask set index in 0\.\.0"):
        made.select(1)
    assert "orders" not in repr(made)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3", True])
def test_bad_orders_are_named(bad):
    with pytest.raises(ValueError, match="orders"):
        MADE(3, (8,), orders=bad)


def test_sets_hold_their_orders_and_degrees():
    made = _made(6, orders=5, hidden_degrees="random", order=[5, 4, 3, 2, 1, 0])
    orders = made.all_orders
    assert orders.shape == (5, 6)
    assert orders[0].tolist() == [5, 4, 3, 2, 1, 0]
    for ranks in orders:
        assert sorted(ranks.tolist()) == list(range(6))
    assert len({tuple(r.tolist()) for r in orders}) > 1
    degrees = []
    for k in range(5):
        made.select(k)
        assert made.mask_index == k
        assert torch.equal(made.order, orders[k])
        degrees.append(made.degrees[0].clone())
    assert any(not torch.equal(degrees[0], deg) for deg in degrees[1:])  # own hidden degrees
    with pytest.raises(ValueError, match=r"0\.\.4"):
        made.select(5)
    assert "orders=5" in repr(made)


def test_cycle_visits_every_set_in_turn():
    made = _made(4, orders=3)
    assert [made.cycle() for _ in range(4)] == [1, 2, 0, 1]


@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("options", [{}, {"residual": True, "skip": True}], ids=["plain", "res"])
def test_every_set_is_autoregressive_in_its_order(context, options):
    made = _made(5, orders=4, context=context, hidden_degrees="random", **options)
    for k in range(4):
        made.select(k)
        ranks = made.all_orders[k]
        # The product of the active masks follows the degree rule of the active order.
        allowed = ranks[None, :] < ranks[:, None]
        reach = made.connectivity()
        assert not (reach & ~allowed).any()
        report = check_autoregressive(made, 5, context, order=ranks.tolist())
        assert report, str(report)


def test_each_set_equals_a_single_order_made_with_the_same_weights():
    made = _made(5, orders=4, context=2, skip=True)  # sequential degrees: shared by all sets
    x, c = torch.randn(9, 5, dtype=F64), torch.randn(9, 2, dtype=F64)
    weights = {k: v for k, v in made.state_dict().items() if k.endswith(("weight", "bias"))}
    outputs = []
    for k in range(4):
        made.select(k)
        plain = MADE(5, (24, 24), context=2, skip=True, order=made.all_orders[k]).double()
        plain.load_state_dict(weights, strict=False)
        for p, q in zip(made(x, c), plain(x, c), strict=True):
            assert torch.allclose(p, q, atol=ATOL)
        outputs.append(made(x, c)[0])
    assert not torch.allclose(outputs[0], outputs[1])  # the sets really differ


def test_block_path_and_sweep_follow_the_active_set():
    made = _made(6, orders=3, context=2, hidden_degrees="random")
    x, c = torch.randn(11, 6, dtype=F64), torch.randn(11, 2, dtype=F64)

    def solve(i, params, y_i):
        return y_i - params[0]

    for k in [0, 2, 1, 0]:
        made.select(k)
        made.blocks = None
        dense = made(x, c)
        made.blocks = 3
        blocked = made(x, c)  # a plan per set: a stale one would break the mask
        for p, q in zip(dense, blocked, strict=True):
            assert torch.allclose(p, q, atol=ATOL)
        made.blocks = None
        y = x + made(x, c)[0]
        assert torch.allclose(made_sweep(made, y, solve, c), x, atol=1e-8)
    assert {key[0] for key in made._plans} == {0, 1, 2}


def test_state_dict_moves_and_copies_keep_the_active_set():
    a = _made(5, orders=3, hidden_degrees="random", seed=0)
    a.select(2)
    b = MADE(5, (24, 24), orders=3, hidden_degrees="random", generator=torch.Generator())
    b = b.double()
    b.load_state_dict(a.state_dict())
    assert b.mask_index == 2
    assert torch.equal(b.all_orders, a.all_orders)
    x = torch.randn(7, 5, dtype=F64)
    assert torch.allclose(a(x)[0], b(x)[0], atol=ATOL)
    b.select(0)
    a.select(0)
    assert torch.allclose(a(x)[0], b(x)[0], atol=ATOL)
    clone = copy.deepcopy(a)
    clone.select(1)
    assert a.mask_index == 0 and clone.mask_index == 1
    f32 = copy.deepcopy(a).float()
    f32.select(1)
    a.select(1)
    assert f32(x.float())[0].dtype == torch.float32
    assert torch.allclose(f32(x.float())[0].double(), a(x)[0], atol=1e-4)


def test_gradients_through_several_sets_in_one_graph():
    # Switching sets between two forward passes must not invalidate the first one's graph.
    made = _made(4, orders=2)
    x = torch.randn(6, 4, dtype=F64)
    losses = []
    for k in (0, 1):
        made.select(k)
        losses.append(made(x)[0].square().sum())
    sum(losses).backward()
    total = [p.grad.clone() for p in made.parameters()]
    expected = [torch.zeros_like(g) for g in total]
    for k in (0, 1):
        made.zero_grad()
        made.select(k)
        made(x)[0].square().sum().backward()
        for e, p in zip(expected, made.parameters(), strict=True):
            e += p.grad
    for g, e in zip(total, expected, strict=True):
        assert torch.allclose(g, e, atol=ATOL)


def test_maf_passes_orders_to_every_made():
    flow = MAF(3, transforms=2, hidden_features=(8,), orders=3)
    mades = [m for m in flow.modules() if isinstance(m, MADE)]
    assert len(mades) == 2 and all(m.orders == 3 for m in mades)
    assert mades[0].all_orders[0].tolist() == [0, 1, 2]
    assert mades[1].all_orders[0].tolist() == [2, 1, 0]
