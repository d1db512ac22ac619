"""Flow registry entries (see test_flows.flows) for the coupling flows."""


def flows(features, context=0):
    return {}
