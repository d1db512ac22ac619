"""MaskedAutoregressiveTransform's inverses: the one sweep against the fixed-point passes."""

import pytest
import torch

from arflows import IAF, MAF
from arflows.flows import MaskedAutoregressiveTransform
from arflows.transforms import MonotonicRQSTransform
from tests.helpers import randomize

F64 = torch.float64
ATOL = 1e-10


def twins(factory, **kwargs):
    """The same randomized float64 module built with inverse="sweep" and inverse="passes"."""
    sweep = randomize(factory(inverse="sweep", **kwargs).to(F64), scale=0.3)
    passes = factory(inverse="passes", **kwargs).to(F64)
    passes.load_state_dict(sweep.state_dict())
    return sweep, passes


def test_inverse_option_is_validated():
    with pytest.raises(ValueError, match="`inverse` in \\('sweep', 'passes'\\), got 'newton'"):
        MaskedAutoregressiveTransform(3, inverse="newton")


SPLINE = dict(univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=5, bound=3.0))


@pytest.mark.parametrize("univariate", [{}, SPLINE], ids=["affine", "spline"])
@pytest.mark.parametrize("context", [0, 2])
def test_transform_sweep_equals_passes(context, univariate):
    def factory(**kwargs):
        order = [3, 0, 4, 1, 2]
        return MaskedAutoregressiveTransform(
            5,
            context,
            order=order,
            hidden_features=(12, 12),
            residual=True,
            skip=True,
            **univariate,
            **kwargs,
        )

    sweep, passes = twins(factory)
    c = torch.randn(4, 1, context, dtype=F64) if context else None
    y = 2 * torch.randn(3, 5, dtype=F64)  # inside and outside the splines' interval
    with torch.no_grad():
        t_sweep, t_passes = sweep(c), passes(c)
        x = t_sweep.inv(y)
        assert torch.allclose(x, t_passes.inv(y), atol=ATOL)
        assert torch.allclose(t_sweep(x), y.expand_as(x), atol=ATOL)
    assert t_sweep.passes_used is None  # the sweep makes no fixed-point pass
    assert 1 <= t_passes.passes_used <= 5 + 1
    assert "inverse='sweep'" in repr(sweep)


def test_flows_pass_the_option_through():
    for cls in (MAF, IAF):
        flow = cls(3, transforms=2, hidden_features=(8, 8), inverse="passes")
        assert all("inverse='passes'" in repr(t) for t in flow.transforms)
    assert all(t.inverse == "sweep" for t in MAF(3, transforms=2).transforms)


@pytest.mark.parametrize("context", [0, 3])
def test_maf_rsample_gradients_sweep_equal_passes(context):
    def factory(**kwargs):
        return MAF(4, context, transforms=2, hidden_features=(10, 10), skip=True, **kwargs)

    sweep, passes = twins(factory)
    c = torch.randn(2, context, dtype=F64) if context else None

    def run(flow):
        c_leaf = None if c is None else c.clone().requires_grad_()
        torch.manual_seed(1)
        x, log_p = flow(c_leaf).rsample_and_log_prob((5,))
        loss = (x.sin() * torch.arange(4, dtype=F64)).sum() + log_p.sum()
        leaves = list(flow.parameters()) + ([c_leaf] if c_leaf is not None else [])
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return x, [
            torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves, strict=True)
        ]

    x_sweep, g_sweep = run(sweep)
    x_passes, g_passes = run(passes)
    assert torch.allclose(x_sweep, x_passes, atol=ATOL)
    for a, b in zip(g_sweep, g_passes, strict=True):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-8)


def test_iaf_log_prob_sweep_equals_passes():
    def factory(**kwargs):
        return IAF(5, 2, transforms=3, hidden_features=(16, 16), **kwargs)

    sweep, passes = twins(factory)
    x, c = torch.randn(7, 5, dtype=F64), torch.randn(7, 2, dtype=F64)
    with torch.no_grad():
        assert torch.allclose(sweep(c).log_prob(x), passes(c).log_prob(x), atol=ATOL)
