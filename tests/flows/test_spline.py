"""NSF is a Flow that picks autoregressive or coupling layers; it is not a MAF without a MADE."""

import pytest
import torch

from arflows import IAF, MAF, NSF
from arflows.flows import (
    MaskedAutoregressiveTransform,
    MaskedCouplingTransform,
    autoregressive_layers,
    flow_options,
)
from arflows.transforms import MonotonicRQSTransform

SPLINE = dict(univariate=MonotonicRQSTransform, univariate_kwargs=dict(bins=4, bound=3.0))


def test_nsf_is_no_maf_whichever_layers_it_has():
    for coupling in (False, True):
        flow = NSF(3, transforms=2, bins=4, coupling=coupling, hidden_features=(8,))
        assert not isinstance(flow, MAF)
    assert isinstance(IAF(3, transforms=1), MAF)


@pytest.mark.parametrize("coupling", [False, True])
def test_nsf_layers_are_the_kind_asked_for(coupling):
    flow = NSF(3, transforms=3, bins=4, bound=3.0, coupling=coupling, hidden_features=(8,))
    kind = MaskedCouplingTransform if coupling else MaskedAutoregressiveTransform
    assert [type(t) for t in flow.transforms] == [kind] * 3
    assert all(t.univariate_kwargs == dict(bins=4, bound=3.0) for t in flow.transforms)


def test_autoregressive_nsf_is_a_maf_with_splines_weight_for_weight():
    options = dict(transforms=3, hidden_features=(8,), linear="lu", base="mog", components=3)
    torch.manual_seed(0)
    nsf = NSF(4, 2, bins=4, bound=3.0, marginals=True, randperm=True, **options)
    torch.manual_seed(0)
    maf = MAF(4, 2, marginals=True, randperm=True, **SPLINE, **options)
    assert list(nsf.state_dict()) == list(maf.state_dict())
    assert all(torch.equal(v, maf.state_dict()[k]) for k, v in nsf.state_dict().items())


def test_autoregressive_layers_data_side_first():
    layers, base = autoregressive_layers(3, transforms=2, linear="lu", batch_norm=True, **SPLINE)
    names = [type(t).__name__ for t in layers]
    assert names == ["MaskedAutoregressiveTransform", "BatchNorm", "LULinear"] + names[:2]
    assert type(base).__name__ == "StandardNormal"


def test_nsf_options_keep_maf_options_and_errors():
    own = ["transforms", "hidden_features", "bins", "bound", "coupling"]
    assert flow_options("nsf") == own + [name for name in flow_options("maf") if name not in own]
    with pytest.raises(TypeError, match="NSF sets the order of each layer itself"):
        NSF(3, order=[0, 1, 2])
    with pytest.raises(ValueError, match="at most one of `batch_norm` and `actnorm`"):
        NSF(3, batch_norm=True, actnorm=True)
