r"""arflows: autoregressive normalizing flows for PyTorch.

Example:
    >>> import arflows
    >>> flow = arflows.MAF(features=2, transforms=2, hidden_features=(16, 16))
    >>> flow().log_prob(torch.zeros(4, 2)).shape
    torch.Size([4])
"""

__all__ = [
    "IAF",
    "MAF",
    "MADEMoGFlow",
    "NAF",
    "NICE",
    "NSF",
    "OrderAgnosticMAF",
    "RealNVP",
    "Flow",
    "History",
    "__version__",
    "check_autoregressive",
    "fit",
    "fit_vi",
    "load",
    "save",
]

from . import targets, vi  # noqa: F401 (arflows.vi, arflows.targets after `import arflows`)
from ._version import __version__
from .flows import IAF, MAF, NAF, NICE, NSF, Flow, MADEMoGFlow, OrderAgnosticMAF, RealNVP
from .io import load, save
from .train import History, fit
from .transforms import check_autoregressive
from .vi import fit_vi
