"""Block-triangular masked products against dense masked products; MADE's two paths."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import arflows.nn.blocks as blocks_module
from arflows.nn import MADE, mask
from arflows.nn.blocks import auto_blocks, block_linear, block_plan
from tests.helpers import randomize

F64 = torch.float64
# Tolerances: the blocks sum the same products as the dense path in another order.
RTOL = {torch.float32: 1e-5, F64: 1e-12}


def close(a, b, dtype=F64):
    """Relative agreement, scaled by the larger magnitude of the reference."""
    if b.numel() == 0:  # a layer whose mask keeps nothing has an empty (packed) weight
        return a.shape == b.shape
    return (a - b).abs().max() <= RTOL[dtype] * (1 + b.abs().max())


@st.composite
def layouts(draw):
    """A masked layer's degrees: random, sorted ascending or descending, rows and columns."""
    features = draw(st.integers(1, 8))
    n_in, n_out = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    in_deg = torch.tensor(draw(st.lists(st.integers(0, features), min_size=n_in, max_size=n_in)))
    out_deg = torch.tensor(
        draw(st.lists(st.integers(0, features), min_size=n_out, max_size=n_out))
    )
    for name in ("in", "out"):
        how = draw(st.sampled_from(["random", "ascending", "descending"]))
        deg = in_deg if name == "in" else out_deg
        if how != "random":
            deg = deg.sort(descending=how == "descending").values
        in_deg, out_deg = (deg, out_deg) if name == "in" else (in_deg, deg)
    return dict(
        in_degrees=in_deg,
        out_degrees=out_deg,
        strict=draw(st.booleans()),
        blocks=draw(st.integers(1, features + 3)),  # up to more than the degrees
    )


def dense_and_blocks(layout, n, bias=True, seed=0):
    """The layer's dense masked product and its block product, back in the layer's order."""
    gen = torch.Generator().manual_seed(seed)
    m = mask(layout["in_degrees"], layout["out_degrees"], layout["strict"]).to(F64)
    o, i = m.shape
    w = torch.randn(o, i, dtype=F64, generator=gen).requires_grad_()
    b = torch.randn(o, dtype=F64, generator=gen).requires_grad_() if bias else None
    x = torch.randn(i, n, dtype=F64, generator=gen).requires_grad_()
    plan = block_plan(**layout)

    def blocks(w, b, x):
        x_sorted = x if plan.columns is None else plan.columns(x, 0)
        y = block_linear(x_sorted, w * m, b, plan)  # (O, N), rows in the plan's order
        return y if plan.rows is None else plan.rows.undo(y, 0)

    def dense(w, b, x):
        y = (w * m) @ x
        return y if b is None else y + b[:, None]

    return plan, (w, b, x), dense, blocks


