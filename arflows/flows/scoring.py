r"""The log-density of many rows, scored in chunks: :func:`log_prob`."""

from __future__ import annotations

__all__ = ["CHUNK", "log_prob"]

import itertools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from .lazy import Flow

# Rows per chunk: large enough for full speed, small enough that a MADE's hidden activations
# for one chunk stay in the tens of megabytes.
CHUNK = 8192


def _device_and_dtype(flow: Flow) -> tuple[torch.device, torch.dtype]:
    tensors = itertools.chain(flow.parameters(), flow.buffers())
    first = next((t for t in tensors if t.is_floating_point()), None)
    if first is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return first.device, first.dtype


@torch.no_grad()
def log_prob(
    flow: Flow,
    x: Tensor,
    c: Tensor | None = None,
    *,
    chunk: int = CHUNK,
    score: Callable[[Distribution, Tensor], Tensor] | None = None,
) -> Tensor:
    r"""The log-density :math:`\log p(x_n \mid c_n)` of every row, ``chunk`` rows at a time.

    Without gradients, in the flow's current mode (call ``flow.eval()`` first for layers such
    as batch norm). Each chunk is moved to the flow's device and converted to its dtype; the
    result comes back on ``x``'s device.

    Args:
        flow: The flow.
        x: The rows, with shape :math:`(N, D)`.
        c: Their contexts, with shape :math:`(N, C)`, or ``None``.
        chunk: The rows scored per call of the flow.
        score: ``score(distribution, x_chunk)`` in place of ``distribution.log_prob(x_chunk)``
            (for example :func:`arflows.data.discrete_log_prob` for integer columns).

    Returns:
        The log-densities, with shape :math:`(N,)`, in the flow's dtype.

    Example:
        >>> from arflows.flows import MAF
        >>> log_prob(MAF(2, transforms=1), torch.randn(10, 2), chunk=4).shape
        torch.Size([10])
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"expected an integer `chunk >= 1`, got {chunk!r}")
    device, dtype = _device_and_dtype(flow)
    parts = []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(device, dtype)
        dist = flow(None if c is None else c[i : i + chunk].to(device, dtype))
        parts.append((dist.log_prob(xb) if score is None else score(dist, xb)).to(x.device))
    return torch.cat(parts) if parts else x.new_zeros(x.shape[:-1], dtype=dtype)
