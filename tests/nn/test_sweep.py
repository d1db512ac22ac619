"""The one-sweep MADE inverse against the naive D-pass inverse: values, gradients, chunking."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from arflows.nn import MADE, made_sweep
from tests.helpers import randomize

F64 = torch.float64
# Tolerances: the sweep sums the same products in another order, so it agrees with the
# naive inverse up to rounding (amplified a little along the autoregressive chain).
ATOL = {torch.float32: 1e-5, F64: 1e-10}
GRAD_ATOL = 1e-9
# Chunks change only the matrix shapes BLAS sees, and BLAS may pick another kernel (another
# summation order) for another shape: bit-identity across shapes is not promised (AVX-512
# machines differ by a few ulp). Allow 256 ulp relative to 1 + |x|.
CHUNK_TOL = {dtype: 256 * torch.finfo(dtype).eps for dtype in (torch.float32, F64)}


def scalar_inverse(theta, y):
    """x = h^{-1}(y; theta) for y = x exp(s) + t, with t and s bounded functions of theta.

    theta has shape (*, P) and y shape (*); every parameter entry matters.
    """
    shift = 2 * torch.tanh(theta[..., 0] / 2)
    log_scale = torch.tanh(theta.sum(-1))
    return (y - shift) * torch.exp(-log_scale)


def scalar_forward(theta, x):
    shift = 2 * torch.tanh(theta[..., 0] / 2)
    return x * torch.exp(torch.tanh(theta.sum(-1))) + shift


def solve(i, params, y_i):
    theta = torch.cat([p.reshape(*y_i.shape, -1) for p in params], -1)  # (N, P)
    return scalar_inverse(theta, y_i)


def all_params(made, x, c=None):
    """The MADE's outputs as one (*, D, P) tensor."""
    return torch.cat([p.reshape(*p.shape[: x.dim()], -1) for p in made(x, c)], -1)


def naive_inverse(made, y, c=None):
    """D full network passes of the fixed-point iteration: exact, and the reference."""
    x = torch.zeros(torch.broadcast_shapes(y.shape, _batch(c) + y.shape[-1:]), dtype=y.dtype)
    for _ in range(made.features):
        x = scalar_inverse(all_params(made, x, c), y)
    return x


def _batch(c):
    return c.shape[:-1] if c is not None else torch.Size()


def forward(made, x, c=None):
    return scalar_forward(all_params(made, x, c), x)


@st.composite
def configs(draw, max_features=64):
    features = draw(st.one_of(st.integers(1, 8), st.integers(9, max_features)))
    depth = draw(st.integers(1, 3))
    residual = draw(st.booleans())
    # Widths below and above D: narrow layers leave some degrees without units.
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
        context=draw(st.sampled_from([0, 0, 1, 3])),
        order=draw(st.permutations(range(features))),
        hidden_degrees=draw(st.sampled_from(["sequential", "random"])),
        residual=residual,
        skip=draw(st.booleans()),
        activation=draw(st.sampled_from([torch.nn.ReLU, torch.nn.Tanh])),
        seed=draw(st.integers(0, 2**16)),
    )


def build(config, dtype=F64, scale=None):
    config = dict(config)
    seed = config.pop("seed")
    # float32 rounding is amplified along the chain by the network's gain: keep it moderate.
    scale = scale or (0.3 if dtype == F64 else 0.1)
    torch.manual_seed(seed)  # nn.Linear's initialisation: the same network on a replay
    try:
        made = MADE(**config, generator=torch.Generator().manual_seed(seed))
    except ValueError as error:  # too narrow for some output to see anything
        assert "too narrow" in str(error)
        assume(False)
    return randomize(made.to(dtype), scale=scale, seed=seed)


def inputs(made, batch, c_batch, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(*batch, made.features, dtype=dtype, generator=gen)
    c = None
    if made.context:
        c = torch.randn(*c_batch, made.context, dtype=dtype, generator=gen)
    return y, c


GROUPS = st.sampled_from([None, 1, 2, 3, 100])  # degrees per group; None: about sqrt(D)
BATCHES = st.sampled_from(
    [((), ()), ((5,), (5,)), ((2, 3), (3,)), ((4, 1), (2, 1, 3)), ((1,), ())]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), BATCHES, st.sampled_from([torch.float32, F64]), GROUPS)
def test_sweep_equals_naive_inverse(config, batches, dtype, group):
    made = build(config, dtype)
    y, c = inputs(made, *batches, dtype, config["seed"])
    with torch.no_grad():
        x = made_sweep(made, y, solve, c, group=group)
        expected = naive_inverse(made, y, c)
        assert x.shape == expected.shape
        scale = 1 + expected.abs()
        assert ((x - expected).abs() / scale).max() <= ATOL[dtype]
        # And it is an inverse: t(t.inv(y)) == y.
        y_back = forward(made, x, c)
        assert ((y_back - y).abs() / (1 + y.abs())).max() <= ATOL[dtype]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(max_features=12), BATCHES, GROUPS)
def test_sweep_gradients_equal_naive_gradients(config, batches, group):
    made = build(config, F64)
    y, c = inputs(made, *batches, F64, config["seed"])
    y.requires_grad_()
    if c is not None:
        c.requires_grad_()
    leaves = [y, *([c] if c is not None else []), *made.parameters()]

    def grads(x):
        weights = torch.linspace(-1, 1, x.numel(), dtype=F64).view(x.shape)
        out = torch.autograd.grad((weights * x + x**2).sum(), leaves, allow_unused=True)
        # Units of degree >= D feed no output: the sweep never touches them (None), the naive
        # passes give them zero gradients.
        return [torch.zeros_like(v) if g is None else g for g, v in zip(out, leaves, strict=True)]

    swept = grads(made_sweep(made, y, solve, c, group=group))
    expected = grads(naive_inverse(made, y, c))
    for g, e in zip(swept, expected, strict=True):
        assert torch.allclose(g, e, atol=GRAD_ATOL, rtol=1e-8)


