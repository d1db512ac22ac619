r"""Random splits of rows: the one place a validation (or test) split is drawn.

Example:
    >>> valid, train = split_indices(10, (3, 7), torch.Generator().manual_seed(0))
    >>> len(valid), len(train), sorted(valid.tolist() + train.tolist()) == list(range(10))
    (3, 7, True)
"""

from __future__ import annotations

__all__ = ["split_indices"]

from collections.abc import Sequence

import torch
from torch import Tensor


def split_indices(
    n: int, sizes: Sequence[int], generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    r"""The row indices :math:`0 .. n-1` in a random order, cut into consecutive parts.

    The same generator state gives the same parts; the parts are disjoint and cover every
    row.

    Args:
        n: The number of rows.
        sizes: The rows of each part, in order; they add up to ``n``.
        generator: The random generator of the order (torch's global one if ``None``).

    Returns:
        One index tensor per size, views of one random permutation.
    """
    sizes = [int(size) for size in sizes]
    if any(size < 0 for size in sizes) or sum(sizes) != n:
        raise ValueError(f"expected part sizes >= 0 that add up to {n}, got {sizes}")
    return torch.randperm(n, generator=generator).split(sizes)