@settings(max_examples=200, deadline=None)
@given(layouts(), st.integers(1, 4), st.booleans())
def test_block_linear_equals_dense(layout, n, bias):
    plan, inputs, dense, blocks = dense_and_blocks(layout, n, bias)
    leaves = [t for t in inputs if t is not None]
    y, expected = blocks(*inputs), dense(*inputs)
    assert close(y, expected)
    g = torch.randn_like(expected)
    grads = torch.autograd.grad((y * g).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * g).sum(), leaves)
    for a, b in zip(grads, expected_grads, strict=True):
        assert close(a, b)


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_block_plan_covers_every_read(layout):
    plan = block_plan(**layout)
    in_deg, out_deg = layout["in_degrees"], layout["out_degrees"]
    if plan.rows is not None:
        out_deg = out_deg[plan.rows.index]
    if plan.columns is not None:
        in_deg = in_deg[plan.columns.index]
    reads = mask(in_deg, out_deg, layout["strict"])
    bounds = plan.bounds
    assert bounds[0] == 0 and bounds[-1] == len(out_deg)
    assert all(a < b for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    assert len(plan.ranges) <= layout["blocks"]
    for r0, r1, (lo, hi) in zip(bounds[:-1], bounds[1:], plan.ranges, strict=True):
        inside = torch.zeros(len(in_deg), dtype=torch.bool)
        inside[lo:hi] = True
        assert not (reads[r0:r1] & ~inside).any(), "a block misses a column it reads"


@pytest.mark.parametrize("blocks", [2, 3, 20])
@pytest.mark.parametrize("order", ["ascending", "descending", "random"])
def test_block_linear_gradcheck(blocks, order):
    gen = torch.Generator().manual_seed(blocks)
    in_deg = torch.randint(1, 5, (7,), generator=gen)
    out_deg = torch.randint(0, 5, (9,), generator=gen)
    if order != "random":
        in_deg = in_deg.sort(descending=order == "descending").values
        out_deg = out_deg.sort(descending=order == "descending").values
    layout = dict(in_degrees=in_deg, out_degrees=out_deg, strict=True, blocks=blocks)
    _, inputs, _, blocks_fn = dense_and_blocks(layout, n=3)
    assert torch.autograd.gradcheck(blocks_fn, inputs)
    assert torch.autograd.gradgradcheck(blocks_fn, inputs)  # create_graph: dense products


@st.composite
def made_configs(draw):
    features = draw(st.integers(1, 10))
    depth = draw(st.integers(1, 3))
    residual = draw(st.booleans())
    widths = [
        max(1, int(features * draw(st.sampled_from([0.5, 1, 2.5])))) + draw(st.integers(0, 3))
        for _ in range(depth)
    ]
    if residual:
        widths = [widths[0]] * depth
    return dict(
        features=features,
        hidden_features=tuple(widths),
        param_dims=draw(st.sampled_from([(1,), (1, 1), (2, 1, 3)])),
        context=draw(st.sampled_from([0, 1, 3])),
        order=draw(
            st.one_of(
                st.just(list(range(features))),
                st.just(list(range(features))[::-1]),
                st.permutations(range(features)),
            )
        ),
        hidden_degrees=draw(st.sampled_from(["sequential", "random"])),
        residual=residual,
        skip=draw(st.booleans()),
        activation=draw(st.sampled_from([torch.nn.ReLU, torch.nn.Tanh, torch.nn.ELU])),
        seed=draw(st.integers(0, 2**16)),
    )


def build(config, dtype=F64):
    config = dict(config)
    seed = config.pop("seed")
    torch.manual_seed(seed)
    try:
        made = MADE(**config, generator=torch.Generator().manual_seed(seed))
    except ValueError as error:  # too narrow for some output to see anything
        assert "too narrow" in str(error)
        assume(False)
    return randomize(made.to(dtype), scale=0.5, seed=seed)


def outputs_and_grads(made, x, c, blocks):
    made.blocks = blocks
    leaves = [x, *([c] if c is not None else []), *made.parameters()]
    params = made(x, c)
    gen = torch.Generator().manual_seed(1)
    loss = sum((p * torch.randn(p.shape, dtype=p.dtype, generator=gen)).sum() for p in params)
    return params, torch.autograd.grad(loss, leaves)


BATCHES = st.sampled_from([((), ()), ((5,), (5,)), ((2, 3), (3,)), ((4, 1), (2, 1, 3))])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(made_configs(), BATCHES, st.sampled_from([1, 2, 3, 50]))
def test_made_block_path_equals_dense_path(config, batches, blocks):
    made = build(config)
    gen = torch.Generator().manual_seed(config["seed"])
    x = torch.randn(*batches[0], made.features, dtype=F64, generator=gen).requires_grad_()
    c = None
    if made.context:
        c = torch.randn(*batches[1], made.context, dtype=F64, generator=gen).requires_grad_()
    expected, expected_grads = outputs_and_grads(made, x, c, blocks=None)
    params, grads = outputs_and_grads(made, x, c, blocks=blocks)
    for a, b in zip(params, expected, strict=True):
        assert a.shape == b.shape
        assert close(a, b)
    for a, b in zip(grads, expected_grads, strict=True):
        assert close(a, b)


def test_made_block_path_float32():
    made = MADE(20, (64, 64), param_dims=(1, 2), context=3, skip=True, order=torch.randperm(20))
    made = randomize(made, scale=0.1)
    x, c = torch.randn(300, 20), torch.randn(300, 3)
    made.blocks = None
    expected = made(x, c)
    made.blocks = 4
    for a, b in zip(made(x, c), expected, strict=True):
        assert close(a, b, torch.float32)


def test_made_block_path_without_grad_and_double_backward():
    made = randomize(MADE(6, (24, 24), residual=True, context=2).double())
    x = torch.randn(5, 6, dtype=F64, requires_grad=True)
    c = torch.randn(5, 2, dtype=F64)
    made.blocks = 3
    with torch.no_grad():
        no_grad = made(x, c)
    assert all(torch.equal(a, b) for a, b in zip(no_grad, made(x, c), strict=True))

    def first_grad(blocks):
        made.blocks = blocks
        (g,) = torch.autograd.grad(made(x, c)[0].square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), x)[0]

    assert close(first_grad(3), first_grad(None))