def test_gradcheck_and_gradgradcheck():
    made = build(
        dict(
            features=3,
            hidden_features=(6, 6),
            param_dims=(1, 2),
            context=2,
            order=[1, 2, 0],
            hidden_degrees="sequential",
            residual=True,
            skip=True,
            activation=torch.nn.Tanh,
            seed=0,
        )
    )
    y = torch.randn(2, 3, dtype=F64, requires_grad=True)
    c = torch.randn(2, 2, dtype=F64, requires_grad=True)

    def f(y, c):
        return made_sweep(made, y, solve, c, chunk_size=1, group=2)

    # Against finite differences, first and second order (the backward is differentiable).
    assert torch.autograd.gradcheck(f, (y, c))
    assert torch.autograd.gradgradcheck(f, (y, c))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("context", [0, 3])
def test_chunking_agrees_with_the_whole_batch(dtype, context):
    made = build(
        dict(
            features=9,
            hidden_features=(40, 40),
            param_dims=(1, 1),
            context=context,
            order=list(range(8, -1, -1)),
            hidden_degrees="random",
            residual=True,
            skip=True,
            activation=torch.nn.ReLU,
            seed=3,
        ),
        dtype,
    )
    y, c = inputs(made, (6, 5), (5,), dtype, seed=1)
    tol = CHUNK_TOL[dtype]
    with torch.no_grad():
        whole = made_sweep(made, y, solve, c)
        # 30 rows: one-row chunks (BLAS's matrix-vector path), equal chunks, a ragged last one.
        for chunk_size in (1, 2, 4, 7, 29):
            chunked = made_sweep(made, y, solve, c, chunk_size=chunk_size)
            torch.testing.assert_close(chunked, whole, rtol=tol, atol=tol)
        # A chunk as large as the batch is the very same computation: the same bits.
        assert torch.equal(made_sweep(made, y, solve, c, chunk_size=30), whole)
    # With gradients too: the recorded path gives the no-grad values to the bit (same shapes,
    # same products), chunks agree to rounding, values and gradients.
    y.requires_grad_()
    x = made_sweep(made, y, solve, c)
    (g_whole,) = torch.autograd.grad(x.square().sum(), y)
    x_chunked = made_sweep(made, y, solve, c, chunk_size=4)
    (g_chunked,) = torch.autograd.grad(x_chunked.square().sum(), y)
    assert torch.equal(x, whole)
    torch.testing.assert_close(x_chunked, whole, rtol=tol, atol=tol)
    torch.testing.assert_close(g_chunked, g_whole, rtol=tol, atol=tol)


@pytest.mark.parametrize("context, batches", [(0, ((), ())), (0, ((4,), ())), (2, ((1,), ())),
                                              (2, ((3,), (1,))), (2, ((6,), (6,)))])
def test_the_sweep_writes_no_parameter_and_no_context(context, batches):
    # Its accumulators start from the biases and context terms; shared ones (a bias, one
    # context for every row) must be copied before they are filled in place.
    made = randomize(MADE(4, hidden_features=(12, 12), context=context), seed=1)
    before = {k: v.clone() for k, v in made.state_dict().items()}
    y, c = inputs(made, *batches, torch.float32, 0)
    c_before = None if c is None else c.clone()
    with torch.no_grad():
        first = made_sweep(made, y, solve, c)
        again = made_sweep(made, y, solve, c)
    assert all(torch.equal(v, before[k]) for k, v in made.state_dict().items())
    assert c is None or torch.equal(c, c_before)
    assert torch.equal(first, again)


def test_identity_at_initialisation_and_empty_batch():
    made = MADE(5, hidden_features=(16, 16), context=2)  # zero last layer: zero parameters
    y, c = torch.randn(7, 5), torch.randn(7, 2)
    assert torch.equal(made_sweep(made, y, solve, c), scalar_inverse(torch.zeros(7, 5, 2), y))
    empty = made_sweep(made, torch.randn(0, 5), solve, torch.randn(0, 2))
    assert empty.shape == (0, 5)


def test_solve_sees_features_in_order_with_their_layout():
    order = [2, 0, 3, 1]
    made = randomize(MADE(4, hidden_features=(8,), param_dims=(1, 3), order=order))
    seen = []

    def record(i, params, y_i):
        seen.append(i)
        assert params[0].shape == (6,) and params[1].shape == (6, 3) and y_i.shape == (6,)
        return y_i

    made_sweep(made, torch.randn(2, 3, 4), record)
    assert seen == sorted(range(4), key=order.__getitem__)  # feature 1 first, then 3, 0, 2


def test_errors():
    made = MADE(3, hidden_features=(8,), context=2)
    with pytest.raises(ValueError, match=r"shape \(\*, 3\)"):
        made_sweep(made, torch.randn(4, 2), solve, torch.randn(4, 2))
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        made_sweep(made, torch.randn(4, 3), solve, torch.randn(4, 2), chunk_size=0)
    with pytest.raises(ValueError, match="group >= 1"):
        made_sweep(made, torch.randn(4, 3), solve, torch.randn(4, 2), group=0)
    with pytest.raises(ValueError, match="context of size 2"):
        made_sweep(made, torch.randn(4, 3), solve)
    with pytest.raises(ValueError, match="no context"):
        made_sweep(MADE(3, hidden_features=(8,)), torch.randn(4, 3), solve, torch.randn(4, 2))
