r"""Flows: lazy transforms and distributions, MAF and IAF."""

__all__ = [
    "flow_classes",
    "NAF",
    "MaskEnsemble",
    "MaskMixture",
    "OrderAgnosticMAF",
    "mask_orders",
    "select_masks",
    "ActNorm",
    "AutoregressiveMoG",
    "BatchNorm",
    "LULinear",
    "MADEMoG",
    "MADEMoGFlow",
    "MaskedCouplingTransform",
    "Moments",
    "NICE",
    "RealNVP",
    "coupling_layers",
    "IAF",
    "MAF",
    "Flow",
    "LazyDistribution",
    "LazyInverse",
    "LazyTransform",
    "MaskedAutoregressiveTransform",
    "NSF",
    "NormalizingFlow",
    "StandardNormal",
    "Unconditional",
]

from .agnostic import MaskEnsemble, MaskMixture, OrderAgnosticMAF, mask_orders, select_masks
from .autoregressive import IAF, MAF, MaskedAutoregressiveTransform
from .bases import StandardNormal
from .coupling import (
    NICE,
    MaskedCouplingTransform,
    RealNVP,
    coupling_layers,
)
from .lazy import (
    Flow,
    LazyDistribution,
    LazyInverse,
    LazyTransform,
    NormalizingFlow,
    Unconditional,
)
from .linear import LULinear
from .mixture import AutoregressiveMoG, MADEMoG, MADEMoGFlow
from .neural import NAF
from .normalization import ActNorm, BatchNorm
from .spline import NSF
from .standardize import Moments


def flow_classes() -> dict[str, type[Flow]]:
    """The flow classes of :mod:`arflows.flows` by lower-case name (``"maf"``, ``"nsf"``, ...).

    Looked up in this namespace, so a flow family added here reaches the command line and the
    scikit-learn estimator unchanged.
    """
    return {
        name.lower(): obj
        for name, obj in globals().items()
        if isinstance(obj, type) and issubclass(obj, Flow) and obj is not Flow
    }
