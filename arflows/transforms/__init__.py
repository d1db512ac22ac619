r"""Transforms: bijections with log-determinants, built on ``torch.distributions``."""

__all__ = [
    "MonotonicSigmoidalTransform",
    "RootResult",
    "monotone_root",
    "SupportTransform",
    "support_bounds",
    "ActNormTransform",
    "BatchNormTransform",
    "LULinearTransform",
    "AutoregressiveReport",
    "AutoregressiveTransform",
    "ComposedTransform",
    "CouplingTransform",
    "InverseTransform",
    "MonotonicAffineTransform",
    "MonotonicRQSTransform",
    "PermutationTransform",
    "Transform",
    "check_autoregressive",
]

from .autoregressive import AutoregressiveTransform
from .base import ComposedTransform, InverseTransform, Transform
from .check import AutoregressiveReport, check_autoregressive
from .coupling import CouplingTransform
from .linear import LULinearTransform
from .normalization import ActNormTransform, BatchNormTransform
from .permutation import PermutationTransform
from .roots import RootResult, monotone_root
from .sigmoidal import MonotonicSigmoidalTransform
from .spline import MonotonicRQSTransform
from .support import SupportTransform, support_bounds
from .univariate import MonotonicAffineTransform
