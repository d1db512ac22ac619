"""Flows by name (build, flow_options), chunked scoring (log_prob), a flow's declared sizes."""

import pytest
import torch

from arflows.flows import (
    MAF,
    NSF,
    Flow,
    MADEMoGFlow,
    RealNVP,
    StandardNormal,
    build,
    flow_classes,
    flow_options,
    log_prob,
)

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(flow_classes()))
def test_every_family_declares_its_sizes(name):
    flow = build(name, 3, 2)
    assert (flow.features, flow.context) == (3, 2)
    assert flow.columns is None and flow.context_columns is None and flow.metadata == {}
    assert flow(torch.randn(4, 2)).log_prob(torch.randn(4, 3)).shape == (4,)


def test_a_flow_built_from_parts_takes_its_size_from_the_base():
    flow = Flow([], StandardNormal(4))
    assert (flow.features, flow.context) == (4, 0)
    assert Flow([], StandardNormal(4), features=4, context=2).context == 2


def test_nsf_coupling_declares_its_sizes():
    flow = NSF(3, 1, transforms=1, coupling=True)
    assert (flow.features, flow.context) == (3, 1)


def test_build_is_case_insensitive_and_passes_options():
    flow = build("NSF", 5, transforms=3, bins=4)
    assert isinstance(flow, NSF) and flow.features == 5
    assert flow.config["arguments"]["bins"] == 4
    # Options a family passes on to its layers reach them.
    assert build("maf", 2, transforms=1, residual=True).config["arguments"]["residual"]


def test_build_names_unknown_families_and_options():
    with pytest.raises(ValueError, match=r"unknown flow 'nope'; available: .*maf.*nsf"):
        build("nope", 3)
    with pytest.raises(ValueError, match=r"nsf takes no 'foo' option; it takes: transforms"):
        build("nsf", 3, foo=1)
    with pytest.raises(ValueError, match="maf takes no 'bins' option"):
        build("maf", 3, bins=4)
    with pytest.raises(TypeError, match="flow name"):
        build(MAF, 3)


def test_flow_options_follow_kwargs_up_to_flow():
    assert "bins" in flow_options("nsf") and "randperm" in flow_options("nsf")  # MAF's
    assert "bins" not in flow_options(MAF)
    assert "univariate" in flow_options(RealNVP)
    # Flow's own arguments are modules, not options: MADEMoGFlow has no layer count.
    assert "transforms" not in flow_options(MADEMoGFlow)
    assert "features" not in flow_options("maf")


def test_log_prob_in_chunks_is_the_flows():
    flow = MAF(3, context=2, transforms=2, hidden_features=(8,)).to(F64).eval()
    x, c = torch.randn(11, 3, dtype=F64), torch.randn(11, 2, dtype=F64)
    expected = flow(c).log_prob(x)
    got = log_prob(flow, x, c, chunk=4)
    assert torch.allclose(got, expected) and not got.requires_grad
    # Integer and float32 rows are converted to the flow's dtype.
    assert log_prob(flow, x.float(), c.float()).dtype == F64
    assert log_prob(flow, x[:0], c[:0]).shape == (0,)
    halves = log_prob(flow, x, c, score=lambda dist, xb: dist.log_prob(xb) / 2)
    assert torch.allclose(halves, expected / 2)
    with pytest.raises(ValueError, match="chunk >= 1"):
        log_prob(flow, x, c, chunk=0)
