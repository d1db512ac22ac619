"""Flow registry entries (see test_flows.flows) for the order-agnostic flows.

They are registered in evaluation mode, the mask ensemble: a fixed, normalised density that
every registry test can call repeatedly. Training mode uses one mask set per call, so two
calls differ by design; tests/flows/test_agnostic.py covers it.
"""

import torch

from arflows import IAF
from arflows.flows.agnostic import MaskEnsemble, OrderAgnosticMAF


def flows(features, context=0):
    return {
        "maf_orders": lambda: OrderAgnosticMAF(
            features,
            context,
            transforms=2,
            hidden_features=(16, 16),
            orders=3,
            hidden_degrees="random",
            generator=torch.Generator().manual_seed(2),
        ).eval(),
        "iaf_mask_ensemble": lambda: MaskEnsemble(
            IAF(
                features,
                context,
                transforms=2,
                hidden_features=(16,),
                orders=2,
                skip=True,
                generator=torch.Generator().manual_seed(3),
            )
        ).eval(),
    }
