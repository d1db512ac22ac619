"""Flow registry entries (see test_flows.flows) for the coupling flows."""

from arflows.flows.coupling import NICE, RealNVP
from arflows.flows.spline import NSF


def flows(features, context=0):
    return {
        "realnvp": lambda: RealNVP(features, context, transforms=3, hidden_features=(16, 16)),
        "nice": lambda: NICE(features, context, transforms=3, hidden_features=(16,)),
        "nsf_coupling": lambda: NSF(
            features,
            context,
            transforms=2,
            hidden_features=(16, 16),
            bins=5,
            bound=3.0,
            coupling=True,
        ),
    }
