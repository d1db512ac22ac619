r"""Flows: lazy transforms and distributions, MAF and IAF; building and scoring them by name."""

__all__ = [
    "build",
    "flow_classes",
    "flow_options",
    "log_prob",
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
    "FlowLogProb",
    "LazyDistribution",
    "LazyInverse",
    "LazyTransform",
    "MaskedAutoregressiveTransform",
    "autoregressive_layers",
    "NSF",
    "NormalizingFlow",
    "StandardNormal",
    "GaussianMixture",
    "MarginalSpline",
    "fit_gaussian_mixture",
    "initialize_",
    "select_gaussian_mixture",
    "Unconditional",
    "cdf",
    "mean",
    "quantiles",
]

from .agnostic import MaskEnsemble, MaskMixture, OrderAgnosticMAF, mask_orders, select_masks
from .autoregressive import IAF, MAF, MaskedAutoregressiveTransform, autoregressive_layers
from .bases import StandardNormal
from .coupling import (
    NICE,
    MaskedCouplingTransform,
    RealNVP,
    coupling_layers,
)
from .gmm import GaussianMixture, fit_gaussian_mixture, select_gaussian_mixture
from .initialize import initialize_
from .lazy import (
    Flow,
    FlowLogProb,
    LazyDistribution,
    LazyInverse,
    LazyTransform,
    NormalizingFlow,
    Unconditional,
)
from .linear import LULinear
from .marginal import MarginalSpline
from .mixture import AutoregressiveMoG, MADEMoG, MADEMoGFlow
from .neural import NAF
from .normalization import ActNorm, BatchNorm
from .quantiles import cdf, mean, quantiles
from .registry import build, flow_classes, flow_options
from .scoring import log_prob
from .spline import NSF
from .standardize import Moments
