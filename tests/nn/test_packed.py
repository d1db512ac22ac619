"""A MADE's packed weights: one entry per connection, the same network and training as dense."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arflows.nn import MADE, MaskedLinear, mask
from arflows.nn.blocks import block_plan
from arflows.nn.packed import block_layout, packed_block_linear, unpack
from tests.helpers import randomize
from tests.nn.test_blocks import close, layouts

F64 = torch.float64


def test_one_weight_parameter_with_one_entry_per_connection():
    made = MADE(5, (16, 16), param_dims=(1, 2), skip=True, context=2)
    layers = [*made.layers, made.skip_layer]
    assert made.packed.shape == (sum(int(layer.mask.sum()) for layer in layers),)
    biases = [layer.bias for layer in made.layers]
    assert list(made.parameters()) == [made.packed, *biases, made.context_layer.weight]
    agnostic = MADE(5, (16, 16), orders=3)  # the sets read different entries: all stored
    assert agnostic.packed.numel() == sum(layer.mask.numel() for layer in agnostic.layers)


def test_weights_are_drawn_as_linear_layers_draw_them():
    # The random stream of MADEs whose layers held nn.Linear weights: a seed gives the same
    # network. Hidden and output layers first, then the context layer, then the skip layer.
    torch.manual_seed(7)
    made = MADE(4, (8, 8), param_dims=(1, 1), context=2, skip=True)
    torch.manual_seed(7)
    linears = [torch.nn.Linear(i, o) for i, o in ((4, 8), (8, 8), (8, 8))]
    context = torch.nn.Linear(2, 8 + 8 + 8, bias=False)
    torch.nn.Linear(4, 8, bias=False)  # the skip layer's draws (then zeroed)
    for (weight, bias), linear in zip(made.masked_weights()[:2], linears, strict=False):
        assert torch.equal(weight, linear.weight * mask_of(weight))
        assert torch.equal(bias, linear.bias)
    assert torch.equal(made.context_layer.weight[:16], context.weight[:16])
    last, skip = made.masked_weights()[2:]
    assert not last[0].any() and not last[1].any() and not skip[0].any()  # start at zero


def mask_of(weight):
    return (weight != 0).to(weight.dtype)


def test_state_dict_is_the_dense_layout_and_v010_states_load():
    made = randomize(MADE(4, (12, 12), param_dims=(1, 1), skip=True, context=1))
    state = made.state_dict()
    assert "packed" not in state
    for name in ("layers.0", "layers.1", "layers.2", "skip_layer"):
        weight, m = state[f"{name}.weight"], state[f"{name}.mask"]
        assert weight.shape == m.shape and not weight[~m].any()  # dense, zero where masked
    # A v0.1.0 MADE state: dense weights whose masked entries hold (unused) values.
    old = dict(state)
    for key in [k for k in old if k.endswith(".mask")]:
        weight = key.removesuffix("mask") + "weight"
        old[weight] = old[weight] + 0.7 * torch.randn(old[key].shape) * ~old[key]
    fresh = MADE(4, (12, 12), param_dims=(1, 1), skip=True, context=1)
    fresh.load_state_dict(old)
    x, c = torch.randn(9, 4), torch.randn(9, 1)
    for a, b in zip(fresh(x, c), made(x, c), strict=True):
        assert torch.equal(a, b)
    missing = {k: v for k, v in old.items() if k != "layers.1.bias"}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*layers\.1\.bias"):
        fresh.load_state_dict(missing)


def test_a_state_with_other_connections_resizes_the_same_parameter():
    kwargs = dict(hidden_features=(10, 10), hidden_degrees="random")
    a = MADE(6, **kwargs, generator=torch.Generator().manual_seed(0))
    b = randomize(MADE(6, **kwargs, generator=torch.Generator().manual_seed(3)))
    assert a.packed.shape != b.packed.shape
    held, optimizer = a.packed, torch.optim.Adam(a.parameters())
    a.load_state_dict(b.state_dict())
    assert a.packed is held and a.packed.shape == b.packed.shape
    x = torch.randn(5, 6)
    for p, q in zip(a(x), b(x), strict=True):
        assert torch.equal(p, q)
    a(x)[0].sum().backward()
    optimizer.step()  # the optimizer holds the resized parameter


def test_a_state_of_another_width_is_refused_as_a_size_mismatch_and_changes_nothing():
    narrow, wide = MADE(2, hidden_features=(16, 16)), MADE(2, hidden_features=(32, 32))
    before = wide.packed.detach().clone()
    with pytest.raises(RuntimeError, match=r"size mismatch for layers\.0\.weight"):
        wide.load_state_dict(narrow.state_dict())
    assert torch.equal(wide.packed, before)


@settings(max_examples=150, deadline=None)
@given(layouts(), st.integers(1, 4), st.booleans())
def test_packed_block_product_equals_the_dense_masked_product(layout, n, bias):
    m = mask(layout["in_degrees"], layout["out_degrees"], layout["strict"])
    plan = block_plan(**layout)
    gen = torch.Generator().manual_seed(n)
    packed = torch.randn(int(m.sum()), dtype=F64, generator=gen).requires_grad_()
    b = torch.randn(m.shape[0], dtype=F64, generator=gen).requires_grad_() if bias else None
    x = torch.randn(m.shape[1], n, dtype=F64, generator=gen).requires_grad_()
    weight = torch.zeros(m.shape, dtype=F64).masked_scatter(m, packed)
    expected = weight @ x + (b[:, None] if bias else 0)
    (blocks,) = unpack(packed, block_layout([m], [m], [plan]))
    x_sorted = x if plan.columns is None else plan.columns(x, 0)
    b_sorted = b if b is None or plan.rows is None else plan.rows(b, 0)
    y = packed_block_linear(x_sorted, blocks, b_sorted, plan)
    y = y if plan.rows is None else plan.rows.undo(y, 0)
    assert close(y, expected)
    g = torch.randn_like(expected)
    leaves = [t for t in (packed, b, x) if t is not None]
    grads = torch.autograd.grad((y * g).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * g).sum(), leaves)
    for a, e in zip(grads, expected_grads, strict=True):
        assert close(a, e)


@pytest.mark.parametrize("blocks", [1, 3, 20])
@pytest.mark.parametrize("order", ["ascending", "descending", "random"])
def test_packed_block_product_gradcheck(blocks, order):
    gen = torch.Generator().manual_seed(blocks)
    in_deg, out_deg = torch.randint(1, 5, (7,), generator=gen), torch.randint(0, 5, (9,))
    if order != "random":
        in_deg = in_deg.sort(descending=order == "descending").values
        out_deg = out_deg.sort(descending=order == "descending").values
    m = mask(in_deg, out_deg, strict=True)
    plan = block_plan(in_deg, out_deg, strict=True, blocks=blocks)
    layout = block_layout([m], [m], [plan])
    packed = torch.randn(int(m.sum()), dtype=F64, requires_grad=True)
    b = torch.randn(9, dtype=F64, requires_grad=True)
    x = torch.randn(7, 3, dtype=F64, requires_grad=True)

    def product(packed, b, x):
        x = x if plan.columns is None else plan.columns(x, 0)
        b = b if plan.rows is None else plan.rows(b, 0)
        return packed_block_linear(x, *unpack(packed, layout), b, plan)

    assert torch.autograd.gradcheck(product, (packed, b, x))
    assert torch.autograd.gradgradcheck(product, (packed, b, x))  # create_graph


def _dense_reference(made):
    """The network with MaskedLinear layers (dense storage, as in v0.1.0), same weights."""
    layers = torch.nn.ModuleList(MaskedLinear(layer.mask).double() for layer in made.layers)
    state = made.state_dict()
    for k, layer in enumerate(layers):
        layer.load_state_dict({p: state[f"layers.{k}.{p}"] for p in ("weight", "bias", "mask")})

    def forward(x):
        for layer in layers[:-1]:
            x = torch.relu(layer(x))
        return layers[-1](x).unflatten(-1, (made.features, -1)).unbind(-1)

    return layers, forward


@pytest.mark.parametrize("blocks", [None, 3])
def test_adam_trains_a_packed_made_as_dense_layers(blocks):
    made = randomize(MADE(6, (24, 24), param_dims=(1, 1), order=torch.randperm(6))).double()
    made.blocks = blocks
    layers, reference = _dense_reference(made)
    x = torch.randn(32, 6, dtype=F64)
    nets = ((made, made), (layers, reference))
    opts = [torch.optim.Adam(params.parameters(), lr=1e-2) for params, _ in nets]
    for _ in range(5):
        for (_, net), opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            loc, log_scale = net(x)
            (loc.square() + log_scale.exp()).mean().backward()
            opt.step()
    for a, b in zip(made(x), reference(x), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
