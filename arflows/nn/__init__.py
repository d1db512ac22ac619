r"""Conditioner networks: masked autoregressive (MADE) and dense."""

__all__ = [
    "MADE",
    "DenseNN",
    "MaskedLinear",
    "hidden_degrees",
    "input_degrees",
    "made_sweep",
    "mask",
]

from .dense import DenseNN
from .made import MADE, MaskedLinear
from .masks import hidden_degrees, input_degrees, mask
from .sweep import made_sweep
