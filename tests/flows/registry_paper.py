"""Flow registry entries (see test_flows.flows) for the MAF paper's extras.

The normalisation layers are built in eval mode: the registry evaluates fresh flows on single
points, which batch statistics (and an ActNorm's first-batch initialisation) cannot serve.
Their training modes are tested in tests/transforms/test_normalization.py.
"""

from arflows import IAF, MAF
from arflows.flows.mixture import MADEMoGFlow


def flows(features, context=0):
    small = dict(hidden_features=(16, 16))
    return {
        "maf_mog": lambda: MAF(features, context, transforms=2, base="mog", components=3, **small),
        "made_mog": lambda: MADEMoGFlow(features, context, components=4, **small),
        "maf_batchnorm": lambda: MAF(
            features, context, transforms=2, batch_norm=True, **small
        ).eval(),
        "maf_actnorm": lambda: MAF(features, context, transforms=2, actnorm=True, **small).eval(),
        "maf_lu": lambda: MAF(features, context, transforms=2, linear="lu", **small),
        "iaf_lu": lambda: IAF(features, context, transforms=2, linear="lu", **small),
        # Data-initialisable: a full-covariance mixture base and per-column marginal maps.
        "maf_gmm_marginals": lambda: MAF(
            features, context, transforms=2, base="gmm", components=3, marginals=True, **small
        ),
        "iaf_gaussian_marginals": lambda: IAF(
            features, context, transforms=2, base="gaussian", marginals=True, **small
        ),
    }
