r"""Flows: lazy transforms and distributions, MAF and IAF."""

__all__ = [
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
