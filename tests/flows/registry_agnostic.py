"""Flow registry entries (see test_flows.flows) for the agnostic flows."""


def flows(features, context=0):
    return {}