def spy_blocks(monkeypatch):
    """Records the block plan of every block product, dense-weight or packed."""
    calls = []
    for name in ("block_linear", "packed_block_linear"):
        real = getattr(blocks_module, name)

        def spy(*args, real=real):
            calls.append(args[3])
            return real(*args)

        monkeypatch.setattr(blocks_module, name, spy)
    return calls


@pytest.mark.parametrize(
    "rows, hidden, grad, blocked",
    [
        (100, 512, False, False),  # few rows
        (10_000, 64, False, False),  # narrow
        (4096, 512, False, True),
        (512, 512, True, True),  # training at width 512 (packed weights)
        (512, 256, True, False),  # training at width 256: blocking does not pay
    ],
)
def test_auto_choice(monkeypatch, rows, hidden, grad, blocked):
    made = MADE(16, (hidden, hidden))
    calls = spy_blocks(monkeypatch)
    with torch.set_grad_enabled(grad):
        made(torch.randn(rows, 16))
    assert bool(calls) == blocked
    made.blocks = None  # forced dense
    calls.clear()
    made(torch.randn(3, 16))
    assert not calls
    made.blocks = 2  # forced blocks
    made(torch.randn(3, 16))
    assert calls


def test_auto_blocks_grows_with_size():
    assert auto_blocks(100, 512, 512) == 1
    assert auto_blocks(10_000, 512, 512) == 4
    assert auto_blocks(10_000, 1024, 1024) == 8
    assert auto_blocks(512, 1024, 1024) == 8
    assert auto_blocks(512, 512, 512) == 4
    assert auto_blocks(512, 256, 256) == 1


def test_block_options_validated():
    made = MADE(3, (8,))
    for bad in (0, -1, "4", 2.0, True):
        made.blocks = bad
        with pytest.raises(ValueError, match="blocks"):
            made(torch.randn(2, 3))
    with pytest.raises(ValueError, match="blocks >= 1"):
        block_plan(torch.arange(3), torch.arange(3), blocks=0)


def test_state_dict_unchanged_and_plans_follow_loads():
    # Random degrees differ between seeds: loading another MADE's state must update both
    # paths, the float masks and the block plans included.
    kwargs = dict(hidden_features=(20, 20), hidden_degrees="random", context=2, skip=True)
    a = MADE(6, **kwargs, generator=torch.Generator().manual_seed(0))
    b = randomize(MADE(6, **kwargs, generator=torch.Generator().manual_seed(1)))
    keys = {"input_degrees", "degrees_0", "degrees_1", "context_layer.weight"}
    keys |= {f"layers.{k}.{p}" for k in range(3) for p in ("weight", "bias", "mask")}
    keys |= {"skip_layer.weight", "skip_layer.mask"}
    assert set(a.state_dict()) == keys
    x, c = torch.randn(7, 6), torch.randn(7, 2)
    a.blocks = 3
    a(x, c)  # builds and caches plans for a's degrees
    a.load_state_dict(b.state_dict())
    for blocks in (None, 3):
        a.blocks = b.blocks = blocks
        for p, q in zip(a(x, c), b(x, c), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
    clone = copy.deepcopy(a)
    assert all(torch.equal(p, q) for p, q in zip(clone(x, c), a(x, c), strict=True))
