"""Flow registry entries (see test_flows.flows) for the neural flows."""

from arflows.flows.neural import NAF


def flows(features, context=0):
    return {
        "naf": lambda: NAF(
            features, context, transforms=2, hidden_features=(16, 16), components=4
        ),
    }
