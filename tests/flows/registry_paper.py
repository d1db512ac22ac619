"""Flow registry entries (see test_flows.flows) for the paper flows."""


def flows(features, context=0):
    return {}
